"""The real-GPU check: its plumbing against the real runsc here, and the GPU run where there is a GPU."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import sandboxes  # scripts/sandboxes.py (pytest's pythonpath)

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "gpu_check.py"


def gpu_check() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def real_runsc() -> str:
    if os.geteuid() != 0:
        pytest.skip("needs root: runsc creates sandboxes")
    from e2e.stack import Unavailable, build_runsc  # the same pinned runsc the e2e tests use

    try:
        return build_runsc()
    except Unavailable as e:
        pytest.skip(f"no real runsc: {e}")


def check_argv(tmp_path: Path, *args: str) -> list[str]:
    return [sys.executable, str(SCRIPT), "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out"), *args]


def left_behind(tmp_path: Path) -> list[str]:
    """Processes that name the check's folder (its sandboxes, their gofers) and mounts under it."""
    work = tmp_path / "work"
    procs = [p.describe() for p in sandboxes.processes_naming([work])]
    return procs + [f"mounted: {m}" for m in sandboxes.mounts_under(work)]


def run_check(
    tmp_path: Path, runsc: str, *args: str, timeout: float = 600
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """Run the check, and insist that it removed its sandboxes and changed no system folder itself;
    whatever happens, nothing it started outlives the test (the script may have been killed)."""
    before = sandboxes.snapshot()
    try:
        out = subprocess.run(
            check_argv(tmp_path, "--runsc", runsc, *args), capture_output=True, text=True, timeout=timeout, check=False
        )
        assert left_behind(tmp_path) == [], "the check left its sandboxes running"
        assert sandboxes.appeared(before) == [], "files appeared in the host's system folders"
    finally:
        sandboxes.remove_sandboxes(runsc, tmp_path / "work" / "runsc-root", [tmp_path / "work"])
    results = tmp_path / "out" / "gpu-results.json"
    return out, json.loads(results.read_text()) if results.exists() else {}


@pytest.mark.e2e
def test_cpu_smoke_checkpoints_and_restores_through_the_real_runsc_with_both_engines(tmp_path: Path) -> None:
    out, results = run_check(tmp_path, real_runsc(), "--cpu-smoke", "--gib", "0.01")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert results["errors"] == []
    checks = results["checks"]
    assert set(checks) == {
        "exec: keeps running after checkpoint --leave-running",
        "native: keeps running after checkpoint --leave-running",
        "exec: resumes after restore",
        "native: resumes after restore",
    }
    assert all(c["counter_after"] > c["counter_before"] and c["checksum_ok"] for c in checks.values())


def test_on_a_real_gpu_the_tensor_survives_checkpoint_and_restore(tmp_path: Path) -> None:
    if not shutil.which("nvidia-smi") and not os.path.exists("/proc/driver/nvidia/version"):
        pytest.skip("no NVIDIA GPU on this machine (no nvidia-smi, no /proc/driver/nvidia)")
    out, results = run_check(tmp_path, real_runsc(), "--gib", "4")
    if "skipped" in results:
        pytest.skip(results["skipped"])
    assert out.returncode == 0, out.stdout[-3000:]
    assert results["errors"] == []
    assert all(c["checksum_ok"] for c in results["checks"].values())


def check_for(tmp_path: Path) -> Any:
    args = argparse.Namespace(
        work=str(tmp_path / "work"), out=str(tmp_path / "out"), gib=0.01, cpu_smoke=True, tuning=False, runsc="runsc"
    )
    return gpu_check().Check(args)


def test_no_mount_point_lies_in_a_host_folder_the_container_sees(shim: Any, tmp_path: Path) -> None:
    """runsc creates mount points before it makes mounts read-only: one inside a bound host folder is
    created in the host's folder (an empty executable /usr/local/bin/cuda-checkpoint, issue 14)."""
    check = check_for(tmp_path)
    bundle = check.bundle("c1")
    assert "/usr" not in check.binds and "/usr/local/bin" not in check.binds
    mine = Path(check.work) / "rootfs" / "usr" / "local" / "bin"
    assert mine.is_dir() and not mine.is_symlink()
    if os.path.isdir("/usr/lib") and not os.path.islink("/usr/lib"):
        assert "/usr/lib" in check.binds  # the rest of /usr is still the host's, read-only
    # runsc-cuda adds its cuda-checkpoint mount (over the fake runsc here): it must land in a folder of ours.
    created = shim.run("create", "--bundle", str(bundle), "c1")
    assert created.returncode == 0, created.stderr
    try:
        mounts = json.loads((bundle / "config.json").read_text())["mounts"]
        destinations = {m["destination"] for m in mounts}
        assert set(gpu_check().RUNSC_CUDA_MOUNT_POINTS) <= destinations, "runsc-cuda mounts cuda-checkpoint elsewhere"
        assert check.host_folders_with_mount_points(bundle) == []
        for mount in mounts:
            if mount.get("type") == "bind" and mount["source"] == mount["destination"]:
                assert mount["options"] == ["rbind", "ro"], mount
    finally:
        shim.run("delete", "--force", "c1")


def wait_counting(tmp_path: Path, proc: subprocess.Popen[Any], timeout: float = 120) -> None:
    status = tmp_path / "work" / "app" / "status.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the check ended before its app counted: {proc.communicate()}")
        try:
            if json.loads(status.read_text()).get("counter", 0) > 0:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    raise AssertionError("the app did not count in time")


@pytest.mark.e2e
def test_an_interrupted_check_removes_its_sandbox_and_a_killed_ones_is_removed_by_the_next(tmp_path: Path) -> None:
    runsc = real_runsc()
    argv = check_argv(tmp_path, "--runsc", runsc, "--cpu-smoke", "--gib", "0.01", "--engines", "exec")
    before = sandboxes.snapshot()
    try:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            shutil.rmtree(tmp_path / "work", ignore_errors=True)  # wait_counting reads the new run's status
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            wait_counting(tmp_path, proc)
            proc.send_signal(signum)
            output = proc.communicate(timeout=120)[0]
            assert "cleanup: runsc delete --force gpu-a" in output, (proc.returncode, output[-3000:])
            assert proc.returncode != 0
            assert left_behind(tmp_path) == [], f"after {signum.name}"
        # SIGKILL leaves the sandbox running; the next run (on the same --work) removes it first.
        shutil.rmtree(tmp_path / "work", ignore_errors=True)
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_counting(tmp_path, proc)
        proc.kill()
        proc.wait()
        assert any("runsc-sandbox" in p for p in left_behind(tmp_path))
        out = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        assert "left by an earlier run: runsc delete --force gpu-a" in out.stdout
        assert left_behind(tmp_path) == []
        assert sandboxes.appeared(before) == []
    finally:
        sandboxes.remove_sandboxes(runsc, tmp_path / "work" / "runsc-root", [tmp_path / "work"])
