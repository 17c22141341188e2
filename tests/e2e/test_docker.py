"""Docker 20.10 (dockerd -> containerd runc.v2 shim -> runtime) with runsc-cuda as the runtime."""

from __future__ import annotations

import json
import time

import pytest

from .conftest import DockerContainers
from .stack import FAKE_CUDA_CHECKPOINT, IMAGE, Stack, wait_for

pytestmark = pytest.mark.e2e

CUDA_CHECKPOINT = "/usr/local/bin/cuda-checkpoint"
# Docker 20.10 cannot pass OCI annotations (`docker run --annotation` needs API 1.43): a
# device whose container path starts with /dev/nvidia is what marks a GPU container here.
FAKE_GPU = ("--device", "/dev/null:/dev/nvidia0")


def runsc_ids(stack: Stack) -> list[str]:
    return stack.runsc(stack.docker_runtime_root, "list", "--quiet").stdout.split()


def sandbox_pids(stack: Stack, container_id: str) -> set[int]:
    return set(json.loads(stack.runsc(stack.docker_runtime_root, "ps", "--format", "json", container_id).stdout))


def detail_records(stack: Stack, container_id: str) -> list[dict[str, object]]:
    return [r for r in stack.runsc_cuda_records() if r.get("container") == container_id]


@pytest.mark.parametrize("runtime", ["runsc", "runsc-cuda"])
def test_plain_container_runs_under_gvisor_prints_and_exits_with_its_status(
    docker: DockerContainers, runtime: str
) -> None:
    _, result = docker.run(IMAGE, "sh", "-c", "echo hello; dmesg | head -n 1; exit 7", runtime=runtime, check=False)
    assert result.returncode == 7, result.describe()
    lines = result.stdout.splitlines()
    assert lines[0] == "hello"
    assert "Starting gVisor" in lines[1]


def test_exec_runs_a_command_in_the_running_container_and_returns_its_status(docker: DockerContainers) -> None:
    name = docker.start_counter()
    result = docker.stack.docker("exec", name, "sh", "-c", "cat /tmp/count; exit 5", check=False)
    assert result.returncode == 5, result.describe()
    assert result.stdout.strip().isdigit()


def test_top_succeeds_and_lists_the_sandbox_pids(docker: DockerContainers, stack: Stack) -> None:
    """Docker asks the runtime for PIDs (`ps --format json`) and shows the host's `ps -ef` rows
    with those numbers. runsc answers with sandbox PIDs, so the rows are the host's processes
    that happen to have the same numbers (plain runsc does the same): only the PIDs are checked."""
    name, _ = docker.run("--detach", IMAGE, "sh", "-c", "sleep 1000 & sleep 1001 & wait")  # PIDs that stay
    cid = docker.container_id(name)
    wait_for("both sleeps", lambda: len(sandbox_pids(stack, cid)) == 3, 15)
    header, *rows = stack.docker("top", name).stdout.splitlines()
    pid_column = header.split().index("PID")
    shown = {int(row.split()[pid_column]) for row in rows}
    assert shown == sandbox_pids(stack, cid)


def test_pause_freezes_the_container_and_unpause_resumes_it(docker: DockerContainers, stack: Stack) -> None:
    name = docker.start_counter()
    cid = docker.container_id(name)
    stack.docker("pause", name)
    assert docker.inspect(name)["State"]["Status"] == "paused"
    assert json.loads(stack.runsc(stack.docker_runtime_root, "state", cid).stdout)["status"] == "paused"
    frozen = len(docker.logged_lines(name))
    time.sleep(1.0)  # five counts if it were running
    assert len(docker.logged_lines(name)) == frozen
    stack.docker("unpause", name)
    assert docker.inspect(name)["State"]["Status"] == "running"
    wait_for("counting to go on", lambda: len(docker.logged_lines(name)) > frozen + 2, 15)


def test_stop_sends_sigterm_and_the_container_exits_with_its_trap_status(
    docker: DockerContainers, stack: Stack
) -> None:
    name = docker.start_counter()
    started = time.monotonic()
    stack.docker("stop", "--time", "30", name, timeout=90)
    assert time.monotonic() - started < 20, "SIGTERM was not delivered: docker stop waited for its SIGKILL"
    state = docker.inspect(name)["State"]
    assert (state["Status"], state["ExitCode"]) == ("exited", 42)


def test_rm_removes_the_container_from_docker_and_from_runsc(docker: DockerContainers, stack: Stack) -> None:
    name = docker.start_counter()
    cid = docker.container_id(name)
    assert cid in runsc_ids(stack)
    stack.docker("stop", "--time", "30", name, timeout=90)
    stack.docker("rm", name)
    assert stack.docker("inspect", name, check=False).returncode != 0
    assert cid not in runsc_ids(stack)
    assert not stack.docker_bundle(cid).exists()


def test_plain_container_bundle_is_not_rewritten_by_runsc_cuda(docker: DockerContainers, stack: Stack) -> None:
    """The bundle's config.json is what containerd wrote (its stored spec), runsc-cuda said why it
    left it alone, and no temporary file of an atomic write is there."""
    name = docker.start_counter()
    cid = docker.container_id(name)
    bundle = stack.docker_bundle(cid)
    on_disk = json.loads((bundle / "config.json").read_bytes())
    stored = json.loads(stack.ctr("containers", "info", cid, namespace="moby").stdout)["Spec"]
    assert on_disk == stored
    assert all(m["destination"] != CUDA_CHECKPOINT for m in on_disk["mounts"])
    assert not list(bundle.glob(".config.json.*"))
    said = [(r.get("verb"), r.get("msg")) for r in detail_records(stack, cid)]
    assert ("create", "not a GPU container") in said
    assert not [msg for _, msg in said if "mounted" in str(msg)]


def test_gpu_container_sees_the_host_cuda_checkpoint_at_usr_local_bin(docker: DockerContainers, stack: Stack) -> None:
    name = docker.start_counter("runsc-cuda", *FAKE_GPU)
    assert stack.docker("exec", name, "cat", CUDA_CHECKPOINT).stdout == FAKE_CUDA_CHECKPOINT
    ran = stack.docker("exec", name, CUDA_CHECKPOINT, "--get-state", "--pid", "1")
    assert ran.stdout.strip() == "fake-cuda-checkpoint --get-state --pid 1"


def test_gpu_container_cannot_write_the_mounted_cuda_checkpoint(docker: DockerContainers, stack: Stack) -> None:
    name = docker.start_counter("runsc-cuda", *FAKE_GPU)
    write = stack.docker("exec", name, "sh", "-c", f"echo x > {CUDA_CHECKPOINT}", check=False)
    assert write.returncode != 0
    assert "Read-only file system" in write.stderr
    mounts = [line.split() for line in stack.docker("exec", name, "cat", "/proc/mounts").stdout.splitlines()]
    options = [fields[3].split(",") for fields in mounts if fields[1] == CUDA_CHECKPOINT]
    assert options and "ro" in options[-1]
    assert stack.fake_cuda_checkpoint.read_text() == FAKE_CUDA_CHECKPOINT


def test_gpu_container_bundle_gets_the_read_only_bind_mount(docker: DockerContainers, stack: Stack) -> None:
    name = docker.start_counter("runsc-cuda", *FAKE_GPU)
    cid = docker.container_id(name)
    doc = json.loads((stack.docker_bundle(cid) / "config.json").read_bytes())
    mounts = [m for m in doc["mounts"] if m["destination"] == CUDA_CHECKPOINT]
    assert mounts == [
        {
            "destination": CUDA_CHECKPOINT,
            "type": "bind",
            "source": str(stack.fake_cuda_checkpoint),
            "options": ["rbind", "ro", "nosuid", "nodev"],
        }
    ]
    said = [str(r.get("msg")) for r in detail_records(stack, cid)]
    assert any("linux.devices has /dev/nvidia0" in msg and "mounted" in msg for msg in said), said


@pytest.mark.parametrize("runtime", ["runsc", "runsc-cuda"])
def test_checkpoint_then_start_from_it_resumes_the_count(docker: DockerContainers, stack: Stack, runtime: str) -> None:
    """`docker checkpoint create C cp` stops C; `docker start --checkpoint cp C` restores the
    sandbox, whose counter goes on from where it was (a fresh start would count from 1)."""
    name = docker.start_counter(runtime)
    wait_for("the count to reach 15", lambda: docker.count(name) >= 15, 30)
    stack.docker("checkpoint", "create", name, "cp", timeout=120)
    wait_for("the checkpointed container to stop", lambda: docker.inspect(name)["State"]["Status"] == "exited", 30)
    saved = int(docker.logged_lines(name)[-1])
    assert saved >= 15
    docker.start_from_checkpoint(name, "cp")
    assert docker.count(name) >= saved
    wait_for("counting to go on", lambda: docker.count(name) > saved + 2, 15)


@pytest.mark.parametrize("runtime", ["runsc", "runsc-cuda"])
def test_checkpoint_leave_running_keeps_the_container_counting(
    docker: DockerContainers, stack: Stack, runtime: str
) -> None:
    name = docker.start_counter(runtime)
    stack.docker("checkpoint", "create", "--leave-running", name, "cp", timeout=120)
    assert docker.inspect(name)["State"]["Status"] == "running"
    before = docker.count(name)
    wait_for("counting to go on", lambda: docker.count(name) > before + 2, 15)
    assert [line.strip() for line in stack.docker("checkpoint", "ls", name).stdout.splitlines()[1:]] == ["cp"]


def test_gpu_container_restored_from_a_checkpoint_still_has_cuda_checkpoint_mounted(
    docker: DockerContainers, stack: Stack
) -> None:
    """Docker writes a fresh bundle for `start --checkpoint` (no `create`): runsc-cuda must add
    the same mount on `restore`, or runsc refuses the restore (it compares the mounts)."""
    name = docker.start_counter("runsc-cuda", *FAKE_GPU)
    stack.docker("checkpoint", "create", name, "cp", timeout=120)
    wait_for("the checkpointed container to stop", lambda: docker.inspect(name)["State"]["Status"] == "exited", 30)
    saved = int(docker.logged_lines(name)[-1])
    docker.start_from_checkpoint(name, "cp")
    assert docker.count(name) >= saved
    assert stack.docker("exec", name, "cat", CUDA_CHECKPOINT).stdout == FAKE_CUDA_CHECKPOINT
    said = [(r.get("verb"), str(r.get("msg"))) for r in detail_records(stack, docker.container_id(name))]
    assert [verb for verb, msg in said if "mounted" in msg and "read-only" in msg] == ["create", "restore"]
