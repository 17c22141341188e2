"""Kubernetes restore: a pod created with ``dev.runsc-cuda.restore-from`` comes back from a CRI checkpoint.

crictl -> containerd 2.x CRI -> runc.v2 shim -> runsc-cuda -> runsc, on a private
node (tests/e2e/cri_stack.py) whose restore root is ``<root>/checkpoints``; the
migration test starts a second node. The pod is the one of test_kubernetes.py:
pause + a GPU-flagged app that counts (a CUDA process for the fake
cuda-checkpoint) + a plain sidecar.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .cri_stack import APP_IMAGE, COUNTER, GPU_ANNOTATION, SIDECAR, CriStack, Pod, gpu_pod, running
from .stack import started_or_skip, wait_for

pytestmark = pytest.mark.e2e


RESTORE_FROM = "dev.runsc-cuda.restore-from"


def checkpointed(cri: CriStack, pods: list[Pod], name: str) -> tuple[Path, int, Pod, str]:
    """A counting pod, checkpointed to <checkpoints>/<name>.tar: (archive, count before, pod, app)."""
    pod, app, _sidecar = gpu_pod(cri, pods, name)
    wait_for("the app to count to 5", lambda: cri.count(app) >= 5, 30)
    before = cri.count(app)
    archive = cri.checkpoints / f"{name}.tar"
    cri.crictl("checkpoint", f"--export={archive}", app, timeout=300)
    return archive, before, pod, app


def restored_pod(
    cri: CriStack, pods: list[Pod], name: str, source: str, names: tuple[str, ...] = ("app", "sidecar")
) -> tuple[Pod, dict[str, str]]:
    """RunPodSandbox with restore-from, then each container created and started as the kubelet does."""
    pod = cri.run_pod(name, {RESTORE_FROM: source})
    pods.append(pod)
    made: dict[str, str] = {}
    for container in names:
        gpu = container == "app"
        command, annotations = (["sh", "-c", COUNTER], {GPU_ANNOTATION: "true"}) if gpu else (SIDECAR, {})
        made[container] = cri.create(pod, container, command, annotations)
        cri.start_container(made[container])
    return pod, made


def runsc_ids(cri: CriStack) -> set[str]:
    return set(cri.runsc("list", "--quiet").stdout.split())


def alive(pid: int) -> bool:
    """Whether host PID ``pid`` runs (a zombie has no command line)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return bool(f.read(1))
    except OSError:
        return False


def running_ids(cri: CriStack) -> set[str]:
    listed = cri.runsc("list", "--format=json").stdout
    return {c["id"] for c in json.loads(listed or "[]") if c.get("status") == "running"}


def test_a_pod_annotated_restore_from_comes_back_counting_on_and_is_an_ordinary_pod(
    cri: CriStack, pods: list[Pod]
) -> None:
    archive, before, _origin, _app = checkpointed(cri, pods, "origin")

    started = time.monotonic()
    pod, made = restored_pod(cri, pods, "restored", str(archive))
    print(f"restore through CRI (runp, 2 x create + start): {time.monotonic() - started:.2f} s")
    app, sidecar = made["app"], made["sidecar"]

    # The counter continues from its saved value: never from 1 (a cold start).
    first = cri.count(app)
    assert first >= before, (first, before)
    wait_for("the restored app to count on", lambda: cri.count(app) > first + 2, 15)
    log = cri.logs(app)
    assert "count 1\n" not in log and f"count {first + 1}" in log, log[-400:]
    assert cri.container_state(app) == "CONTAINER_RUNNING"
    assert cri.container_state(sidecar) == "CONTAINER_RUNNING"
    assert {pod.id, app, sidecar} <= running_ids(cri)

    # Its CUDA process was thawed once the last container was in (the exec engine's calls).
    calls = cri.exec(app, "cat", "/tmp/.fake-cuda/calls", check=True).stdout.splitlines()
    restored = [line.split()[-1] for line in calls if line.startswith("--action restore --pid")]
    assert restored, calls
    assert cri.exec(app, "cat", f"/tmp/.fake-cuda/{restored[-1]}", check=True).stdout.strip() == "running"
    assert not list((cri.state_dir / "pod-restore").glob("*.json"))

    # A later checkpoint of the restored pod works, and the pod keeps running.
    again = cri.checkpoints / "again.tar"
    cri.crictl("checkpoint", f"--export={again}", app, timeout=300)
    now = cri.count(app)
    wait_for("the count to go on after the second checkpoint", lambda: cri.count(app) > now + 2, 15)

    # Stop and remove, as for any pod: nothing left in runsc, no holder.
    cri.crictl("stop", "--timeout", "10", sidecar)
    assert cri.inspect(sidecar)["status"]["exitCode"] == 0
    cri.remove_pod(pod)
    assert not runsc_ids(cri) & {pod.id, app, sidecar}


def test_restore_from_is_refused_outside_the_roots_through_links_and_never_started_cold(
    cri: CriStack, pods: list[Pod]
) -> None:
    outside = Path(tempfile.mkdtemp(prefix="rck-out-", dir="/tmp"))
    try:
        (outside / "x.tar").write_bytes(b"")
        link = cri.checkpoints / "link-out"
        link.symlink_to(outside)
        before = runsc_ids(cri)
        for source, why in (
            (str(outside / "x.tar"), "not under the restore roots"),
            ("checkpoints/x.tar", "not an absolute path"),
            (f"{cri.checkpoints}/../checkpoints/x.tar", "'..' is not allowed"),
            (str(link / "x.tar"), "a symbolic link leads out of the restore roots"),
            (str(cri.checkpoints / "missing.tar"), "no such file or folder"),
        ):
            result = cri.crictl("runp", "--runtime", "runsc-cuda", str(_pod_config(cri, source)), check=False)
            assert result.returncode != 0, source
            assert why in result.stderr and "cannot restore" in result.stderr, result.stderr
            assert runsc_ids(cri) == before  # nothing started, cold or not
    finally:
        shutil.rmtree(outside, ignore_errors=True)


def _pod_config(cri: CriStack, source: str) -> Path:
    uid = f"refused-{os.urandom(4).hex()}"
    (cri.root / "logs" / uid).mkdir(parents=True)
    config = {
        "metadata": {"name": "refused", "namespace": "default", "uid": uid, "attempt": 0},
        "log_directory": str(cri.root / "logs" / uid),
        "annotations": {RESTORE_FROM: source},
        "linux": {"security_context": {"namespace_options": {"network": 2}}},
    }
    path = cri.root / "pods" / f"{uid}.json"
    path.write_text(json.dumps(config))
    return path


def rewritten(archive: Path, target: Path, change: dict[str, object] | None = None, cut: int | None = None) -> Path:
    """A copy of ``archive`` with its runsc-cuda.json changed, or cut to ``cut`` bytes."""
    if cut is not None:
        target.write_bytes(archive.read_bytes()[:cut])
        return target
    with tarfile.open(archive) as src, tarfile.open(target, "w") as out:
        for member in src:
            data = src.extractfile(member) if member.isfile() else None
            if member.name == "checkpoint/runsc-cuda.json" and data is not None:
                doc = {**json.loads(data.read()), **(change or {})}
                blob = json.dumps(doc).encode()
                member.size = len(blob)
                out.addfile(member, io.BytesIO(blob))
            else:
                out.addfile(member, data)
    return target


def test_mismatches_are_refused_with_one_line_and_nothing_is_left_running(cri: CriStack, pods: list[Pod]) -> None:
    archive, _before, _origin, _app = checkpointed(cri, pods, "mismatch")
    before = runsc_ids(cri)

    # Another driver (the sidecar check, as for Docker), and a truncated archive: refused at the first create.
    other = rewritten(archive, cri.checkpoints / "other-driver.tar", {"driver_version": "999.99"})
    cut = rewritten(archive, cri.checkpoints / "cut.tar", cut=archive.stat().st_size // 2)
    for source, why in ((other, "the image was checkpointed with"), (cut, "damaged or truncated")):
        result = cri.crictl("runp", "--runtime", "runsc-cuda", str(_pod_config(cri, str(source))), check=False)
        assert result.returncode != 0
        assert why in result.stderr and "cannot restore" in result.stderr, result.stderr
        assert runsc_ids(cri) == before

    # A container the checkpoint does not hold (renamed): refused at its create; the restoring sandbox is stopped.
    pod = cri.run_pod("renamed", {RESTORE_FROM: str(archive)})
    pods.append(pod)
    app = cri.create(pod, "app", ["sh", "-c", COUNTER], {GPU_ANNOTATION: "true"})
    cri.start_container(app)
    config = cri.root / "pods" / "renamed-helper.json"
    helper = {"metadata": {"name": "helper"}, "image": {"image": APP_IMAGE}, "command": SIDECAR, "log_path": "h.log"}
    config.write_text(json.dumps({**helper, "linux": {}}))
    helper_id = cri.crictl("create", pod.id, str(config), str(pod.config)).stdout.strip()
    result = cri.crictl("start", helper_id, check=False)  # CRI creates the runtime's container at StartContainer
    assert result.returncode != 0
    said = "container 'helper' is not in the checkpoint (it holds app, sidecar); the restoring pod sandbox was stopped"
    assert said in result.stderr, result.stderr
    wait_for("the restoring sandbox to end", lambda: not running_ids(cri) & {pod.id, app}, 30)
    wait_for("CRI to see the app exit", lambda: cri.container_state(app) == "CONTAINER_EXITED", 30)
    ready = lambda: cri.crictl("pods", "--state", "ready", "--quiet").stdout.split()  # noqa: E731
    wait_for("CRI to see the pod not ready", lambda: pod.id not in ready(), 30)
    cri.remove_pod(pod)
    assert not runsc_ids(cri) & {pod.id, app}

    # A container with the right name but another command: runsc refuses it (it compares the saved spec);
    # the restoring sandbox is ended and the pod stops at once.
    pod = cri.run_pod("changed", {RESTORE_FROM: str(archive)})
    pods.append(pod)
    app = cri.create(pod, "app", ["sh", "-c", COUNTER], {GPU_ANNOTATION: "true"})
    cri.start_container(app)
    changed = cri.create(pod, "sidecar", ["sleep", "1000"])
    result = cri.crictl("start", changed, check=False)
    assert result.returncode != 0 and "does not match across checkpoint restore" in result.stderr
    wait_for("the restoring sandbox to end", lambda: not running_ids(cri) & {pod.id, app}, 30)
    wait_for("CRI to see the pod not ready", lambda: pod.id not in ready(), 30)
    cri.remove_pod(pod)


@pytest.fixture
def second_node() -> Iterator[CriStack]:
    with started_or_skip("second CRI stack", "rck2-", running) as started:
        yield started


def test_migration_the_archive_restores_on_another_node_while_the_first_pod_runs(
    cri: CriStack, pods: list[Pod], second_node: CriStack
) -> None:
    archive, before, _origin, app = checkpointed(cri, pods, "migrate")
    copy = second_node.checkpoints / "migrate.tar"
    shutil.copyfile(archive, copy)  # moving archives between nodes is the user's (copy, NFS, object storage)

    moved: list[Pod] = []
    try:
        pod, made = restored_pod(second_node, moved, "migrated", str(copy))
        there = second_node.count(made["app"])
        assert there >= before
        wait_for("the migrated app to count on", lambda: second_node.count(made["app"]) > there + 2, 15)
        here = cri.count(app)
        wait_for("the first pod to keep counting", lambda: cri.count(app) > here + 2, 15)
        second_node.remove_pod(pod)
    finally:
        for pod in moved:
            if pod.id in second_node.pods:
                second_node.crictl("stopp", pod.id, check=False, timeout=120)
                second_node.crictl("rmp", "--force", pod.id, check=False, timeout=120)


def test_a_pod_that_lacks_a_checkpointed_container_can_still_be_stopped_and_removed(
    cri: CriStack, pods: list[Pod]
) -> None:
    archive, _before, origin, _app = checkpointed(cri, pods, "lacking")
    cri.remove_pod(origin)
    pod, made = restored_pod(cri, pods, "lacking-sidecar", str(archive), names=("app",))
    # The sandbox waits for the sidecar, which never comes: the pod does not run, and says so on exec.
    assert cri.exec(made["app"], "true", timeout=20).returncode != 0
    started = time.monotonic()
    cri.crictl("stop", "--timeout", "5", made["app"], timeout=60)
    cri.remove_pod(pod)
    assert time.monotonic() - started < 30
    assert not runsc_ids(cri) & {pod.id, made["app"]}
    assert not [p for p in (cri.state_dir / "pod-restore").rglob("*") if p.is_file()]
    watchers = [r["watcher"] for r in cri.runsc_cuda_records() if f"pod sandbox {pod.id} restoring" in r.get("msg", "")]
    assert len(watchers) == 1 and isinstance(watchers[0], int)  # pod_restore_wait_s: 300 s by default
    wait_for("the stopped pod's restore watcher to exit", lambda: not alive(watchers[0]), 10)

    # Left alone, a pod that lacks a container is ended after pod_restore_wait_s (set here in the node's config
    # file, which each runsc-cuda call reads: the watcher keeps the value it started with).
    config = cri.runsc_cuda_config
    original = config.read_text()
    config.write_text(original + "pod_restore_wait_s = 5\n")
    try:
        late, made = restored_pod(cri, pods, "lacking-late", str(archive), names=("app",))
    finally:
        config.write_text(original)
    said = f"restore of pod {late.id[:12]} from {archive}: the pod did not create sidecar within 5s"

    def warned() -> list[dict[str, Any]]:
        return [r for r in cri.runsc_cuda_records() if said in r.get("msg", "")]

    wait_for("the lacking pod's sandbox to be ended", lambda: bool(warned()), 60)
    assert [r["level"] for r in warned()] == ["WARNING"], warned()
    assert not (cri.state_dir / "pod-restore" / f"{late.id}.json").exists()
    started = time.monotonic()
    cri.remove_pod(late)
    assert time.monotonic() - started < 30
    assert not runsc_ids(cri) & {late.id, made["app"]}
    # Its end is remembered by the pod's UID: the kubelet's next sandbox for it is refused at once, with why.
    uid = json.loads(late.config.read_text())["metadata"]["uid"]
    left = [p for p in (cri.state_dir / "pod-restore").rglob("*") if p.is_file()]
    assert left == [cri.state_dir / "pod-restore" / "refused" / f"{uid}.json"], left
    before = runsc_ids(cri)
    again = cri.crictl("runp", "--runtime", "runsc-cuda", str(late.config), check=False)
    assert again.returncode != 0
    assert "the pod lacks sidecar of the checkpoint (its earlier sandbox was stopped after waiting 5s)" in again.stderr
    assert runsc_ids(cri) == before
