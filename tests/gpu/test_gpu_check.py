"""The real-GPU check: its plumbing against the real runsc here, and the GPU run where there is a GPU."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "gpu_check.py"


def real_runsc() -> str:
    if os.geteuid() != 0:
        pytest.skip("needs root: runsc creates sandboxes")
    sys.path.insert(0, str(HERE.parent / "e2e"))
    from stack import Unavailable, build_runsc  # the same pinned runsc the e2e tests use

    try:
        return build_runsc()
    except Unavailable as e:
        pytest.skip(f"no real runsc: {e}")


def run_check(tmp_path: Path, *args: str, timeout: float = 600) -> tuple[subprocess.CompletedProcess[str], dict]:
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    results = tmp_path / "out" / "gpu-results.json"
    return out, json.loads(results.read_text()) if results.exists() else {}


@pytest.mark.e2e
def test_cpu_smoke_checkpoints_and_restores_through_the_real_runsc_with_both_engines(tmp_path: Path) -> None:
    out, results = run_check(tmp_path, "--runsc", real_runsc(), "--cpu-smoke", "--gib", "0.01")
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
    out, results = run_check(tmp_path, "--runsc", real_runsc(), "--gib", "4")
    if "skipped" in results:
        pytest.skip(results["skipped"])
    assert out.returncode == 0, out.stdout[-3000:]
    assert results["errors"] == []
    assert all(c["checksum_ok"] for c in results["checks"].values())
