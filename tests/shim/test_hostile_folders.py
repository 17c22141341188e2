"""Hostile state and image folders, bounded log lines, stop requests and gone containers (issue 12, items 6-12).

Each test pins one defect: before its fix, a write followed a planted link, a
FIFO hung a restore, a crafted sidecar drove thousands of ``runsc exec`` calls,
a 200 KB text reached log.json whole, SIGTERM waited out ``lock_wait_s``, two
spellings of ``--root`` got two locks, or a deleted container read as
"rollback incomplete".
"""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from runsc_cuda import files, logs
from runsc_cuda.errors import ShimError
from runsc_cuda.lock import container_lock, lock_path
from runsc_cuda.oci import help, spec
from runsc_cuda.runner import Result
from runsc_cuda.signals import StopFlag

from support import Shim, stopped_image

CUDA = (10, 11)
PIDS = (1, *CUDA)
VICTIM = "root's file\n"


def victim(tmp: Path) -> Path:
    path = tmp / "victim"
    path.write_text(VICTIM)
    return path


def checkpoint(shim: Shim, bundle: Path, *extra: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return shim.docker(bundle, "checkpoint", "--image-path", str(shim.tmp / "image"), *extra, "c1", env=env)


# --- 6. no write follows a planted link; a state_dir others can change is refused -------------


def test_write_atomic_never_writes_through_a_planted_link(tmp_path: Path) -> None:
    target = victim(tmp_path)
    path = tmp_path / "runsc-cuda.json"
    path.symlink_to(target)
    files.write_atomic(str(path), "{}\n")
    assert target.read_text() == VICTIM
    assert not path.is_symlink() and path.read_text() == "{}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runsc-cuda.json", "victim"]


def test_write_atomic_never_opens_a_planted_temp_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = victim(tmp_path)
    monkeypatch.setattr(os, "urandom", lambda n: b"\0" * n)  # every temp name is the one planted
    (tmp_path / f"x.json.{os.getpid()}.{'00' * 6}.tmp").symlink_to(target)
    with pytest.raises(FileExistsError):
        files.write_atomic(str(tmp_path / "x.json"), "planted?")
    assert target.read_text() == VICTIM and not (tmp_path / "x.json").exists()


def test_a_lock_file_planted_as_a_link_is_refused(shim: Shim) -> None:
    shim.env["RUNSC_CUDA_ENGINE"] = "exec"
    bundle = shim.gpu_container("c1", PIDS, CUDA, status="paused")
    path = Path(lock_path(shim.env["RUNSC_CUDA_STATE_DIR"], str(shim.root), "c1"))
    path.parent.mkdir(parents=True, mode=0o700)
    target = victim(shim.tmp)
    path.symlink_to(target)
    out = checkpoint(shim, bundle, "--leave-running")
    assert out.returncode == 1
    assert shim.last_error(bundle) == (
        f"runsc-cuda: cannot checkpoint c1: cannot open lock file {path}: it is a symbolic link; nothing was frozen"
    )
    assert target.read_text() == VICTIM
    assert shim.cuda_calls("c1") == [] and shim.status("c1") == "paused"


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o770])
def test_a_state_dir_others_can_write_is_refused(shim: Shim, mode: int) -> None:
    shim.env["RUNSC_CUDA_ENGINE"] = "exec"
    bundle = shim.gpu_container("c1", PIDS, CUDA, status="paused")
    state = Path(shim.env["RUNSC_CUDA_STATE_DIR"])
    state.mkdir(exist_ok=True)
    os.chmod(state, mode)
    out = checkpoint(shim, bundle, "--leave-running")
    assert out.returncode == 1
    owner = "root" if os.geteuid() == 0 else str(os.geteuid())
    assert shim.last_error(bundle) == (
        f"runsc-cuda: cannot checkpoint c1: state_dir {state} can be written by other users (mode {mode:04o}); "
        f"runsc-cuda keeps its locks there (chown {owner} {state} && chmod 700 {state}, or set state_dir to a "
        f"folder only {owner} can change); nothing was frozen"
    )
    assert out.stderr.decode().count("\n") == 1
    assert shim.cuda_calls("c1") == [] and not (state / "locks").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the state_dir to another user")
def test_a_state_dir_owned_by_another_user_is_refused(shim: Shim) -> None:
    shim.env["RUNSC_CUDA_ENGINE"] = "exec"
    bundle = shim.gpu_container("c1", PIDS, CUDA, status="paused")
    state = Path(shim.env["RUNSC_CUDA_STATE_DIR"])
    state.mkdir(mode=0o700, exist_ok=True)
    os.chown(state, 65534, 65534)
    out = checkpoint(shim, bundle, "--leave-running")
    assert out.returncode == 1
    assert f"state_dir {state} is owned by uid 65534, not root" in shim.last_error(bundle)
    assert shim.cuda_calls("c1") == []


def test_the_help_cache_is_used_only_in_a_private_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Feature detection must not come from a file others could write: runsc is asked itself."""
    runsc = tmp_path / "runsc"
    runsc.write_text("#!/bin/sh\n")
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    calls: list[list[str]] = []

    def call_runsc(args: list[str]) -> Result:
        calls.append(args)
        return Result(tuple(args), 0, b"  -from-runsc\n", b"", 0.0)

    session: Any = SimpleNamespace(
        runsc=str(runsc),
        config=SimpleNamespace(state_dir=str(state)),
        report=SimpleNamespace(debug=lambda *a, **k: None),
        call_runsc=call_runsc,
    )
    cache = state / help.HELP_FILE
    planted = json.dumps({"binary": help._binary_key(str(runsc)), "help": {"checkpoint": "  -planted\n"}})
    cache.write_text(planted)
    monkeypatch.setattr(help, "_MEMORY", {})
    assert help.help_text(session, "checkpoint") == "  -planted\n" and calls == []  # private: the cache counts
    os.chmod(state, 0o777)
    monkeypatch.setattr(help, "_MEMORY", {})
    assert help.help_text(session, "checkpoint") == "  -from-runsc\n" and len(calls) == 1
    assert cache.read_text() == planted  # neither trusted nor rewritten
    os.chmod(state, 0o700)
    cache.unlink()
    target = victim(tmp_path)
    cache.symlink_to(target)
    monkeypatch.setattr(help, "_MEMORY", {})
    assert help.help_text(session, "restore") == "  -from-runsc\n"
    assert target.read_text() == VICTIM and not cache.is_symlink()


# --- 7. a FIFO or a device in a file's place: an error, never a hang ---------------------------


@pytest.mark.parametrize("plant", ["fifo", "link to /dev/zero", "directory"])
def test_a_sidecar_that_is_not_a_regular_file_is_refused_at_once(shim: Shim, plant: str) -> None:
    bundle, image = stopped_image(shim)
    sidecar = image / "runsc-cuda.json"
    sidecar.unlink()
    expect = {
        "fifo": "is a FIFO, not a regular file",
        "link to /dev/zero": "is a symbolic link (runsc-cuda does not follow links here)",
    }
    if plant == "fifo":
        os.mkfifo(sidecar)
    elif plant == "directory":
        sidecar.mkdir()
    else:
        sidecar.symlink_to("/dev/zero")
    started = time.monotonic()
    out = shim.docker_restore(bundle, image, timeout=20)
    assert time.monotonic() - started < 10
    assert out.returncode == 1
    why = expect.get(plant, "is a directory")
    assert (
        shim.last_error(bundle) == f"runsc-cuda: cannot restore c1: cannot read {sidecar}: {why}; nothing was changed"
    )
    assert not shim.calls_of("restore")


@pytest.mark.parametrize("plant", ["fifo", "link"])
def test_a_config_json_that_is_not_a_regular_file_is_refused_at_once(tmp_path: Path, plant: str) -> None:
    path = tmp_path / "config.json"
    if plant == "fifo":
        os.mkfifo(path)
    else:
        (tmp_path / "real.json").write_text("{}")
        path.symlink_to(tmp_path / "real.json")
    with pytest.raises(ShimError) as caught:
        spec.read(str(tmp_path))
    why = "is a FIFO, not a regular file" if plant == "fifo" else "is a symbolic link"
    assert caught.value.message.startswith(f"{path}: cannot read: {why}")


def test_a_config_json_past_the_bound_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spec, "MAX_BYTES", 1024)
    (tmp_path / "config.json").write_text(json.dumps({"ociVersion": "1.0.0", "pad": "x" * 2048}))
    with pytest.raises(ShimError, match="larger than 1024 bytes"):
        spec.read(str(tmp_path))


# --- 8. a sidecar that disagrees with the restored sandbox ---------------------------------------


def test_a_sidecar_listing_pids_the_sandbox_does_not_have_thaws_what_exists_then_fails(shim: Shim) -> None:
    shim.env["RUNSC_CUDA_ENGINE"] = "exec"
    bundle, image = stopped_image(shim)
    path = image / "runsc-cuda.json"
    doc = json.loads(path.read_text())
    doc["cuda_processes"] += [
        {"pid": p, "state_before": "running", "state_saved": "checkpointed"} for p in range(100, 3100)
    ]
    path.write_text(json.dumps(doc))
    out = shim.docker_restore(bundle, image)
    assert out.returncode == 1
    assert shim.last_error(bundle) == (
        "runsc-cuda: restore of c1 failed: the image's runsc-cuda.json lists 3000 CUDA processes that the restored "
        "sandbox does not have (PIDs 100, 101, 102, 103, 104, 105, 106, 107, 108, 109 and 2990 more); only the 2 it "
        "has were thawed"
    )
    assert shim.cuda_states("c1") == dict.fromkeys(CUDA, "running")
    pids = {int(a[a.index("--pid") + 1]) for a in shim.cuda_calls("c1") if "--pid" in a}
    assert pids <= set(CUDA)
    assert len(shim.calls_of("ps")) >= 1


def test_a_restore_whose_runsc_ps_fails_still_thaws_then_fails(shim: Shim) -> None:
    shim.env["RUNSC_CUDA_ENGINE"] = "exec"
    bundle, image = stopped_image(shim)
    ps_fails = {"FAKE_RUNSC_FAULTS": json.dumps([{"verb": "ps", "fault": "garbage", "times": 0}])}
    before = len(shim.calls())
    out = shim.docker_restore(bundle, image, env=ps_fails)
    assert out.returncode == 1
    assert shim.last_error(bundle) == (
        "runsc-cuda: restore of c1 failed: runsc ps c1: unusable output: Expecting value: line 1 column 1 (char 0); "
        "the image's CUDA processes were thawed without that check"
    )
    assert len(shim.calls_of("ps", before)) == 2
    assert shim.cuda_states("c1") == dict.fromkeys(CUDA, "running")


# --- 9. every log line bounded and printable -------------------------------------------------------


def test_every_log_line_is_bounded_and_printable(tmp_path: Path) -> None:
    log_json = tmp_path / "log.json"
    stderr = io.StringIO()
    logger = logs.detail_logger(str(tmp_path / "detail.log"), "debug")
    report = logs.Reporter(logs.RuntimeLog(str(log_json)), logger, stderr)
    huge = "GPU \x1b[2J" + "é" * 200_000 + " end"
    report.error(f"image: {huge}", names=[huge] * 3, pids=list(range(20_000)))
    report.warning(huge)
    for line in log_json.read_text().splitlines():
        assert len(line.encode()) <= logs.LINE_BYTES
        msg = json.loads(line)["msg"]
        assert msg.isprintable() and msg.endswith(" end") and "characters left out" in msg
    assert len(stderr.getvalue()) <= logs.LINE_MAX + 20 and stderr.getvalue().count("\n") == 1
    for handler in logger.handlers:
        handler.flush()
    for line in (tmp_path / "detail.log").read_text().splitlines():
        assert len(line) < 4 * 6 * logs.LINE_MAX  # message and three bounded fields, escapes included
    logging.getLogger("runsc-cuda").handlers.clear()


def test_a_sidecar_with_20000_gpu_names_gives_a_short_error(shim: Shim) -> None:
    bundle, image = stopped_image(shim)
    path = image / "runsc-cuda.json"
    doc = json.loads(path.read_text())
    doc["gpus"] = [f"NVIDIA H100 80GB HBM3 #{i}" for i in range(20_000)]
    path.write_text(json.dumps(doc))
    out = shim.docker_restore(bundle, image)
    assert out.returncode == 1
    error = shim.last_error(bundle)
    assert error.startswith("runsc-cuda: cannot restore c1: image ") and error.endswith("nothing was changed")
    assert len(error) <= logs.LINE_MAX and "characters left out" in error
    raw = (bundle / "log.json").read_bytes().splitlines()
    assert max(len(line) for line in raw) <= logs.LINE_BYTES
    assert len(out.stderr) <= logs.LINE_MAX * 2


# --- 10. a stop request ends a wait for the lock -----------------------------------------------------


def test_a_stop_request_ends_a_lock_wait(tmp_path: Path) -> None:
    state = tmp_path / "state"
    stop = StopFlag()
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 3:
            stop.signum = signal.SIGTERM

    with (
        container_lock(str(state), "/run/runsc", "c1", 60),
        pytest.raises(ShimError) as caught,
        container_lock(str(state), "/run/runsc", "c1", 600, sleep=sleep, stop=stop),
    ):
        pass
    assert len(sleeps) == 3
    assert caught.value.refused
    assert caught.value.message == (
        f"interrupted by SIGTERM while waiting for another checkpoint or restore of container c1 (pid {os.getpid()})"
    )


def test_sigterm_while_waiting_for_the_lock_ends_the_call_promptly(shim: Shim) -> None:
    shim.env.update(RUNSC_CUDA_ENGINE="exec", RUNSC_CUDA_LOCK_WAIT_S="600")
    bundle = shim.gpu_container("c1", PIDS, CUDA, status="paused")
    state = shim.env["RUNSC_CUDA_STATE_DIR"]
    with container_lock(state, str(shim.root), "c1", 1):
        argv = [*shim.command, "--root", str(shim.root), "--log", str(bundle / "log.json"), "--log-format", "json"]
        proc = subprocess.Popen(
            [*argv, "checkpoint", "--image-path", str(shim.tmp / "image"), "--leave-running", "c1"],
            env=shim.env,
            stderr=subprocess.PIPE,
        )
        time.sleep(2.0)  # well into the wait
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        proc.communicate(timeout=10)
        assert time.monotonic() - started < 2
    assert proc.returncode == 1
    assert shim.last_error(bundle) == (
        "runsc-cuda: cannot checkpoint c1: interrupted by SIGTERM while waiting for another checkpoint or restore of "
        f"container c1 (pid {os.getpid()}); nothing was frozen"
    )
    assert shim.cuda_calls("c1") == [] and shim.status("c1") == "paused"


# --- 11. one container, one lock, however --root is spelled -----------------------------------------


def test_a_root_spelled_through_a_link_gets_the_same_lock(shim: Shim) -> None:
    link = shim.tmp / "root-link"
    link.symlink_to(shim.root)
    state = shim.env["RUNSC_CUDA_STATE_DIR"]
    assert lock_path(state, str(link), "c1") == lock_path(state, str(shim.root), "c1")
    assert lock_path(state, str(link) + "/./", "c1") == lock_path(state, str(shim.root), "c1")
    shim.env.update(RUNSC_CUDA_ENGINE="exec", RUNSC_CUDA_LOCK_WAIT_S="0.3")
    bundle = shim.gpu_container("c1", PIDS, CUDA, status="paused")
    with container_lock(state, str(shim.root), "c1", 1):
        out = shim.run(
            "--root", str(link), "--log", str(bundle / "log.json"), "--log-format", "json",
            "checkpoint", "--image-path", str(shim.tmp / "image"), "--leave-running", "c1",
        )  # fmt: skip
    assert out.returncode == 1
    assert "another checkpoint or restore of container c1 is still running" in shim.last_error(bundle)
    assert shim.cuda_calls("c1") == []


# --- 12. a checkpoint racing kill + delete ----------------------------------------------------------------


@pytest.mark.parametrize("engine", ["exec", "native"])
def test_a_container_deleted_during_its_checkpoint_is_reported_gone(shim: Shim, engine: str) -> None:
    shim.env["RUNSC_CUDA_ENGINE"] = engine
    bundle = shim.gpu_container("c1", PIDS, CUDA, status="paused")
    vanish = {"FAKE_RUNSC_FAULTS": json.dumps([{"verb": "checkpoint", "fault": "vanish"}])}
    out = checkpoint(shim, bundle, "--leave-running", env=vanish)
    assert out.returncode == 1
    error = shim.last_error(bundle)
    assert error.startswith("runsc-cuda: checkpoint of c1 failed: runsc checkpoint")
    assert "loading container: file does not exist" in error
    assert error.endswith(
        "; the container no longer exists (killed and deleted meanwhile); no CUDA process of it is left frozen"
    )
    assert "rollback incomplete" not in error and "could not" not in error
    assert not (shim.root / "c1").exists()
