"""Restore by annotation through the CLI (commands/pod_restore.py, commands/gc.py, oci/stdio.py), over the fake runsc:
refusals change nothing and call no runsc, pods without the annotation are untouched, start of a container
restored at create does nothing, and gc empties the archive cache."""

from __future__ import annotations

import json
import os
import socket
import tempfile
import threading
from pathlib import Path

from runsc_cuda.oci import stdio, subcontainer

from support import Shim, fixture_spec

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
