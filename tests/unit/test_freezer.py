"""The Freezer through its caller protocol: a strict cuda-checkpoint state machine per process.

The fake answers as NVIDIA's tool does (driver 555+): ``--get-state`` prints the
state of a CUDA process and fails for any other PID; an action is legal only
from its state (lock: running, checkpoint: locked, restore: checkpointed,
unlock: locked) and fails, changing nothing, from any other; ``--toggle``
flips running <-> checkpointed.  Faults make one call fail, lie (exit 0 with
no effect), print nonsense, not run at all, or outlive its timeout.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from runsc_cuda.cuda.freezer import Freezer, Interrupted, StepError, Timeouts
from runsc_cuda.runner import Result

LEGAL = {"lock": ("running", "locked"), "checkpoint": ("locked", "checkpointed"),
         "restore": ("checkpointed", "locked"), "unlock": ("locked", "running")}  # fmt: skip


@dataclass
class FakeSandbox:
    """CUDA processes by sandbox PID; other PIDs are not CUDA processes."""

    states: dict[int, str]
    faults: dict[tuple[str, int], str] = field(default_factory=dict)  # (op, pid) -> fail|lie|nonsense|no-run|hang
    calls: list[tuple[str, int]] = field(default_factory=list)
    outstanding: int = 0  # abandoned calls still running
    ever_abandoned: int = 0
    waited: list[int] = field(default_factory=list)  # len(calls) when wait_abandoned was called

    def cuda(self, args: list[str], timeout: float) -> Result:
        pid = int(args[args.index("--pid") + 1])
        op = args[1] if args[0] == "--action" else args[0].lstrip("-")
        self.calls.append((op, pid))
        fault = self.faults.pop((op, pid), None)
        if fault == "hang":
            self.ever_abandoned += 1
            self.outstanding += 1
            return Result(tuple(args), None, b"", b"", timeout, timed_out=True)
        if fault == "no-run":
            return Result(tuple(args), 128, b"", b"runsc: exec failed", 0.0)
        if fault == "nonsense":
            return Result(tuple(args), 0, b"\x1b[31mfrozen?\n", b"", 0.0)
        state = self.states.get(pid)
        if op == "get-state":
            if state is None:
                return Result(tuple(args), 1, b"", b"Could not get state: process does not exist", 0.0)
            return Result(tuple(args), 0, f"{state}\n".encode(), b"", 0.0)
        if fault == "fail":
            return Result(tuple(args), 2, b"", b"injected failure", 0.0)
        if fault == "lie":
            return Result(tuple(args), 0, b"", b"", 0.0)
        if state is None:
            return Result(tuple(args), 3, b"", b"not a CUDA process", 0.0)
        if op == "toggle":
            flipped = {"running": "checkpointed", "checkpointed": "running"}.get(state)
            if flipped is None:
                return Result(tuple(args), 4, b"", b"illegal state", 0.0)
            self.states[pid] = flipped
            return Result(tuple(args), 0, b"", b"", 0.0)
        before, after = LEGAL[op]
        if state != before:
            return Result(tuple(args), 4, b"", f"illegal state {state} for {op}".encode(), 0.0)
        self.states[pid] = after
        return Result(tuple(args), 0, b"", b"", 0.0)

    def abandoned(self) -> int:
        return self.ever_abandoned

    def wait_abandoned(self, timeout: float) -> int:
        self.waited.append(len(self.calls))
        self.outstanding = 0  # they finished while we waited
        return 0


def freezer_for(box: FakeSandbox, **kw: object) -> Freezer:
    return Freezer(box, Timeouts(500, 1.0), max_parallel=1, **kw)  # type: ignore[arg-type]


# --- discover --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("states", "pids", "faults", "found", "error"),
    [
        ({10: "running", 11: "locked"}, [1, 10, 11], {}, {10: "running", 11: "locked"}, None),
        ({}, [1, 2], {}, {}, None),
        ({10: "running"}, [1, 10], {("get-state", 10): "no-run"}, None, "PID 10: the probe did not run"),
        ({10: "running"}, [10], {("get-state", 10): "hang"}, None, "PID 10: timed out"),
        ({10: "running"}, [10], {("get-state", 10): "nonsense"}, None, "PID 10: unexpected output"),
        ({10: "failed"}, [10], {}, None, "PID 10: process is in state failed"),
    ],
    ids=["cuda-and-not", "none", "probe-did-not-run", "probe-timed-out", "nonsense", "failed-state"],
)
def test_discover_probes_every_pid_and_refuses_to_guess(
    states: dict[int, str], pids: list[int], faults: dict, found: dict | None, error: str | None
) -> None:
    box = FakeSandbox(dict(states), dict(faults))
    freezer = freezer_for(box)
    if error is None:
        assert freezer.discover(pids) == found
    else:
        with pytest.raises(StepError) as e:
            freezer.discover(pids)
        assert error in str(e.value)
    assert {op for op, _ in box.calls} == {"get-state"}  # nothing is locked while probing


# --- freeze and thaw --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "toggle_only", "ops"),
    [
        ({10: "running", 11: "running"}, False, ["lock", "lock", "checkpoint", "checkpoint"]),
        ({10: "locked", 11: "running"}, False, ["lock", "checkpoint", "checkpoint"]),
        ({10: "checkpointed"}, False, []),
        ({10: "running", 11: "running"}, True, ["toggle", "toggle"]),
    ],
    ids=["from-running", "one-already-locked", "already-checkpointed", "driver-550-toggle"],
)
def test_freeze_locks_all_then_checkpoints_all_and_verifies(
    start: dict[int, str], toggle_only: bool, ops: list[str]
) -> None:
    box = FakeSandbox(dict(start))
    freezer = freezer_for(box, toggle_only=toggle_only)
    freezer.freeze(dict(start))
    assert box.states == dict.fromkeys(start, "checkpointed")
    assert [op for op, _ in box.calls if op != "get-state"] == ops
    assert [op for op, _ in box.calls][-len(start) :] == ["get-state"] * len(start)  # verified last


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("fail", "cuda-checkpoint checkpoint failed for PID 11: exit status 2: injected failure"),
        ("lie", "PID 11: in state locked, expected checkpointed"),
    ],
)
def test_a_freeze_that_fails_or_lies_is_an_error(fault: str, message: str) -> None:
    box = FakeSandbox({10: "running", 11: "running"}, {("checkpoint", 11): fault})
    with pytest.raises(StepError) as e:
        freezer_for(box).freeze({10: "running", 11: "running"})
    assert message in str(e.value)


def test_thaw_restores_all_then_unlocks_all_and_verifies() -> None:
    box = FakeSandbox({10: "checkpointed", 11: "checkpointed"})
    freezer_for(box).thaw({10: "checkpointed", 11: "checkpointed"})
    assert box.states == {10: "running", 11: "running"}
    assert [op for op, _ in box.calls] == ["restore", "restore", "unlock", "unlock", "get-state", "get-state"]


def test_a_thaw_that_lies_is_an_error() -> None:
    box = FakeSandbox({10: "checkpointed"}, {("unlock", 10): "lie"})
    with pytest.raises(StepError, match="PID 10: in state locked, expected running"):
        freezer_for(box).thaw({10: "checkpointed"})


def test_a_stop_request_ends_the_freeze_between_steps() -> None:
    box = FakeSandbox({10: "running"})
    freezer = freezer_for(box, interrupted=lambda: True)
    with pytest.raises(Interrupted):
        freezer.freeze({10: "running"})
    assert box.calls == []


# --- looking and recovering -------------------------------------------------------------------


def test_frozen_lists_locked_and_checkpointed_and_says_what_it_could_not_read() -> None:
    box = FakeSandbox({10: "locked", 11: "checkpointed", 12: "running"}, {("get-state", 13): "no-run"})
    assert freezer_for(box).frozen([1, 10, 11, 12, 13]) == ([10, 11], {13: "the query did not run (exit status 128: "
                                                                         "runsc: exec failed)"})  # fmt: skip


@pytest.mark.parametrize(
    ("start", "ops"),
    [
        ("running", []),
        ("locked", ["unlock"]),
        ("checkpointed", ["restore", "unlock"]),
    ],
)
def test_rollback_brings_a_process_back_to_running_from_any_state(start: str, ops: list[str]) -> None:
    box = FakeSandbox({10: start})
    assert freezer_for(box).rollback([10]) == {}
    assert box.states == {10: "running"}
    assert [op for op, _ in box.calls if op != "get-state"] == ops


def test_rollback_of_a_process_that_is_gone_is_not_a_problem() -> None:
    box = FakeSandbox({})
    assert freezer_for(box).rollback([10]) == {}


def test_recover_waits_for_abandoned_calls_before_it_looks() -> None:
    """A lock that outlived its timeout may still land: recover waits (never kills), then queries and thaws."""
    box = FakeSandbox({10: "running", 11: "running"}, {("lock", 11): "hang"})
    freezer = freezer_for(box)
    with pytest.raises(StepError):
        freezer.freeze({10: "running", 11: "running"})
    box.states[11] = "locked"  # the abandoned lock landed after its timeout
    calls_before = len(box.calls)
    assert freezer.recover([10, 11]) == {}
    assert box.waited == [calls_before]  # waited before any further call
    assert box.states == {10: "running", 11: "running"}


def test_recover_reports_calls_still_running_after_the_wait() -> None:
    box = FakeSandbox({10: "locked"}, {("get-state", 99): "hang"})
    box.cuda(["--get-state", "--pid", "99"], 1.0)
    box.wait_abandoned = lambda timeout: 1  # type: ignore[method-assign]
    assert freezer_for(box).recover([10]) == {0: "1 cuda-checkpoint call(s) still running"}
    assert box.states == {10: "running"}


@pytest.mark.parametrize("start", ["running", "locked", "checkpointed"])
def test_rollback_of_an_unknown_state_still_restores_then_unlocks(start: str) -> None:
    """A query whose answer was lost (a full disk once hid every one) is no reason to leave a
    process frozen: restore, then unlock (a running process refuses both harmlessly)."""
    box = FakeSandbox({10: start}, {("get-state", 10): "no-run"})
    assert freezer_for(box).rollback([10]) == {}
    assert box.states == {10: "running"}
    assert [op for op, _ in box.calls if op != "get-state"] == ["restore", "unlock"]


def test_rollback_that_never_learns_the_state_says_so() -> None:
    box = FakeSandbox({10: "checkpointed"})
    box.cuda = lambda args, timeout: Result(tuple(args), 128, b"", b"runsc: exec failed", 0.0)  # type: ignore[method-assign]
    problems = freezer_for(box).rollback([10])
    assert problems[10].startswith("state unknown (the query did not run")


def test_rollback_never_toggles_blindly() -> None:
    """With only --toggle, an action on an unknown state could freeze a running process."""
    box = FakeSandbox({10: "running"}, {("get-state", 10): "no-run"})
    assert freezer_for(box, toggle_only=True).rollback([10])[10].startswith("state unknown")
    assert box.states == {10: "running"} and [op for op, _ in box.calls if op != "get-state"] == []
