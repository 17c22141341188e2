"""One test per defect the reliability suites found (each fixed in the same change).

The suites (test_reliability_*.py) find them by the hundred; these pin each
cause down with the smallest case that shows it.
"""

from __future__ import annotations

import json
from pathlib import Path

from test_restore import docker_restore, stopped_image

from runsc_cuda.freeze import ROLLBACK_TRIES, Freezer, Timeouts
from runsc_cuda.runner import Result

from conftest import Shim

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
    assert not (shim.tmp / "image" / "runsc-cuda.json").exists()


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
    out = docker_restore(shim, bundle, image, env=faults({"verb": "restore", "fault": "signal"}))
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
    out = docker_restore(shim, bundle, image, env=faults({"verb": "restore", "fault": "die"}))
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
    assert not (shim.tmp / "image" / "runsc-cuda.json").exists()
