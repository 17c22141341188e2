"""Issue 12: no CUDA process is left frozen, even when runsc-cuda dies, the disk is full, an
internal error strikes or a CUDA process starts during the freeze.  One small case each.

Internal errors are injected into the Python module (a wrapper that makes one of runsc-cuda's
own calls raise), so those cases run against the module only.
"""

from __future__ import annotations

import json
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import pytest

from support import Shim, wait_for

CUDA = (10, 11)
PIDS = (1, *CUDA)

# runsc-cuda whose runner raises OSError (EMFILE) at the Nth call whose argv holds RAISE_MATCH.
FAILING = textwrap.dedent(
    """
    import errno, os, sys
    from runsc_cuda import runner
    match, at, seen = os.environ["RAISE_MATCH"], int(os.environ.get("RAISE_AT", "1")), [0]
    real = runner.Runner.run

    def run(self, argv, *args, **kw):
        if match in " ".join(argv):
            seen[0] += 1
            if seen[0] == at:
                raise OSError(errno.EMFILE, "Too many open files")
        return real(self, argv, *args, **kw)

    runner.Runner.run = run
    from runsc_cuda import files
    write_at, writes, real_write = int(os.environ.get("FULL_AT_WRITE", "0")), [0], files.write_atomic

    def write_atomic(path, *args, **kw):
        if path.endswith("runsc-cuda.json"):
            writes[0] += 1
            if writes[0] == write_at:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(path, *args, **kw)

    files.write_atomic = write_atomic
    from runsc_cuda.cli import main

    sys.exit(main(["runsc-cuda", *sys.argv[1:]]))
    """
)


def failing(shim: Shim, match: str = "-", at: int = 1, full_at_write: int = 0) -> Shim:
    """runsc-cuda whose ``at``-th call matching ``match`` raises OSError, and whose ``full_at_write``-th
    write of the sidecar finds the disk full (0: never)."""
    if shim.entry != "python":
        pytest.skip("injects an internal error into the Python module")
    env = dict(shim.env, RAISE_MATCH=match, RAISE_AT=str(at if match != "-" else 0), FULL_AT_WRITE=str(full_at_write))
    return replace(shim, command=[sys.executable, "-c", FAILING], env=env)


def checkpoint(shim: Shim, bundle: Path, *extra: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return shim.docker(bundle, "checkpoint", "--image-path", str(shim.tmp / "image"), *extra, "c1", env=env)


def cuda_faults(*plans: dict[str, object]) -> dict[str, str]:
    return {"FAKE_CUDA_FAULTS": json.dumps(list(plans))}


# --- item 3: an unexpected exception anywhere in a freeze rolls back ----------------------------


@pytest.mark.parametrize(
    ("match", "at"),
    [
        ("--action checkpoint", 1),  # after every process is locked
        ("checkpoint --image-path", 1),  # the save itself
        ("--action restore", 1),  # the thaw after the save
        ("--get-state --pid 11", 3),  # the verify after the freeze
    ],
    ids=["freeze", "save", "thaw", "verify"],
)
def test_an_internal_error_in_the_exec_engine_rolls_back(shim: Shim, match: str, at: int) -> None:
    shim.env["RUNSC_CUDA_ENGINE"] = "exec"
    bundle = shim.gpu_container("c1", PIDS, CUDA, status="paused")
    out = checkpoint(failing(shim, match, at), bundle, "--leave-running")
    assert out.returncode == 1, out.stderr
    error = shim.last_error(bundle)
    assert "internal error: OSError" in error and "all CUDA processes are running again" in error, error
    assert shim.cuda_states("c1") == dict.fromkeys(CUDA, "running")
    assert shim.status("c1") == "paused"


def test_an_internal_error_in_the_native_save_sweeps(shim: Shim) -> None:
    shim.env["RUNSC_CUDA_ENGINE"] = "native"
    bundle = shim.gpu_container("c1", PIDS, CUDA, status="paused")
    out = checkpoint(failing(shim, "checkpoint --image-path"), bundle, "--leave-running")
    assert out.returncode == 1, out.stderr
    assert "internal error: OSError" in shim.last_error(bundle)
    assert shim.cuda_states("c1") == dict.fromkeys(CUDA, "running")
    assert shim.status("c1") == "paused"


def test_an_internal_error_in_the_native_sweep_still_pauses_it_again(shim: Shim) -> None:
    shim.env["RUNSC_CUDA_ENGINE"] = "native"
    bundle = shim.gpu_container("c1", PIDS, CUDA, status="paused")
    # runsc dies after toggling: the sweep's own `runsc ps` then raises.
    env = {"FAKE_RUNSC_FAULTS": json.dumps([{"verb": "checkpoint", "fault": "die", "when": "after-toggle"}])}
    out = checkpoint(failing(shim, "ps --format json"), bundle, "--leave-running", env=env)
    assert out.returncode == 1, out.stderr
    error = shim.last_error(bundle)
    assert "could not check the CUDA processes: internal error: OSError" in error, error
    assert shim.status("c1") == "paused"


def test_an_internal_error_in_a_restore_thaw_is_retried(shim: Shim) -> None:
    shim.env["RUNSC_CUDA_ENGINE"] = "exec"
    bundle = shim.gpu_container("c1", PIDS, CUDA, status="paused")
    assert checkpoint(shim, bundle).returncode == 0
    assert shim.run("delete", "c1").returncode == 0
    out = failing(shim, "--action restore").docker_restore(bundle, shim.tmp / "image")
    assert out.returncode == 0, shim.last_error(bundle)
    assert shim.cuda_states("c1") == dict.fromkeys(CUDA, "running")
    warnings = [e["msg"] for e in shim.log_entries(bundle) if e.get("level") == "warning"]
    assert any("internal error: OSError" in w and "thawed on the second try" in w for w in warnings), warnings


# --- item 5: a CUDA process started during the freeze ----------------------------------------


def test_a_cuda_process_started_during_the_freeze_is_frozen_too(shim: Shim) -> None:
    shim.env["RUNSC_CUDA_ENGINE"] = "exec"
    bundle = shim.gpu_container("c1", PIDS, CUDA, status="paused")
    spawn = cuda_faults({"pid": 11, "op": "checkpoint", "fault": "spawn", "new_pid": 20})
    out = checkpoint(shim, bundle, env=spawn)
    assert out.returncode == 0, shim.last_error(bundle)
    saved = json.loads((shim.tmp / "image" / "checkpoint.img").read_text())
    assert saved["cuda"] == {"10": "checkpointed", "11": "checkpointed", "20": "checkpointed"}
    record = json.loads((shim.tmp / "image" / "runsc-cuda.json").read_text())
    assert [p["pid"] for p in record["cuda_processes"]] == [10, 11, 20]


def test_a_cuda_process_started_during_the_freeze_is_thawed_with_leave_running(shim: Shim) -> None:
    shim.env["RUNSC_CUDA_ENGINE"] = "exec"
    bundle = shim.gpu_container("c1", PIDS, CUDA, status="paused")
    spawn = cuda_faults({"pid": 10, "op": "lock", "fault": "spawn", "new_pid": 20})
    out = checkpoint(shim, bundle, "--leave-running", env=spawn)
    assert out.returncode == 0, shim.last_error(bundle)
    assert shim.cuda_states("c1") == {10: "running", 11: "running", 20: "running"}
    assert shim.status("c1") == "paused"


def test_a_newcomer_that_cannot_be_frozen_fails_with_everything_thawed(shim: Shim) -> None:
    shim.env["RUNSC_CUDA_ENGINE"] = "exec"
    bundle = shim.gpu_container("c1", PIDS, CUDA, status="paused")
    env = cuda_faults(
        {"pid": 11, "op": "checkpoint", "fault": "spawn", "new_pid": 20},
        {"pid": 20, "op": "checkpoint", "fault": "fail"},
    )
    out = checkpoint(shim, bundle, env=env)
    assert out.returncode == 1
    error = shim.last_error(bundle)
    assert "PID 20" in error and "all CUDA processes are running again" in error, error
    assert shim.cuda_states("c1") == {10: "running", 11: "running", 20: "running"}
    assert shim.status("c1") == "paused"
    assert not (shim.tmp / "image" / "checkpoint.img").exists()


# --- item 4: the disk fills as the sidecar is written after the save ------------------------------


@pytest.mark.parametrize("engine", ["exec", "native"])
def test_a_full_disk_after_a_stopping_save_leaves_an_image_that_restores(shim: Shim, engine: str) -> None:
    shim.env["RUNSC_CUDA_ENGINE"] = engine
    bundle = shim.gpu_container("c1", PIDS, CUDA, status="paused")
    out = checkpoint(failing(shim, full_at_write=2), bundle)  # the provisional record is written, the final one not
    assert out.returncode == 1
    error = shim.last_error(bundle)
    assert "No space left on device" in error and "the container was stopped" in error, error
    assert shim.status("c1") == "stopped"
    record = json.loads((shim.tmp / "image" / "runsc-cuda.json").read_text())
    assert record["engine"] == engine
    assert shim.run("delete", "c1").returncode == 0
    out = shim.docker_restore(bundle, shim.tmp / "image")
    assert out.returncode == 0, shim.last_error(bundle)
    assert shim.cuda_states("c1") == dict.fromkeys(CUDA, "running")


def test_a_failed_save_leaves_no_record(shim: Shim) -> None:
    shim.env["RUNSC_CUDA_ENGINE"] = "exec"
    bundle = shim.gpu_container("c1", PIDS, CUDA, status="paused")
    env = {"FAKE_RUNSC_FAULTS": json.dumps([{"verb": "checkpoint", "fault": "fail"}])}
    out = checkpoint(shim, bundle, "--leave-running", env=env)
    assert out.returncode == 1
    assert not (shim.tmp / "image" / "runsc-cuda.json").exists()
    assert shim.cuda_states("c1") == dict.fromkeys(CUDA, "running")


def test_a_full_disk_before_the_save_fails_with_everything_thawed(shim: Shim) -> None:
    shim.env["RUNSC_CUDA_ENGINE"] = "exec"
    bundle = shim.gpu_container("c1", PIDS, CUDA, status="paused")
    out = checkpoint(failing(shim, full_at_write=1), bundle)
    assert out.returncode == 1
    assert "all CUDA processes are running again" in shim.last_error(bundle)
    assert shim.status("c1") == "paused" and shim.cuda_states("c1") == dict.fromkeys(CUDA, "running")
    assert not (shim.tmp / "image" / "checkpoint.img").exists()


# --- item 1: runsc-cuda killed with SIGKILL mid-checkpoint ------------------------------------------


def records(shim: Shim) -> list[Path]:
    folder = Path(shim.env["RUNSC_CUDA_STATE_DIR"]) / "frozen"
    return sorted(folder.glob("*.json")) if folder.is_dir() else []


def kill_at_save(seconds: float = 0) -> dict[str, str]:
    """SIGKILL runsc-cuda as its `runsc checkpoint` starts (the save goes on for ``seconds``)."""
    plan = {"verb": "checkpoint", "fault": "signal", "signal": "KILL", "seconds": seconds}
    return {"FAKE_RUNSC_FAULTS": json.dumps([plan])}


def guardian_line(shim: Shim, bundle: Path) -> str:
    lines = [
        str(e.get("msg", "")) for e in shim.log_entries(bundle) if "was killed before it finished" in e.get("msg", "")
    ]
    return lines[-1] if lines else ""


@pytest.mark.parametrize("engine", ["exec", "native"])
def test_killed_mid_checkpoint_then_dockers_resume_ends_with_cuda_running(shim: Shim, engine: str) -> None:
    """containerd's shim SIGKILLs runsc-cuda on a timeout; Docker's next call is `resume` (a pass-through)."""
    shim.env["RUNSC_CUDA_ENGINE"] = engine
    bundle = shim.gpu_container("c1", PIDS, CUDA, status="paused")
    out = checkpoint(shim, bundle, "--leave-running", env=kill_at_save())
    assert out.returncode == -9
    assert shim.docker(bundle, "resume", "c1").returncode == 0
    wait_for(lambda: not records(shim) and guardian_line(shim, bundle))
    assert shim.cuda_states("c1") == dict.fromkeys(CUDA, "running")
    assert shim.status("c1") == "running"
    if engine == "exec":  # the native engine's save went on to thaw them itself (runsc was not killed)
        assert "runsc-cuda thawed them" in guardian_line(shim, bundle)


def test_killed_mid_checkpoint_without_a_resume_keeps_the_pause(shim: Shim) -> None:
    shim.env["RUNSC_CUDA_ENGINE"] = "exec"
    bundle = shim.gpu_container("c1", PIDS, CUDA, status="paused")
    assert checkpoint(shim, bundle, "--leave-running", env=kill_at_save()).returncode == -9
    wait_for(lambda: not records(shim) and guardian_line(shim, bundle))
    assert shim.cuda_states("c1") == dict.fromkeys(CUDA, "running")
    assert shim.status("c1") == "paused"
    assert "runsc-cuda thawed them" in guardian_line(shim, bundle)


def test_the_guardian_waits_for_the_orphaned_save_before_it_thaws(shim: Shim) -> None:
    shim.env["RUNSC_CUDA_ENGINE"] = "exec"
    bundle = shim.gpu_container("c1", PIDS, CUDA, status="paused")
    assert checkpoint(shim, bundle, "--leave-running", env=kill_at_save(seconds=2)).returncode == -9
    wait_for(lambda: not records(shim) and guardian_line(shim, bundle))
    saved = json.loads((shim.tmp / "image" / "checkpoint.img").read_text())
    assert saved["cuda"] == {"10": "checkpointed", "11": "checkpointed"}  # saved frozen: thawed only after
    assert shim.cuda_states("c1") == dict.fromkeys(CUDA, "running")


def test_a_stopping_checkpoint_killed_after_its_save_leaves_an_image_that_restores(shim: Shim) -> None:
    shim.env["RUNSC_CUDA_ENGINE"] = "exec"
    bundle = shim.gpu_container("c1", PIDS, CUDA, status="paused")
    assert checkpoint(shim, bundle, env=kill_at_save(seconds=1)).returncode == -9
    wait_for(lambda: not records(shim) and guardian_line(shim, bundle))
    assert shim.status("c1") == "stopped"
    assert shim.run("delete", "c1").returncode == 0
    assert shim.docker_restore(bundle, shim.tmp / "image").returncode == 0, shim.last_error(bundle)
    assert shim.cuda_states("c1") == dict.fromkeys(CUDA, "running")


def test_a_leftover_record_is_recovered_by_the_next_checkpoint(shim: Shim) -> None:
    """The guardian was killed too: the next checkpoint of the container thaws first (native engine:
    runsc would otherwise toggle the frozen processes the wrong way)."""
    from runsc_cuda.engines.guard import record_path

    shim.env["RUNSC_CUDA_ENGINE"] = "native"
    bundle = shim.gpu_container("c1", PIDS, CUDA, status="paused")
    (shim.root / "c1" / "cuda.json").write_text(json.dumps({"10": "checkpointed", "11": "locked"}))
    path = Path(record_path(shim.env["RUNSC_CUDA_STATE_DIR"], str(shim.root), "c1"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"container": "c1", "root": str(shim.root), "engine": "native", "token": "x"}))
    out = checkpoint(shim, bundle, "--leave-running")
    assert out.returncode == 0, shim.last_error(bundle)
    assert "an earlier runsc-cuda was killed" in " ".join(str(e.get("msg")) for e in shim.log_entries(bundle))
    saved = json.loads((shim.tmp / "image" / "checkpoint.img").read_text())
    assert saved["cuda"] == {"10": "checkpointed", "11": "checkpointed"}
    assert shim.cuda_states("c1") == dict.fromkeys(CUDA, "running") and not path.exists()


def test_a_finished_checkpoint_leaves_no_record_and_no_guardian(shim: Shim) -> None:
    shim.env["RUNSC_CUDA_ENGINE"] = "exec"
    bundle = shim.gpu_container("c1", PIDS, CUDA, status="paused")
    bad = {"FAKE_CUDA_FAULTS": json.dumps([{"pid": 11, "op": "checkpoint", "fault": "fail"}])}
    assert checkpoint(shim, bundle, "--leave-running", env=bad).returncode == 1
    assert checkpoint(shim, bundle, "--leave-running").returncode == 0
    assert records(shim) == []
    time.sleep(0.5)
    assert guardian_line(shim, bundle) == ""
