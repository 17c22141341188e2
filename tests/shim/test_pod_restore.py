"""Restore by annotation through the CLI (commands/pod_restore.py, commands/gc.py, oci/stdio.py), over the fake runsc:
refusals change nothing and call no runsc, pods without the annotation are untouched, start of a container
restored at create does nothing, gc empties the archive cache, and a restoring pod's watcher ends a pod that lacks
a checkpointed container after pod_restore_wait_s and nothing else."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from runsc_cuda.image import statefile
from runsc_cuda.oci import stdio, subcontainer

from support import Shim, fixture_spec, wait_for

POD_ANNOTATIONS = {
    "io.kubernetes.cri.container-type": "sandbox",
    "io.kubernetes.cri.sandbox-id": "pod1",
    "dev.runsc-cuda.gpu-note": "pod annotations other than restore-from",
}


def cri_bundle(shim: Shim, name: str, annotations: dict[str, str]) -> tuple[Path, bytes]:
    doc = fixture_spec("plain")
    doc["annotations"] = annotations
    raw = json.dumps(doc, indent=2).encode()
    return shim.bundle(name, raw=raw), raw


def create(shim: Shim, bundle: Path, cid: str) -> tuple[int, str]:
    out = shim.run("--log", str(bundle / "log.json"), "--log-format", "json", "create", "--bundle", str(bundle),
                   "--pid-file", str(bundle / "init.pid"), cid)  # fmt: skip
    return out.returncode, out.stderr.decode()


def test_a_pod_without_the_annotation_is_untouched(shim: Shim) -> None:
    bundle, raw = cri_bundle(shim, "pause", POD_ANNOTATIONS)
    inode = os.stat(bundle / "config.json").st_ino
    code, err = create(shim, bundle, "pod1")
    assert code == 0, err
    assert (bundle / "config.json").read_bytes() == raw and os.stat(bundle / "config.json").st_ino == inode
    assert [shim.verb_of(a) for a in shim.runsc_argvs()] == ["create"]


def test_restore_from_outside_the_roots_is_refused_in_one_line_and_nothing_runs(shim: Shim, tmp_path: Path) -> None:
    (tmp_path / "elsewhere.tar").write_bytes(b"")
    shim.env["RUNSC_CUDA_RESTORE_ROOTS"] = str(tmp_path / "checkpoints")
    bundle, raw = cri_bundle(
        shim, "pause", {**POD_ANNOTATIONS, "dev.runsc-cuda.restore-from": str(tmp_path / "elsewhere.tar")}
    )
    code, err = create(shim, bundle, "pod1")
    assert code != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("runsc-cuda: cannot restore pod1 from ") and "not under the restore roots" in lines[0]
    assert lines[0].endswith("; nothing was started")
    assert (bundle / "config.json").read_bytes() == raw
    assert shim.runsc_argvs() == []  # never started cold instead
    last = json.loads((bundle / "log.json").read_text().splitlines()[-1])
    assert last["level"] == "error" and "not under the restore roots" in last["msg"]  # what containerd shows


def test_a_container_that_joins_no_restoring_pod_is_refused(shim: Shim, tmp_path: Path) -> None:
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "x.tar").write_bytes(b"")
    shim.env["RUNSC_CUDA_RESTORE_ROOTS"] = str(tmp_path / "checkpoints")
    annotations = {
        "io.kubernetes.cri.container-type": "container",
        "io.kubernetes.cri.sandbox-id": "pod1",
        "io.kubernetes.cri.container-name": "app",
        "dev.runsc-cuda.restore-from": str(tmp_path / "checkpoints" / "x.tar"),
    }
    bundle, _raw = cri_bundle(shim, "app", annotations)
    code, err = create(shim, bundle, "app1")
    assert code != 0 and "pod sandbox pod1 was not restored from it" in err, err
    assert shim.runsc_argvs() == []


def test_start_of_a_container_restored_at_create_does_nothing(shim: Shim) -> None:
    state = Path(tempfile.mkdtemp(prefix="rcp-", dir="/tmp"))  # short: unix socket paths
    shim.env["RUNSC_CUDA_STATE_DIR"] = str(state)
    path = stdio.socket_path(str(state), str(shim.root), "app1")
    os.makedirs(os.path.dirname(path))
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    answered: list[bool] = []

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            answered.append(subcontainer._answer(conn, str(shim.root), "app1", restored=True))

    server = threading.Thread(target=serve)
    server.start()
    try:
        out = shim.run("start", "app1", timeout=20)
    finally:
        server.join(10)
        listener.close()
        os.unlink(path)
        os.rmdir(os.path.dirname(path))
        os.rmdir(state)
    assert out.returncode == 0, out.stderr
    assert answered == [True]
    assert shim.runsc_argvs() == []  # runsc start of a running container would fail


def test_gc_removes_the_unpacked_archives(shim: Shim, tmp_path: Path) -> None:
    entry = tmp_path / "state" / "restore-cache" / "0123"
    entry.mkdir(parents=True)
    (entry / "unpacked.json").write_text("{}")
    os.utime(entry / "unpacked.json", (1, 1))
    fresh = tmp_path / "state" / "restore-cache" / "4567"
    fresh.mkdir()
    (fresh / "unpacked.json").write_text("{}")
    out = shim.run("gc")
    assert out.returncode == 0 and out.stdout.decode() == f"removed {entry}\n"
    assert fresh.exists()
    assert shim.run("gc", "--all").stdout.decode() == f"removed {fresh}\n"
    bad = shim.run("gc", "--everything")
    assert bad.returncode == 2 and b"unknown arguments --everything" in bad.stderr


def test_kill_of_a_container_whose_pod_still_restores_ends_the_pod_and_delete_removes_the_markers(
    shim: Shim, tmp_path: Path
) -> None:
    from runsc_cuda.oci import restoring

    state = tmp_path / "state"
    waiting = {}
    for cid in ("pod1", "app1"):  # the sandbox and a container that joined; PID 1 is never killed
        path = Path(restoring.marker_path(str(state), str(shim.root), cid))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"sandbox": "pod1", "container": cid, "pid": 1}))
        waiting[cid] = path
    other = Path(restoring.marker_path(str(state), str(shim.root), "elsewhere"))
    other.write_text(json.dumps({"sandbox": "pod2", "container": "elsewhere", "pid": 1}))
    record = state / "pod-restore" / "pod1.json"
    record.write_text("{}")
    out = shim.run("kill", "app1", "15")
    assert out.returncode == 0 and b"still restoring" in out.stderr
    assert not record.exists()
    assert shim.run("kill", "app1", "9").returncode == 0  # again: the pod is gone, not an unknown error
    assert shim.runsc_argvs() == []
    for cid, path in waiting.items():  # delete removes each container's marker, then runsc deletes
        shim.run("delete", "--force", cid)  # the fake runsc knows no such container: its answer is runsc's
        assert not path.exists()
    assert other.exists()  # another pod's marker stays
    shim.run("kill", "app1", "9")
    assert [shim.verb_of(a) for a in shim.runsc_argvs()] == ["delete", "delete", "kill"]  # runsc's, as ever


# --- a whole pod restore over the fake runsc (pod image; stand-in sandbox process): the restore watcher ---


POD_IMAGE = {"__no_name_0": "sandbox", "app": "container", "sidecar": "container"}


@dataclass
class Pod:
    shim: Shim
    value: str
    state: Path
    bundles: dict[str, Path] = field(default_factory=dict)
    uid: str = "0b5c1d0e-1f2a-4b3c-8d4e-5f6a7b8c9d0e"  # the pod's UID (containerd's sandbox-uid annotation)
    pid_file: bool = True  # create with --pid-file, as containerd's runc.v2 shim does

    def create(self, cid: str, kind: str, name: str = "") -> tuple[int, str]:
        annotations = {
            "io.kubernetes.cri.container-type": kind,
            "io.kubernetes.cri.sandbox-id": "pod1",
            "dev.runsc-cuda.restore-from": self.value,
            "io.kubernetes.cri.sandbox-uid": self.uid,
        }
        if name:
            annotations["io.kubernetes.cri.container-name"] = name
        bundle, _raw = self.bundles[cid], _raw = cri_bundle(self.shim, cid, annotations)
        with open(bundle / "create.out", "w+b") as out:  # not a pipe: the holders keep create's stdio (by design)
            done = subprocess.run(
                [*self.shim.command, "--root", str(self.shim.root), "--log", str(bundle / "log.json"), "--log-format",
                 "json", "create", "--bundle", str(bundle),
                 *(["--pid-file", str(bundle / "init.pid")] if self.pid_file else []), cid],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=self.shim.env, timeout=60, check=False,
            )  # fmt: skip
            out.seek(0)
            return done.returncode, out.read().decode()

    def restore_sandbox(self) -> int | None:
        """The pause container's create; the watcher's PID (None: none was started)."""
        code, err = self.create("pod1", "sandbox")
        assert code == 0, err
        lines = [e for e in logged(self.shim) if str(e.get("msg", "")).startswith("pod sandbox pod1 restoring")]
        assert len(lines) == 1, lines
        return lines[0]["watcher"]

    @property
    def record(self) -> Path:
        return self.state / "pod-restore" / "pod1.json"

    def sandbox_pid(self) -> int:
        return int(json.loads((self.shim.root / "pod1" / "state.json").read_text())["pid"])

    def warnings(self) -> list[str]:
        return [e["msg"] for e in self.shim.log_entries(self.bundles["pod1"]) if e.get("level") == "warning"]


def logged(shim: Shim) -> list[dict[str, object]]:
    path = Path(shim.env["RUNSC_CUDA_LOG_FILE"])
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def lets_go(shim: Shim, pid: int) -> bool:
    """Whether the process's stdio is /dev/null and it holds no other file but runsc-cuda's detailed log (the
    shim waits for create's stdio to close)."""
    fds = {int(fd): os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
    stdio_null = all(fds.get(fd) == os.devnull for fd in (0, 1, 2))
    return stdio_null and set(fds.values()) <= {os.devnull, shim.env["RUNSC_CUDA_LOG_FILE"]}


def running(pid: int) -> bool:
    """Whether PID ``pid`` runs (a zombie has no command line)."""
    try:
        return bool(Path(f"/proc/{pid}/cmdline").read_bytes())
    except OSError:
        return False


@pytest.fixture
def pod(shim: Shim, tmp_path: Path) -> Iterator[Pod]:
    """A pod image under the restore roots, and a state_dir short enough for the holders' sockets."""
    image = tmp_path / "checkpoints" / "pod"
    image.mkdir(parents=True)
    specs = {n: {"annotations": {"io.kubernetes.cri.container-type": t}} for n, t in POD_IMAGE.items()}
    meta = json.dumps({"container_count": str(len(specs)), "container_specs": json.dumps(specs)}).encode()
    (image / "checkpoint.img").write_bytes(statefile.MAGIC + len(meta).to_bytes(8, "big") + meta)
    state = Path(tempfile.mkdtemp(prefix="rcw-", dir="/tmp"))
    shim.env.update(
        RUNSC_CUDA_STATE_DIR=str(state),
        RUNSC_CUDA_RESTORE_ROOTS=str(tmp_path / "checkpoints"),
        RUNSC_CUDA_LOG_FILE=str(tmp_path / "runsc-cuda.log"),
    )
    made = Pod(shim, str(image), state)
    try:
        yield made
    finally:
        for cid, bundle in made.bundles.items():  # the stand-in sandbox ends; holders exit once the bundle goes
            shim.run("delete", "--force", cid)
            (bundle / "config.json").unlink(missing_ok=True)
        shutil.rmtree(state, ignore_errors=True)


def test_a_pod_that_lacks_a_checkpointed_container_is_ended_after_the_wait(shim: Shim, pod: Pod) -> None:
    shim.env["RUNSC_CUDA_POD_RESTORE_WAIT_S"] = "1"
    watcher = pod.restore_sandbox()
    sandbox = pod.sandbox_pid()
    assert isinstance(watcher, int) and running(sandbox)
    wait_for(lambda: not running(watcher), timeout=30)
    assert not running(sandbox) and not pod.record.exists()
    assert pod.warnings() == [
        f"runsc-cuda: restore of pod pod1 from {pod.value}: the pod did not create app, sidecar within 1s "
        "(the checkpoint holds app, sidecar); the restoring pod sandbox was stopped"
    ]
    assert [e["level"] for e in logged(shim) if "did not create" in str(e["msg"])] == ["WARNING"]
    code, err = pod.create("app1", "container", "app")  # too late: refused, nothing started
    assert code != 0 and "pod sandbox pod1 was not restored from it" in err
    out = shim.run("kill", "pod1", "9")  # the markers stay, as after a refusal: the shim's kill succeeds
    assert out.returncode == 0 and b"still restoring" in out.stderr


def test_the_next_sandbox_of_a_pod_ended_for_a_lacking_container_is_refused_at_once(shim: Shim, pod: Pod) -> None:
    # The kubelet makes a new sandbox for the same pod (same UID, same containers): it would wait again.
    shim.env["RUNSC_CUDA_POD_RESTORE_WAIT_S"] = "1"
    watcher = pod.restore_sandbox()
    assert isinstance(watcher, int)
    wait_for(lambda: not running(watcher), timeout=30)
    before = list(shim.root.iterdir())
    code, err = pod.create("pod2", "sandbox")
    assert code != 0
    said = (
        f"cannot restore pod2 from {pod.value!r}: the pod lacks app, sidecar of the checkpoint (its earlier "
        "sandbox was stopped after waiting 1s); create a pod with the checkpoint's containers; nothing was started"
    )
    assert said in err, err
    assert list(shim.root.iterdir()) == before  # runsc was not called
    pod.uid = "another-pod"  # a new pod gets a new try
    code, err = pod.create("pod3", "sandbox")
    assert code == 0, err
    out = shim.run("gc", "--all")
    assert out.returncode == 0 and b"refused" in out.stdout
    assert not (pod.state / "pod-restore" / "refused").exists() or not list(
        (pod.state / "pod-restore" / "refused").iterdir()
    )


def test_a_pod_whose_containers_all_join_leaves_no_watcher(shim: Shim, pod: Pod) -> None:
    shim.env["RUNSC_CUDA_POD_RESTORE_WAIT_S"] = "60"
    watcher = pod.restore_sandbox()
    assert isinstance(watcher, int) and running(watcher) and lets_go(shim, watcher)
    for cid, name in (("app1", "app"), ("side1", "sidecar")):
        code, err = pod.create(cid, "container", name)
        assert code == 0, err
    assert not pod.record.exists()
    wait_for(lambda: not running(watcher), timeout=10)
    assert running(pod.sandbox_pid())  # the pod runs
    assert pod.warnings() == []


def test_without_a_wait_no_watcher_starts(shim: Shim, pod: Pod) -> None:
    shim.env["RUNSC_CUDA_POD_RESTORE_WAIT_S"] = "0"
    assert pod.restore_sandbox() is None
    assert pod.record.exists() and running(pod.sandbox_pid())


def test_the_sandbox_pid_is_read_from_the_pid_file_runsc_restore_wrote(shim: Shim, pod: Pod) -> None:
    shim.env["RUNSC_CUDA_POD_RESTORE_WAIT_S"] = "0"
    pod.restore_sandbox()
    assert [shim.verb_of(a) for a in shim.runsc_argvs()] == ["restore"]  # no runsc state call
    assert json.loads(pod.record.read_text())["pid"] == pod.sandbox_pid()


def test_without_a_pid_file_the_sandbox_pid_is_asked_of_runsc(shim: Shim, pod: Pod) -> None:
    shim.env["RUNSC_CUDA_POD_RESTORE_WAIT_S"] = "0"
    pod.pid_file = False
    pod.restore_sandbox()
    assert [shim.verb_of(a) for a in shim.runsc_argvs()] == ["restore", "state"]
    assert json.loads(pod.record.read_text())["pid"] == pod.sandbox_pid()


def test_a_pod_stopped_while_it_restores_ends_its_watcher(shim: Shim, pod: Pod) -> None:
    shim.env["RUNSC_CUDA_POD_RESTORE_WAIT_S"] = "60"
    watcher = pod.restore_sandbox()
    assert isinstance(watcher, int) and running(watcher)
    sandbox = pod.sandbox_pid()
    out = shim.run("kill", "pod1", "9")  # the kubelet's stop: oci/restoring.py ends the sandbox, drops the record
    assert out.returncode == 0 and b"still restoring" in out.stderr
    wait_for(lambda: not running(watcher), timeout=10)
    assert not running(sandbox) and not pod.record.exists()
    assert pod.warnings() == []
