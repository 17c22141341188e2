"""One test per defect the reliability suites found (each fixed in the same change).

The suites (test_reliability_*.py) find them by the hundred; these pin each
cause down with the smallest case that shows it.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

from runsc_cuda import logs
from runsc_cuda.cuda import host
from runsc_cuda.cuda.freezer import ROLLBACK_TRIES, Freezer, Timeouts
from runsc_cuda.errors import ShimError
from runsc_cuda.image import sidecar
from runsc_cuda.oci import sandbox, spec
from runsc_cuda.runner import Result

from support import Shim, foreground_restore, stopped_image, wait_for

CUDA = (10, 11)
PIDS = (1, *CUDA)


def checkpoint(shim: Shim, bundle: Path, *extra: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return shim.docker(bundle, "checkpoint", "--image-path", str(shim.tmp / "image"), *extra, "c1", env=env)


def faults(*plans: dict[str, object]) -> dict[str, str]:
    return {"FAKE_RUNSC_FAULTS": json.dumps(list(plans))}


def cuda_faults(*plans: dict[str, object]) -> dict[str, str]:
    return {"FAKE_CUDA_FAULTS": json.dumps(list(plans))}


# --- stop requests (SIGTERM) outside the exec engine's freeze ---------------------------------
# Before: runsc-cuda installed its SIGTERM handler only around the exec engine's work, so a
# SIGTERM while it looked at the container, during the native engine's runsc call or during
# a restore killed it silently (no line in log.json; a restore left CUDA processes frozen),
# and one after the last step let the checkpoint report success.


def test_sigterm_while_looking_at_the_container_fails_cleanly(shim: Shim) -> None:
    shim.env["RUNSC_CUDA_ENGINE"] = "exec"
    bundle = shim.gpu_container("c1", PIDS, CUDA, status="paused")
    out = checkpoint(shim, bundle, "--leave-running", env=faults({"verb": "state", "fault": "signal"}))
    assert out.returncode == 1, out.stderr
    assert "interrupted by SIGTERM" in shim.last_error(bundle)
    assert not any(a[:2] == ["--action", "lock"] for a in shim.cuda_calls("c1"))
    assert shim.status("c1") == "paused"


def test_sigterm_during_a_native_checkpoint_fails_cleanly(shim: Shim) -> None:
    shim.env["RUNSC_CUDA_ENGINE"] = "native"
    bundle = shim.gpu_container("c1", PIDS, CUDA, status="paused")
    out = checkpoint(shim, bundle, "--leave-running", env=faults({"verb": "checkpoint", "fault": "signal"}))
    assert out.returncode == 1, out.stderr
    assert "interrupted by SIGTERM" in shim.last_error(bundle)
    assert shim.cuda_states("c1") == dict.fromkeys(CUDA, "running")
    # runsc finished its save after the signal: the image keeps the record that restores it (issue 12).
    assert json.loads((shim.tmp / "image" / "runsc-cuda.json").read_text())["engine"] == "native"


def test_sigterm_during_the_last_step_still_fails_the_checkpoint(shim: Shim) -> None:
    shim.env["RUNSC_CUDA_ENGINE"] = "exec"
    bundle = shim.gpu_container("c1", PIDS, CUDA, status="paused")
    out = checkpoint(shim, bundle, "--leave-running", env=faults({"verb": "version", "fault": "signal"}))
    assert out.returncode == 1, out.stderr
    assert "interrupted by SIGTERM" in shim.last_error(bundle)
    assert shim.cuda_states("c1") == dict.fromkeys(CUDA, "running")
    assert shim.status("c1") == "paused"
    assert not (shim.tmp / "image" / "runsc-cuda.json").exists()


def test_sigterm_during_restore_still_thaws_and_fails(shim: Shim) -> None:
    shim.env["RUNSC_CUDA_ENGINE"] = "exec"
    bundle, image = stopped_image(shim)
    out = shim.docker_restore(bundle, image, env=faults({"verb": "restore", "fault": "signal"}))
    assert out.returncode == 1, out.stderr
    assert "interrupted by SIGTERM" in shim.last_error(bundle)
    assert shim.cuda_states("c1") == dict.fromkeys(CUDA, "running")


# --- the exec engine ---------------------------------------------------------------------------


def test_a_failed_runsc_state_is_not_a_pass_through(shim: Shim) -> None:
    """Before: a failed ``runsc state`` made runsc-cuda pass the checkpoint to runsc, which saved unfrozen CUDA."""
    shim.env["RUNSC_CUDA_ENGINE"] = "exec"
    bundle = shim.gpu_container("c1", PIDS, CUDA, status="paused")
    for fault in ("fail", "garbage", "empty"):
        out = checkpoint(shim, bundle, env=faults({"verb": "state", "fault": fault, "match": "state c1"}))
        shim.env.pop("FAKE_RUNSC_FAULTS", None)
        (shim.root / "faults-used.json").unlink()
        assert out.returncode == 1, fault
        assert shim.last_error(bundle).startswith("runsc-cuda: checkpoint of c1 failed: runsc state"), fault
        assert not any(a for a in shim.runsc_argvs() if "checkpoint" in a and "--image-path" in a), fault
        assert shim.status("c1") == "paused"


def test_a_probe_that_runsc_exec_could_not_run_is_not_a_non_cuda_process(shim: Shim) -> None:
    """Before: runsc exec's own failure (exit 128, or killed) on a probe counted as "not a CUDA process"."""
    shim.env["RUNSC_CUDA_ENGINE"] = "exec"
    bundle = shim.gpu_container("c1", PIDS, CUDA, status="paused")
    for fault in ("fail", "die"):
        plan = {"verb": "exec", "fault": fault, "match": "--get-state --pid 11"}
        out = checkpoint(shim, bundle, "--leave-running", env=faults(plan))
        (shim.root / "faults-used.json").unlink()
        assert out.returncode == 1, fault
        assert "PID 11: the probe did not run" in shim.last_error(bundle), shim.last_error(bundle)
        assert not (shim.tmp / "image" / "checkpoint.img").exists(), "saved with PID 11 unfrozen"


def test_an_action_that_exits_0_without_effect_is_caught_before_the_save(shim: Shim) -> None:
    """Before: runsc-cuda trusted exit 0: runsc saved a process that was only locked, and the container stopped."""
    shim.env["RUNSC_CUDA_ENGINE"] = "exec"
    bundle = shim.gpu_container("c1", PIDS, CUDA, status="paused")
    out = checkpoint(shim, bundle, env=cuda_faults({"pid": 11, "op": "checkpoint", "fault": "empty"}))
    assert out.returncode == 1
    assert "PID 11: in state locked, expected checkpointed" in shim.last_error(bundle)
    assert not (shim.tmp / "image" / "checkpoint.img").exists()
    assert shim.status("c1") == "paused"
    assert shim.cuda_states("c1") == dict.fromkeys(CUDA, "running")


def test_an_unlock_that_exits_0_without_effect_does_not_leave_a_process_locked(shim: Shim) -> None:
    """Before: the thaw after the save trusted exit 0 and left the process locked in a running container."""
    shim.env["RUNSC_CUDA_ENGINE"] = "exec"
    bundle = shim.gpu_container("c1", PIDS, CUDA, status="paused")
    out = checkpoint(shim, bundle, "--leave-running", env=cuda_faults({"pid": 10, "op": "unlock", "fault": "garbage"}))
    assert out.returncode == 1
    assert shim.cuda_states("c1") == dict.fromkeys(CUDA, "running")
    assert "all CUDA processes are running again" in shim.last_error(bundle)


def test_a_call_finishing_after_its_timeout_is_undone(shim: Shim) -> None:
    """Before: the rollback looked once, so a checkpoint that completed after its timeout (after the look) stayed."""
    shim.env.update(RUNSC_CUDA_ENGINE="exec", RUNSC_CUDA_CUDA_CALL_TIMEOUT_S="1")
    bundle = shim.gpu_container("c1", PIDS, CUDA, status="paused")
    plan = {"pid": 10, "op": "checkpoint", "fault": "hang", "seconds": 1.3, "then": "complete"}
    out = checkpoint(shim, bundle, "--leave-running", env=cuda_faults(plan))
    assert out.returncode == 1
    assert "all CUDA processes are running again" in shim.last_error(bundle), shim.last_error(bundle)
    assert shim.cuda_states("c1") == dict.fromkeys(CUDA, "running")


def test_an_abandoned_probe_is_waited_for_so_our_error_is_the_last_line(shim: Shim) -> None:
    """Before: runsc-cuda exited while an abandoned ``runsc exec`` still ran; its error then came after ours."""
    # Probe timeout 1 s, then up to lock_call_s = 3 s of grace; the abandoned call ends at 2.5 s.
    shim.env.update(RUNSC_CUDA_ENGINE="exec", RUNSC_CUDA_CUDA_CALL_TIMEOUT_S="1", RUNSC_CUDA_LOCK_TIMEOUT_MS="2000")
    bundle = shim.gpu_container("c1", PIDS, CUDA, status="paused")
    plan = {"verb": "exec", "fault": "hang", "seconds": 2.5, "match": "--get-state --pid 10"}
    out = checkpoint(shim, bundle, "--leave-running", env=faults(plan))
    assert out.returncode == 1
    entries = shim.log_entries(bundle)
    assert entries[-1]["level"] == "error" and entries[-1]["msg"].startswith("runsc-cuda: checkpoint of c1 failed")


class ScriptedProcess:
    """A CudaCaller for one process whose state changes behind the caller's back (a late call landing)."""

    def __init__(self, states: list[str], fail: dict[str, int]) -> None:
        self.states = list(states)  # what each --get-state answers, in turn (the last one repeats)
        self.fail = dict(fail)  # action -> how many times it fails
        self.calls: list[str] = []

    def cuda(self, args: list[str], timeout: float) -> Result:
        op = args[1] if args[0] == "--action" else args[0]
        self.calls.append(op)
        if op == "--get-state":
            state = self.states.pop(0) if len(self.states) > 1 else self.states[0]
            return Result(tuple(args), 0, state.encode() + b"\n", b"", 0.0)
        if self.fail.get(op, 0) > 0:
            self.fail[op] -= 1
            return Result(tuple(args), 145, b"", b"illegal state", 0.0)
        if op == "unlock":
            self.states = ["running"]
        return Result(tuple(args), 0, b"", b"", 0.0)


def test_rollback_queries_again_after_a_failed_action() -> None:
    """Before: the rollback acted on one look; a checkpoint landing late made its unlock fail, and it gave up."""
    proc = ScriptedProcess(["locked", "checkpointed", "locked"], {"unlock": 1})
    freezer = Freezer(proc, Timeouts(500, 1.0))
    assert freezer.rollback([10]) == {}
    assert proc.calls == ["--get-state", "unlock", "--get-state", "restore", "unlock", "--get-state"]


def test_rollback_gives_up_after_a_few_rounds_and_says_why() -> None:
    proc = ScriptedProcess(["checkpointed"], {"restore": 99})
    left = Freezer(proc, Timeouts(500, 1.0)).rollback([10])
    assert left == {10: "restore failed (exit status 145: illegal state)"}
    assert proc.calls.count("restore") == ROLLBACK_TRIES


# --- the native engine and restore -----------------------------------------------------------------


def test_runsc_dying_mid_native_checkpoint_does_not_leave_cuda_frozen(shim: Shim) -> None:
    """Before: runsc killed after its toggles left every CUDA process checkpointed in a live container."""
    shim.env["RUNSC_CUDA_ENGINE"] = "native"
    bundle = shim.gpu_container("c1", PIDS, CUDA, status="paused")
    out = checkpoint(
        shim, bundle, "--leave-running", env=faults({"verb": "checkpoint", "fault": "die", "when": "after-toggle"})
    )
    assert out.returncode == 1
    assert shim.cuda_states("c1") == dict.fromkeys(CUDA, "running")
    assert shim.status("c1") == "paused"
    assert "runsc left CUDA processes [10, 11] frozen: runsc-cuda thawed them" in shim.last_error(bundle)


def test_a_failed_native_thaw_toggle_does_not_leave_cuda_frozen(shim: Shim) -> None:
    """Before: when runsc's thaw toggle failed, its undo re-froze the others, and they stayed checkpointed."""
    shim.env["RUNSC_CUDA_ENGINE"] = "native"
    bundle = shim.gpu_container("c1", PIDS, CUDA, status="paused")
    plan = {"pid": 10, "op": "toggle", "fault": "fail", "skip": 1}
    out = checkpoint(shim, bundle, "--leave-running", env=cuda_faults(plan))
    assert out.returncode == 1
    assert shim.cuda_states("c1") == dict.fromkeys(CUDA, "running")
    assert shim.status("c1") == "paused"


def test_a_native_checkpoint_killed_for_its_timeout_does_not_leave_cuda_frozen(shim: Shim) -> None:
    shim.env.update(RUNSC_CUDA_ENGINE="native", RUNSC_CUDA_CHECKPOINT_TIMEOUT_S="2")
    bundle = shim.gpu_container("c1", PIDS, CUDA, status="running")
    plan = {"pid": 10, "op": "toggle", "fault": "hang", "seconds": 3}
    out = checkpoint(shim, bundle, "--leave-running", env=cuda_faults(plan))
    assert out.returncode == 1
    assert "runsc checkpoint: timed out" in shim.last_error(bundle)
    assert shim.cuda_states("c1") == dict.fromkeys(CUDA, "running")
    assert shim.status("c1") == "running"


def test_runsc_restore_killed_is_reported_in_the_log(shim: Shim) -> None:
    """Before: a runsc restore killed by a signal left no error in log.json (runsc wrote none)."""
    shim.env["RUNSC_CUDA_ENGINE"] = "exec"
    bundle, image = stopped_image(shim)
    out = shim.docker_restore(bundle, image, env=faults({"verb": "restore", "fault": "die"}))
    assert out.returncode == 137
    assert shim.last_error(bundle) == "runsc-cuda: restore of c1 failed: runsc restore was killed by signal 9"


def test_a_native_thaw_toggle_that_did_nothing_is_caught(shim: Shim) -> None:
    """Before: runsc trusts cuda-checkpoint's exit 0; a thaw toggle that did nothing left the process frozen."""
    shim.env["RUNSC_CUDA_ENGINE"] = "native"
    bundle = shim.gpu_container("c1", PIDS, CUDA, status="paused")
    plan = {"pid": 11, "op": "toggle", "fault": "empty", "skip": 1}
    out = checkpoint(shim, bundle, "--leave-running", env=cuda_faults(plan))
    assert out.returncode == 1
    assert "runsc checkpoint succeeded; runsc left CUDA processes [11] frozen" in shim.last_error(bundle)
    assert shim.cuda_states("c1") == dict.fromkeys(CUDA, "running")
    assert shim.status("c1") == "paused"
    # runsc saved the sandbox: its image keeps the record that restores it (issue 12).
    assert json.loads((shim.tmp / "image" / "runsc-cuda.json").read_text())["engine"] == "native"


# --- hostile input -----------------------------------------------------------------------------------


def test_error_text_from_the_sandbox_cannot_steer_a_terminal() -> None:
    """Before: cuda-checkpoint's stderr reached stderr and log.json with its escape codes."""
    result = Result(("x",), 2, b"", b"\x1b[2J\x1b]0;owned\x07bad\r\n", 0.0)
    assert result.error_text() == "?[2J?]0;owned?bad"
    assert logs.format_line("error", "a\x1b[31mb", 0.0, "json") == '{"level": "error", "msg": "a?[31mb", ' + (
        '"time": "1970-01-01T00:00:00.000000Z"}\n'
    )


def test_deeply_nested_output_is_a_clean_error_not_an_internal_one() -> None:
    """Before: json.loads raised RecursionError, which became 'internal error: RecursionError'."""
    with pytest.raises(ValueError, match="nested too deeply"):
        sandbox.parse_pids(b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(ShimError, match="unreadable output"):
        sandbox.parse_state(b"[" * 100_000, "c1")
    with pytest.raises(ShimError, match="nested too deeply"):
        sidecar.parse("[" * 100_000 + "]" * 100_000, "img/runsc-cuda.json")


def test_truncated_ps_output_is_refused(shim: Shim) -> None:
    """Before: a list followed by megabytes of blanks was cut at max_output_bytes and read as complete."""
    shim.env.update(RUNSC_CUDA_ENGINE="exec", RUNSC_CUDA_MAX_OUTPUT_BYTES="4096")
    bundle = shim.gpu_container("c1", PIDS, CUDA, status="paused")
    out = checkpoint(shim, bundle, env=faults({"verb": "ps", "fault": "output", "output": "[1]" + " " * 8192}))
    assert out.returncode == 1
    assert "runsc ps c1: unusable output: larger than 4096 bytes" in shim.last_error(bundle)


@pytest.mark.parametrize(
    "change,message",
    [
        ({"pid": -1}, "not a PID: -1"),
        ({"pid": 0}, "not a PID: 0"),
        ({"pid": 2**40}, "not a PID"),
        ({"state_saved": "$(reboot)"}, "unknown state"),
    ],
)
def test_sidecar_pids_and_states_are_checked(change: dict[str, object], message: str) -> None:
    """Before: any integer PID and any state from an image's sidecar reached cuda-checkpoint calls."""
    doc = {
        "format": 1,
        "engine": "exec",
        "gpus": [],
        "cuda_processes": [{"pid": 10, "state_saved": "checkpointed", **change}],
    }
    with pytest.raises(ShimError, match=re.escape(message)):
        sidecar.parse(json.dumps(doc), "img/runsc-cuda.json")


def test_sidecar_informational_fields_of_the_wrong_type_are_ignored() -> None:
    """Before: a list as ``timings`` or ``options`` raised AttributeError/TypeError (an internal error)."""
    doc = {"format": 1, "engine": "exec", "gpus": [], "cuda_processes": [], "timings": [1], "options": [1, 2]}
    record = sidecar.parse(json.dumps(doc), "img/runsc-cuda.json")
    assert record.timings == {} and record.options == {}


@pytest.mark.parametrize(
    "destination",
    ["usr/local/bin/cuda-checkpoint", "//usr/local/bin/cuda-checkpoint", "/usr/local/bin/./cuda-checkpoint"],
)
def test_a_mount_at_the_destination_is_found_however_it_is_spelled(destination: str) -> None:
    """Before: a relative or '//' destination was not recognised, and runsc-cuda mounted over it."""
    doc = {"mounts": [{"destination": destination, "type": "bind", "source": "/opt/mine", "options": ["ro"]}]}
    result = spec.patch(doc, "/usr/bin/cuda-checkpoint")
    assert result.doc is None and result.notes[0].level == "warning" and "does not replace" in result.notes[0].text


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root-owned files")
def test_the_host_binary_is_checked_and_mounted_by_its_real_path(tmp_path: Path) -> None:
    """Before: a symlink was mounted by its own path (it can be repointed after the check), and a file in
    a folder anyone can write to (so anyone can swap it) was trusted."""
    real = tmp_path / "real" / "cuda-checkpoint"
    real.parent.mkdir()
    real.write_text("#!/bin/sh\n")
    real.chmod(0o755)
    link = tmp_path / "cuda-checkpoint"
    link.symlink_to(real)
    found = host.find_cuda_checkpoint(str(link), {})
    assert found is not None and found.path == str(real) and found.problem is None
    real.parent.chmod(0o777)
    found = host.find_cuda_checkpoint(str(link), {})
    assert found is not None and "writable by group or others" in (found.problem or "")
    real.parent.chmod(0o1777)  # sticky, like /tmp: others cannot swap root's file
    assert host.trust_problem(str(real)) is None


def test_a_foreground_restore_does_not_hold_the_lock_while_the_container_runs(shim: Shim) -> None:
    """Before: runsc-cuda held the container's lock until a foreground restore's container exited, so
    every later checkpoint of that container waited lock_wait_s and failed."""
    shim.env.update(RUNSC_CUDA_ENGINE="exec", RUNSC_CUDA_LOCK_WAIT_S="2")
    bundle, image = stopped_image(shim)
    proc = foreground_restore(shim, bundle, image)
    try:
        wait_for(lambda: shim.cuda_states("c1") == dict.fromkeys(CUDA, "running"))
        time.sleep(0.3)
        out = shim.docker(bundle, "checkpoint", "--image-path", str(shim.tmp / "again"), "--leave-running", "c1")
        assert out.returncode == 0, shim.last_error(bundle)
    finally:
        shim.run("kill", "c1", "KILL")
        proc.wait(timeout=30)


def test_a_native_check_that_could_not_run_fails_the_checkpoint(shim: Shim) -> None:
    """Before (the check added above): a query runsc exec could not run counted as 'not frozen'."""
    shim.env["RUNSC_CUDA_ENGINE"] = "native"
    bundle = shim.gpu_container("c1", PIDS, CUDA, status="paused")
    plan = {"verb": "exec", "fault": "fail", "match": "--get-state --pid 11"}
    out = checkpoint(shim, bundle, "--leave-running", env=faults(plan))
    assert out.returncode == 1
    assert "could not check every process: PID 11: the query did not run" in shim.last_error(bundle)
    assert shim.status("c1") == "paused"


def test_a_native_check_puts_the_pause_back_even_if_pause_fails_once(shim: Shim) -> None:
    """Before: a failed pause after the check was only a warning; the container stayed running."""
    shim.env["RUNSC_CUDA_ENGINE"] = "native"
    bundle = shim.gpu_container("c1", PIDS, CUDA, status="paused")
    out = checkpoint(shim, bundle, "--leave-running", env=faults({"verb": "pause", "fault": "fail"}))
    assert out.returncode == 0, shim.last_error(bundle)
    assert shim.status("c1") == "paused"


def test_a_restore_retries_its_thaw_only_after_a_late_call_is_done(shim: Shim) -> None:
    """Before: the thaw's second try ran while a call that had timed out was still going, so the two
    raced (and the late call's outcome, or its runsc error, came after runsc-cuda's)."""
    shim.env.update(RUNSC_CUDA_ENGINE="exec")
    bundle, image = stopped_image(shim)
    shim.env.update(RUNSC_CUDA_CUDA_CALL_TIMEOUT_S="1", RUNSC_CUDA_LOCK_TIMEOUT_MS="3000")
    plan = {"pid": 10, "op": "restore", "fault": "hang", "seconds": 2, "then": "complete"}
    out = shim.docker_restore(bundle, image, env=cuda_faults(plan))
    assert out.returncode == 0, shim.last_error(bundle)
    assert shim.cuda_states("c1") == dict.fromkeys(CUDA, "running")
    calls = [json.loads(x) for x in (shim.root / "c1" / "cuda-calls.jsonl").read_text().splitlines()]
    late = next(c for c in calls if c["argv"][:4] == ["--action", "restore", "--pid", "10"] and c["code"] == 0)
    retry = [c for c in calls if c["start"] > late["start"] + 0.5]
    assert retry and min(c["start"] for c in retry) >= late["end"], "the retry started before the late call ended"
