"""containerd 1.6 alone (ctr -> runc.v2 shim with runsc-cuda as its runc binary)."""

from __future__ import annotations

import json
import re
import time

import pytest

from .conftest import CtrContainers
from .stack import FAKE_CUDA_CHECKPOINT, Stack, wait_for

pytestmark = pytest.mark.e2e

CUDA_CHECKPOINT = "/usr/local/bin/cuda-checkpoint"


def runsc_state(stack: Stack, name: str) -> dict[str, object]:
    return dict(json.loads(stack.runsc(stack.ctr_runc_root / "runsc-cuda-e2e", "state", name).stdout))


def test_ctr_run_prints_and_exits_with_the_container_status(ctr: CtrContainers) -> None:
    _, result = ctr.run("--rm", "--", "sh", "-c", "echo hello; dmesg | head -n 1; exit 3", check=False)
    assert result.returncode == 3, result.describe()
    lines = result.stdout.splitlines()
    assert lines[0] == "hello"
    assert "Starting gVisor" in lines[1]


def test_ctr_exec_runs_a_command_in_the_running_task_and_returns_its_status(ctr: CtrContainers) -> None:
    name = ctr.start_counter()
    result = ctr.exec(name, "sh", "-c", "cat /tmp/count; exit 4")
    assert result.returncode == 4, result.describe()
    assert result.stdout.strip().isdigit()


def test_ctr_ps_lists_the_sandbox_pids(ctr: CtrContainers, stack: Stack) -> None:
    name, _ = ctr.run("--detach", "--", "sh", "-c", "sleep 1000 & sleep 1001 & wait")
    root = stack.ctr_runc_root / "runsc-cuda-e2e"

    def sandbox() -> set[int]:
        return set(json.loads(stack.runsc(root, "ps", "--format", "json", name).stdout))

    wait_for("the shell and both sleeps", lambda: len(sandbox()) == 3, 15)
    rows = stack.ctr("tasks", "ps", name).stdout.splitlines()[1:]
    assert {int(row.split()[0]) for row in rows} == sandbox()


def test_ctr_pause_freezes_the_task_and_resume_continues_it(ctr: CtrContainers, stack: Stack) -> None:
    name = ctr.start_counter()
    stack.ctr("tasks", "pause", name)
    assert ctr.status(name) == "PAUSED"
    assert runsc_state(stack, name)["status"] == "paused"
    stack.ctr("tasks", "resume", name)
    assert ctr.status(name) == "RUNNING"
    before = ctr.count(name)
    wait_for("counting to go on", lambda: ctr.count(name) > before + 2, 15)


def test_ctr_kill_sigterm_ends_the_task_with_its_trap_status(ctr: CtrContainers, stack: Stack) -> None:
    name = ctr.start_counter()
    started = time.monotonic()
    stack.ctr("tasks", "kill", "--signal", "SIGTERM", name)
    ctr.wait_stopped(name)
    assert time.monotonic() - started < 15
    deleted = stack.ctr("tasks", "delete", name)
    assert re.search(r"exit code 42\b", deleted.stdout + deleted.stderr), deleted.describe()


def test_ctr_delete_removes_the_task_and_the_runsc_container(ctr: CtrContainers, stack: Stack) -> None:
    name = ctr.start_counter()
    root = stack.ctr_runc_root / "runsc-cuda-e2e"
    assert name in stack.runsc(root, "list", "--quiet").stdout.split()
    stack.ctr("tasks", "kill", "--signal", "SIGKILL", name)
    ctr.wait_stopped(name)
    stack.ctr("tasks", "delete", name)
    stack.ctr("containers", "delete", name)
    assert name not in stack.runsc(root, "list", "--quiet").stdout.split()
    assert not stack.ctr_bundle(name).exists()


def test_ctr_plain_container_bundle_is_not_rewritten_by_runsc_cuda(ctr: CtrContainers, stack: Stack) -> None:
    name = ctr.start_counter()
    bundle = stack.ctr_bundle(name)
    on_disk = json.loads((bundle / "config.json").read_bytes())
    assert on_disk == json.loads(stack.ctr("containers", "info", name).stdout)["Spec"]
    assert all(m["destination"] != CUDA_CHECKPOINT for m in on_disk["mounts"])
    assert not list(bundle.glob(".config.json.*"))
    said = [(r.get("verb"), r.get("msg")) for r in stack.runsc_cuda_records() if r.get("container") == name]
    assert ("create", "not a GPU container") in said


def test_ctr_gpu_annotation_mounts_the_host_cuda_checkpoint_read_only(ctr: CtrContainers, stack: Stack) -> None:
    name = ctr.start_counter("--annotation", "dev.runsc-cuda.gpu=true")
    assert ctr.exec(name, "cat", CUDA_CHECKPOINT, check=True).stdout == FAKE_CUDA_CHECKPOINT
    write = ctr.exec(name, "sh", "-c", f"echo x > {CUDA_CHECKPOINT}")
    assert write.returncode != 0
    assert "Read-only file system" in write.stdout + write.stderr
    assert stack.fake_cuda_checkpoint.read_text() == FAKE_CUDA_CHECKPOINT


def test_ctr_container_checkpoint_and_restore_resumes_the_count(ctr: CtrContainers, stack: Stack) -> None:
    """`ctr containers checkpoint --task` passes runc's --file-locks, which runsc refuses and
    runsc-cuda drops; `ctr containers restore --live` brings the task back running."""
    name = ctr.start_counter()
    wait_for("the count to reach 15", lambda: ctr.count(name) >= 15, 30)
    ref = f"{name}-checkpoint"
    try:
        stack.ctr("containers", "checkpoint", "--task", name, ref, timeout=120)
        saved = ctr.count(name)  # --task leaves it running; what it saved is at most this
        stack.ctr("tasks", "kill", "--signal", "SIGKILL", name)
        ctr.wait_stopped(name)
        stack.ctr("tasks", "delete", name)
        stack.ctr("containers", "delete", name)
        stack.ctr("containers", "restore", "--live", name, ref, timeout=120)
        assert ctr.status(name) == "RUNNING"
        assert ctr.count(name) >= saved - 5  # from the image, not from 1
        wait_for("counting to go on", lambda: ctr.count(name) > saved + 2, 15)
    finally:
        stack.ctr("images", "remove", ref, check=False)
