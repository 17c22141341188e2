"""The kubelet itself: static GPU pods, checkpoint through its API, restore by annotation.

kubelet (standalone, static pods) -> containerd 2.x CRI -> runc.v2 shim ->
runsc-cuda -> runsc, on a private node (tests/e2e/kubelet_node.py).  The pod is
pause + ``app`` (it counts: a CUDA process for the fake cuda-checkpoint) +
``sidecar``, flagged as a GPU pod by the annotation ``dev.runsc-cuda.gpu``
(a pod annotation reaches every container of the pod; the NVIDIA device
plugin's per-container CDI devices need a device plugin, which this node has
not).  runsc-cuda runs the exec engine here
(the fake cuda-checkpoint, no nvproxy), which needs the pod's containers to share
the pod's process namespace (``shareProcessNamespace: true``); a pod without it
is refused, and the kubelet's API says why.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .cri_stack import APP_IMAGE, COUNTER, CUDA_CHECKPOINT, GPU_ANNOTATION, SIDECAR
from .kubelet_node import POD_RESTORE_WAIT_S, KubeletNode, kubelet_node
from .stack import started_or_skip, wait_for

pytestmark = pytest.mark.e2e

RESTORE_FROM = "dev.runsc-cuda.restore-from"


@pytest.fixture(scope="module")
def node() -> Iterator[KubeletNode]:
    with started_or_skip("kubelet node", "rkl-", kubelet_node) as started:
        yield started


def gpu_pod(
    name: str,
    annotations: dict[str, str] | None = None,
    share: bool = True,
    names: tuple[str, ...] = ("app", "sidecar"),
) -> dict[str, Any]:
    def container(name: str, command: list[str]) -> dict[str, Any]:
        return {"name": name, "image": APP_IMAGE, "imagePullPolicy": "Never", "command": command}

    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "default",
            "annotations": {GPU_ANNOTATION: "true", **(annotations or {})},
        },
        "spec": {
            "hostNetwork": True,
            "shareProcessNamespace": share,
            "terminationGracePeriodSeconds": 5,
            "containers": [container(n, ["sh", "-c", COUNTER] if n == "app" else list(SIDECAR)) for n in names],
        },
    }


def count(node: KubeletNode, cid: str) -> int:
    return node.cri.count(cid)


@pytest.fixture(scope="module")
def checkpointed(node: KubeletNode) -> tuple[Path, int]:
    """A counting static pod, checkpointed through the kubelet's API: (archive, count before)."""
    node.add_pod(gpu_pod("counter"))
    app = node.running_container("counter", "app")
    wait_for("the app to count to 5", lambda: count(node, app) >= 5, 30)
    before = count(node, app)
    status, body = node.checkpoint("counter", "app")
    assert status == 200, (status, body)
    (archive,) = json.loads(body)["items"]
    return Path(archive), before


def test_a_static_gpu_pod_checkpoints_through_the_kubelet_api_and_keeps_counting_thawed(
    node: KubeletNode, checkpointed: tuple[Path, int]
) -> None:
    archive, before = checkpointed
    app = node.running_container("counter", "app")

    # A GPU container: the host's cuda-checkpoint is mounted into it.
    doc = json.loads((node.cri.bundle(app) / "config.json").read_text())
    assert any(m.get("destination") == CUDA_CHECKPOINT for m in doc.get("mounts", []))

    # The archive is the kubelet's, under its root, and holds runsc's image and runsc-cuda's sidecar.
    assert archive.parent == node.checkpoints and archive.name.startswith("checkpoint-counter-")
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    assert {"checkpoint/checkpoint.img", "checkpoint/runsc-cuda.json", "spec.dump"} <= names

    # The pod keeps running, its CUDA process frozen for the save and thawed again.
    assert count(node, app) >= before
    after = count(node, app)
    wait_for("the count to go on", lambda: count(node, app) > after + 2, 15)
    calls = node.cri.exec(app, "cat", "/tmp/.fake-cuda/calls", check=True).stdout.splitlines()
    frozen = [line.split()[-1] for line in calls if line.startswith("--action checkpoint --pid")]
    assert frozen, calls
    assert node.cri.exec(app, "cat", f"/tmp/.fake-cuda/{frozen[0]}", check=True).stdout.strip() == "running"


def test_a_static_pod_annotated_restore_from_the_kubelets_archive_comes_back_counting_on(
    node: KubeletNode, checkpointed: tuple[Path, int]
) -> None:
    archive, before = checkpointed
    node.add_pod(gpu_pod("counter-restored", {RESTORE_FROM: str(archive)}))
    app = node.running_container("counter-restored", "app")
    node.running_container("counter-restored", "sidecar")

    # It came from the checkpoint: the count goes on from the saved value, not from 1 (the first count
    # read once exec reaches the restored pod).
    wait_for("exec to reach the restored app", lambda: count(node, app) > 0, 30, 0.2)
    restored = count(node, app)
    assert restored >= before, (restored, before)
    wait_for("the restored app to count on", lambda: count(node, app) > restored + 2, 15)
    records = [r.get("msg", "") for r in node.cri.runsc_cuda_records()]
    assert any(m.startswith("pod ") and "restored: app, sidecar" in m for m in records), records[-20:]

    # The kubelet sees an ordinary pod: it removes it when its manifest goes, and runsc keeps nothing of it.
    pod_id = node.pod_ids("counter-restored")[0]
    node.remove_pod("counter-restored")
    assert not {pod_id, app} & set(node.cri.runsc("list", "--quiet").stdout.split())


def test_the_kubelet_api_says_why_the_exec_engine_refuses_a_pod_without_a_shared_process_namespace(
    node: KubeletNode,
) -> None:
    node.add_pod(gpu_pod("own-pids", share=False))
    app = node.running_container("own-pids", "app")
    wait_for("the app to count", lambda: count(node, app) >= 3, 30)
    status, body = node.checkpoint("own-pids", "app")
    assert status >= 500, (status, body)
    assert "PID namespace of its own" in body and "nothing was frozen" in body, body
    before = count(node, app)
    wait_for("the app to count on", lambda: count(node, app) > before + 2, 15)
    node.remove_pod("own-pids")


def test_a_static_pod_lacking_a_checkpointed_container_is_ended_and_its_next_sandbox_refused(
    node: KubeletNode, checkpointed: tuple[Path, int]
) -> None:
    archive, _before = checkpointed
    node.add_pod(gpu_pod("lacking", {RESTORE_FROM: str(archive)}, names=("app",)))
    ended = f"the pod did not create sidecar within {POD_RESTORE_WAIT_S}s"
    wait_for("the restoring sandbox to be ended", lambda: any(ended in m for m in messages(node)), 90, 0.5)

    # The kubelet makes a new sandbox for the pod: refused at once, and the kubelet says why.
    again = "the pod lacks sidecar of the checkpoint"
    wait_for("the kubelet to report the refusal", lambda: again in node.log.read_text(errors="replace"), 90, 0.5)
    assert not node.pod_ids("lacking", ready=True)
    node.remove_pod("lacking")
    assert not [p for p in (node.cri.state_dir / "pod-restore").glob("*.json")]


def messages(node: KubeletNode) -> list[str]:
    return [str(r.get("msg", "")) for r in node.cri.runsc_cuda_records()]
