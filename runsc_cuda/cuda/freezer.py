"""The exec engine: freezing and thawing CUDA processes inside a sandbox with cuda-checkpoint.

Rules (NVIDIA cuda-checkpoint; docs/design.md, "The freeze rules"):
- probe every candidate with ``--get-state`` *before* locking any (a call on one
  process while a coupled one is locked can hang); the ones that answer are CUDA
  processes;
- lock all, then checkpoint all; calls for different processes run in parallel
  (each initialises CUDA: 0.4-7 s), every call with its own timeout;
- after any failure, query each process again and bring it back to running
  (checkpointed -> restore -> unlock, locked -> unlock);
- never kill a cuda-checkpoint mid-operation: a call that outlives its timeout
  is abandoned, and its process re-checked once it is done.

PIDs are sandbox PIDs (``runsc ps``), never host PIDs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from runsc_cuda import words
from runsc_cuda.cuda import protocol
from runsc_cuda.runner import Result

T = TypeVar("T")
R = TypeVar("R")


class CudaCaller(Protocol):
    """Runs cuda-checkpoint in the sandbox (``runsc exec``); a call past its timeout is abandoned, not killed."""

    def cuda(self, args: list[str], timeout: float) -> Result: ...

    def abandoned(self) -> int:
        """How many calls outlived their timeout so far."""
        ...

    def wait_abandoned(self, timeout: float) -> int:
        """Wait up to ``timeout`` for the abandoned calls to end; how many are still running."""
        ...


@dataclass(frozen=True)
class Timeouts:
    lock_ms: int
    call_s: float

    @property
    def lock_call_s(self) -> float:
        return self.lock_ms / 1000.0 + self.call_s


class StepError(Exception):
    """One or more cuda-checkpoint calls of a step failed."""

    def __init__(self, step: str, failures: dict[int, str]) -> None:
        self.step = step
        self.failures = dict(sorted(failures.items()))
        detail = "; ".join(f"PID {pid}: {why}" for pid, why in self.failures.items())
        super().__init__(f"cuda-checkpoint {step} failed for {detail}")


class Interrupted(Exception):
    """runsc-cuda was asked to stop (SIGTERM/SIGINT) between two steps."""


ROLLBACK_TRIES = 3  # rounds of (query, thaw actions) per process before rollback gives up on it


def gone(why: str) -> bool:
    """Whether a failed ``--get-state`` says the process no longer exists (nothing left to thaw)."""
    return words.says_gone(why, words.CUDA_PROCESS_GONE)


@dataclass(frozen=True)
class Reading:
    """What one ``--get-state`` call told: a state, or why there is none.

    ``state`` is set when cuda-checkpoint printed one.  Otherwise ``unknown``
    says why nobody could tell (the call timed out, did not run, or printed
    nonsense) and is empty when cuda-checkpoint answered with a failure: a
    process with no CUDA state (not a CUDA process, or gone; ``refusal`` has
    its words).
    """

    state: str | None
    unknown: str = ""
    refusal: str = ""
    timed_out: bool = False

    @property
    def why(self) -> str:
        return self.unknown or self.refusal


@dataclass
class Phase:
    name: str
    seconds: float
    pids: list[int]


@dataclass
class Freezer:
    """Runs cuda-checkpoint for many processes of one sandbox, in parallel."""

    sandbox: CudaCaller
    timeouts: Timeouts
    clock: Callable[[], float] = time.monotonic
    interrupted: Callable[[], bool] = lambda: False
    toggle_only: bool = False
    max_parallel: int = 64
    phases: list[Phase] = field(default_factory=list)

    # --- plumbing -----------------------------------------------------------------

    def _parallel(self, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
        if len(items) <= 1 or self.max_parallel <= 1:
            return [fn(item) for item in items]
        with ThreadPoolExecutor(max_workers=min(len(items), self.max_parallel)) as pool:
            return list(pool.map(fn, items))

    def timed(self, name: str, pids: list[int], fn: Callable[[], T]) -> T:
        """Run ``fn`` as the phase ``name`` (its duration and PIDs are recorded)."""
        return self._timed(name, pids, fn)

    def timings(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for phase in self.phases:
            out[phase.name] = out.get(phase.name, 0.0) + phase.seconds
        return out

    def last(self, name: str) -> Phase | None:
        for phase in reversed(self.phases):
            if phase.name == name:
                return phase
        return None

    def _timed(self, name: str, pids: list[int], fn: Callable[[], T]) -> T:
        start = self.clock()
        try:
            return fn()
        finally:
            self.phases.append(Phase(name, self.clock() - start, list(pids)))

    def check_interrupt(self) -> None:
        if self.interrupted():
            raise Interrupted()

    def _call(self, pid: int, name: str) -> str | None:
        """Run one action; None on success, else why it failed."""
        if self.toggle_only:
            result = self.sandbox.cuda(protocol.toggle(pid), self.timeouts.call_s)
        elif name == "lock":
            result = self.sandbox.cuda(protocol.action("lock", pid, self.timeouts.lock_ms), self.timeouts.lock_call_s)
        else:
            result = self.sandbox.cuda(protocol.action(name, pid), self.timeouts.call_s)
        return None if result.ok else result.describe()

    def read_state(self, pid: int, call: str = "query") -> Reading:
        """One ``--get-state`` of ``pid``, classified (``call`` names it in the reasons)."""
        result = self.sandbox.cuda(protocol.get_state(pid), self.timeouts.call_s)
        if result.timed_out:
            return Reading(None, "timed out", timed_out=True)
        if not result.answered:  # runsc exec failed, or was killed: cuda-checkpoint never answered
            return Reading(None, f"the {call} did not run ({result.describe()})")
        if not result.ok:
            return Reading(None, refusal=result.describe())
        state = protocol.parse_state(result.stdout)
        if state is None:
            return Reading(None, f"unexpected output {result.stdout[:60]!r}")
        return Reading(state)

    def query(self, pid: int) -> tuple[str | None, str]:
        """(state, '') or (None, why the state could not be read)."""
        reading = self.read_state(pid)
        return reading.state, reading.why

    # --- the steps ------------------------------------------------------------------

    def discover(self, pids: list[int]) -> dict[int, str]:
        """Probe every PID (in parallel, nothing locked yet); the CUDA ones and their states."""

        def probe(pid: int) -> tuple[int, str | None, str]:
            reading = self.read_state(pid, "probe")
            return pid, reading.state, reading.unknown  # a refusal: not a CUDA process

        def run() -> dict[int, str]:
            found: dict[int, str] = {}
            problems: dict[int, str] = {}
            for pid, state, problem in self._parallel(probe, pids):
                if problem:
                    problems[pid] = problem
                elif state is not None:
                    found[pid] = state
            if problems:
                raise StepError("--get-state", problems)
            return found

        found = self._timed("discover", pids, run)
        failed = {pid: "process is in state failed" for pid, state in found.items() if state == protocol.FAILED}
        if failed:
            raise StepError("--get-state", failed)
        return found

    def _step(self, name: str, pids: list[int]) -> None:
        if not pids:
            self.phases.append(Phase(name, 0.0, []))
            return
        self.check_interrupt()

        def run() -> None:
            outcomes = self._parallel(lambda pid: (pid, self._call(pid, name)), pids)
            failures = {pid: why for pid, why in outcomes if why is not None}
            if failures:
                raise StepError(name, failures)

        self._timed(name, pids, run)

    def freeze(self, states: dict[int, str]) -> None:
        """Bring every process to checkpointed (lock all, then checkpoint all), and check that they are."""
        if self.toggle_only:
            self._step("toggle", [p for p, s in states.items() if s == protocol.RUNNING])
        else:
            self._step("lock", [p for p, s in states.items() if s == protocol.RUNNING])
            self._step("checkpoint", [p for p, s in states.items() if s in (protocol.RUNNING, protocol.LOCKED)])
        self.verify(sorted(states), protocol.CHECKPOINTED)

    def thaw(self, states: dict[int, str]) -> None:
        """Bring every process back to running (restore all, then unlock all), and check that they are."""
        if self.toggle_only:
            self._step("toggle", [p for p, s in states.items() if s == protocol.CHECKPOINTED])
        else:
            self._step("restore", [p for p, s in states.items() if s == protocol.CHECKPOINTED])
            self._step("unlock", [p for p, s in states.items() if s in (protocol.CHECKPOINTED, protocol.LOCKED)])
        self.verify(sorted(states), protocol.RUNNING)

    def verify(self, pids: list[int], expected: str) -> None:
        """Query every process: each must be in ``expected`` (or gone).

        An action's exit status alone is not trusted: a call that exits 0
        without doing its work would otherwise let runsc save a process that
        is not checkpointed, or leave one frozen in a running container.
        """
        if not pids:
            return

        def check(pid: int) -> tuple[int, str]:
            state, why = self.query(pid)
            if state == expected or (state is None and gone(why)):
                return pid, ""
            return pid, f"in state {state}, expected {expected}" if state else f"state unknown ({why})"

        def run() -> None:
            failures = {pid: why for pid, why in self._parallel(check, pids) if why}
            if failures:
                raise StepError("--get-state", failures)

        self._timed("verify", pids, run)

    def frozen(self, pids: list[int]) -> tuple[list[int], dict[int, str]]:
        """Query every PID (in parallel): the ones locked or checkpointed now, and the ones whose
        state nobody could tell (the query did not run, or answered nonsense), with why."""

        def look(pid: int) -> tuple[int, str | None, str]:
            reading = self.read_state(pid)
            return pid, reading.state, reading.unknown  # a refusal: not a CUDA process

        frozen: list[int] = []
        unknown: dict[int, str] = {}
        for pid, state, why in self._parallel(look, pids):
            if why:
                unknown[pid] = why
            elif state in (protocol.LOCKED, protocol.CHECKPOINTED):
                frozen.append(pid)
        return sorted(frozen), dict(sorted(unknown.items()))

    def recover(self, pids: list[int]) -> dict[int, str]:
        """Bring every process of ``pids`` back to running from whatever state it is in: the one
        recovery after a failed freeze, a failed thaw, or a save runsc did not finish.

        A call that outlived its timeout may still change a state, and a call on one process
        while another is mid-operation can hang: those calls are waited for first (never
        killed), then every process is queried and thawed.  Returns what is still not running,
        by PID (0: calls that were still running after the wait).
        """
        still = self.sandbox.wait_abandoned(self.timeouts.lock_call_s) if self.sandbox.abandoned() else 0
        problems = self.rollback(pids) if pids else {}
        if still:
            problems[0] = f"{still} cuda-checkpoint call(s) still running"
        return problems

    def rollback(self, pids: list[int]) -> dict[int, str]:
        """Query each process and bring it back to running. Returns the PIDs that are not."""

        def fix(pid: int) -> tuple[int, str]:
            # A failed action says nothing certain about the state: query again, go on from there.
            problem = ""
            for attempt in range(ROLLBACK_TRIES + 1):
                state, why = self.query(pid)
                if state is None and gone(why):
                    return pid, ""
                if state == protocol.RUNNING:
                    return pid, ""
                if state == protocol.FAILED:
                    return pid, "process is in state failed"
                if attempt == ROLLBACK_TRIES or (state is None and self.toggle_only):
                    return pid, problem or (f"still {state}" if state else f"state unknown ({why})")
                if state is None:
                    # Nobody could tell (the query's output was lost, say): restore, then unlock.
                    # A running process refuses both harmlessly; a frozen one comes back.
                    problem = f"state unknown ({why})"
                    for name in protocol.THAW_FROM[protocol.CHECKPOINTED]:
                        self._call(pid, name)
                    continue
                steps = protocol.THAW_FROM[state]
                if self.toggle_only and state == protocol.CHECKPOINTED:
                    steps = ("toggle",)
                for name in steps:
                    failed = self._call(pid, name)
                    if failed is not None:
                        problem = f"{name} failed ({failed})"
                        break
            return pid, problem  # not reached

        start = self.clock()
        results = self._parallel(fix, pids)
        self.phases.append(Phase("rollback", self.clock() - start, list(pids)))
        return {pid: why for pid, why in results if why}
