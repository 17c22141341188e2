"""Kubernetes without the kubelet: crictl -> containerd 2.x CRI -> runc.v2 shim -> runsc-cuda -> runsc.

One private node (tests/e2e/cri_stack.py) for the module; every test's pods are removed
at its end. The pods use handler runsc-cuda, host networking, the offline images; the
app container is GPU-flagged (annotation dev.runsc-cuda.gpu) and counts, the fake
cuda-checkpoint calls it a CUDA process.
"""

from __future__ import annotations

import json
import tarfile
import time

import pytest

from .cri_stack import (
    CUDA_CHECKPOINT,
    FAKE_CUDA_CHECKPOINT,
    STOP_NOTES,
    CriStack,
    Pod,
    gpu_pod,
)
from .stack import wait_for

pytestmark = pytest.mark.e2e


def teardown_module() -> None:
    for note in STOP_NOTES:
        print(f"CRI stack teardown: {note}")


def has_cuda_mount(cri: CriStack, cid: str) -> bool:
    doc = json.loads((cri.bundle(cid) / "config.json").read_text())
    return any(m.get("destination") == CUDA_CHECKPOINT for m in doc.get("mounts", []))


def test_pod_runs_in_one_sandbox_only_the_gpu_container_patched_logs_exec_stop_remove(
    cri: CriStack, pods: list[Pod]
) -> None:
    pod, app, sidecar = gpu_pod(cri, pods, "one-sandbox")
    pause = pod.id

    # One gVisor sandbox: runsc knows the three containers, in the same sandbox process.
    listed = set(cri.runsc("list", "--quiet").stdout.split())
    assert {pause, app, sidecar} <= listed
    sandbox_pids = {json.loads(cri.runsc("state", cid).stdout)["pid"] for cid in (pause, app, sidecar)}
    assert len(sandbox_pids) == 1
    assert "Starting gVisor" in cri.exec(sidecar, "dmesg", check=True).stdout

    # Only the GPU container's bundle is patched; runsc-cuda said why not for the others.
    assert has_cuda_mount(cri, app)
    assert not has_cuda_mount(cri, pause)
    assert not has_cuda_mount(cri, sidecar)
    said = {(r.get("container"), r.get("msg")) for r in cri.runsc_cuda_records()}
    assert (pause, "not a GPU container") in said
    assert (sidecar, "not a GPU container") in said
    assert cri.exec(app, "cat", CUDA_CHECKPOINT, check=True).stdout == FAKE_CUDA_CHECKPOINT
    assert cri.exec(sidecar, "test", "-e", CUDA_CHECKPOINT).returncode != 0

    # Logs: what the containers wrote to their stdout reaches crictl logs.
    wait_for("the app's count in its log", lambda: "count 3" in cri.logs(app), 15)
    assert "sidecar up" in cri.logs(sidecar)

    # Exec: output and exit status.
    ran = cri.exec(app, "sh", "-c", "cat /tmp/count; exit 3")
    assert ran.returncode != 0
    assert "exit code 3" in ran.stderr
    assert ran.stdout.strip().isdigit()

    # Stop: SIGTERM reaches the sidecar's trap, its exit status reaches CRI; the app is stopped too.
    started = time.monotonic()
    cri.crictl("stop", "--timeout", "10", sidecar)
    assert time.monotonic() - started < 10
    assert cri.inspect(sidecar)["status"]["exitCode"] == 0
    assert "sidecar bye" in cri.logs(sidecar)
    cri.crictl("stop", "--timeout", "5", app)
    assert cri.container_state(app) == "CONTAINER_EXITED"
    assert cri.container_state(sidecar) == "CONTAINER_EXITED"
    assert set(cri.runsc("list", "--quiet").stdout.split()) >= {pause}

    # Remove: containers, then the pod; nothing is left in runsc, no holder either.
    cri.crictl("rm", app, sidecar)
    started = time.monotonic()
    cri.remove_pod(pod)
    assert time.monotonic() - started < 30
    assert not set(cri.runsc("list", "--quiet").stdout.split()) & {pause, app, sidecar}
    assert pod.id not in cri.crictl("pods", "--quiet").stdout.split()
    assert not list(cri.state_dir.glob("stdio/*.sock"))


def test_crictl_checkpoint_exports_runsc_image_and_the_pod_keeps_running_thawed(cri: CriStack, pods: list[Pod]) -> None:
    _pod, app, sidecar = gpu_pod(cri, pods, "checkpoint")
    wait_for("the app to count to 10", lambda: cri.count(app) >= 10, 30)
    archive = cri.root / "checkpoint-app.tar"
    started = time.monotonic()
    cri.crictl("checkpoint", f"--export={archive}", app, timeout=300)
    seconds = time.monotonic() - started
    print(f"crictl checkpoint --export: {seconds:.2f} s")

    # The pod keeps running: the app counts on, the sidecar is still there.
    assert cri.container_state(app) == "CONTAINER_RUNNING"
    assert cri.container_state(sidecar) == "CONTAINER_RUNNING"
    after = cri.count(app)
    wait_for("the count to go on", lambda: cri.count(app) > after + 2, 15)

    # Its CUDA process was frozen for the save and thawed again (the exec engine's calls).
    calls = cri.exec(app, "cat", "/tmp/.fake-cuda/calls", check=True).stdout.splitlines()
    checkpointed = [line.split()[-1] for line in calls if line.startswith("--action checkpoint --pid")]
    assert checkpointed, calls
    pid = checkpointed[0]
    order = [line for line in calls if line.startswith("--action") and f"--pid {pid}" in line]
    assert [line.split()[1] for line in order] == ["lock", "checkpoint", "restore", "unlock"]
    assert cri.exec(app, "cat", f"/tmp/.fake-cuda/{pid}", check=True).stdout.strip() == "running"

    # The archive holds runsc's image and runsc-cuda's sidecar, next to containerd's own files.
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
        sidecar_file = tar.extractfile("checkpoint/runsc-cuda.json")
        assert sidecar_file is not None
        recorded = json.loads(sidecar_file.read())
    assert {"checkpoint/checkpoint.img", "checkpoint/runsc-cuda.json", "config.dump", "spec.dump"} <= names
    assert app in json.dumps(recorded)
