"""Fault matrix: every runsc and cuda-checkpoint call runsc-cuda makes, failing in every way it can.

For each scenario (engine x checkpoint/restore), a clean run records the calls
runsc-cuda makes (through the fake runsc's call log, and the fake
cuda-checkpoint's for the calls runsc makes itself in the native engine). Then
each call is failed once, in each way that can happen to it, on a fresh copy
of the container:

- runsc: exit 128 with an error, hang past its timeout, garbage output, empty
  output, SIGKILL mid-call (runsc dying, during save too), SIGTERM delivered to
  runsc-cuda while the call runs;
- cuda-checkpoint (inside the sandbox): non-zero exit, hang past its timeout,
  finishing only after its timeout ("late"), garbage or empty output with exit
  0, the process disappearing, SIGTERM to runsc-cuda when the call is done.

After each case, once every process it started has ended: every CUDA process
of a live container is running, the pause state is as found (or the container
was stopped by a save that happened), no lock is held, log.json is a clean
stream of JSON objects, no traceback; a success left a whole image (with its
sidecar), a failure put a clear error last in log.json and exited non-zero
(never by a signal). A fault that makes a call fail, and every SIGTERM, must
fail the checkpoint.

runsc calls whose output runsc-cuda never reads (pause, resume, the save,
restore) get no garbage/empty faults: exit 0 is their whole answer.

Scale 1 runs the Docker sequence (paused, --leave-running) of both engines
and the exec engine's restore, each call with one of its faults, rotating so
that every kind of fault meets many calls; scale N gives each call N of its
faults and, from scale 2, adds the other scenarios (a stop without
--leave-running, a container found running); scale 8 runs every pair.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from suite import (
    SCALE_ENV,
    Call,
    Tally,
    case_shim,
    clone_container,
    entry_point,
    held_locks,
    in_parallel,
    last_error,
    log_problems,
    recorded_calls,
    scale,
    split_runsc_argv,
    wait_settled,
)
from support import Shim

CID = "c1"
CUDA = (10, 11)
PIDS = (1, *CUDA)

# Short timeouts only where a call is made to hang past them (a loaded machine makes 1 s calls time
# out); every other case gets generous ones, so only the injected fault can fail it.
RUNSC_TIMEOUT = 3.0
CUDA_TIMEOUT = 3.0
LOCK_MS = 500
SAVE_TIMEOUT = 4.0
HANG_TIMEOUTS = {
    "RUNSC_CUDA_RUNSC_CALL_TIMEOUT_S": str(RUNSC_TIMEOUT),
    "RUNSC_CUDA_CUDA_CALL_TIMEOUT_S": str(CUDA_TIMEOUT),
    "RUNSC_CUDA_LOCK_TIMEOUT_MS": str(LOCK_MS),
    "RUNSC_CUDA_CHECKPOINT_TIMEOUT_S": str(SAVE_TIMEOUT),
}
TIMEOUTS = {
    "RUNSC_CUDA_RUNSC_CALL_TIMEOUT_S": "60",
    "RUNSC_CUDA_CUDA_CALL_TIMEOUT_S": "60",
    "RUNSC_CUDA_LOCK_TIMEOUT_MS": str(LOCK_MS),
    "RUNSC_CUDA_CHECKPOINT_TIMEOUT_S": "120",
    "RUNSC_CUDA_LOCK_WAIT_S": "60",
}
HANGS = {"hang", "late"}


@dataclass(frozen=True)
class Scenario:
    name: str
    engine: str  # native | exec
    verb: str  # checkpoint | restore
    leave_running: bool = True
    status: str = "paused"  # as containerd leaves it before checkpoint
    runs_at: int = 1  # the scale from which the scenario runs; each call gets (scale - runs_at + 1) of its faults


SCENARIOS = (
    Scenario("exec-checkpoint-leave-running", "exec", "checkpoint", True),
    Scenario("native-checkpoint-leave-running", "native", "checkpoint", True),
    Scenario("exec-restore", "exec", "restore"),
    Scenario("exec-checkpoint-stop", "exec", "checkpoint", False, runs_at=2),
    Scenario("native-checkpoint-stop", "native", "checkpoint", False, runs_at=2),
    Scenario("exec-checkpoint-found-running", "exec", "checkpoint", True, status="running", runs_at=2),
)


def hang_seconds(call: Call) -> float:
    """Just past the call's timeout: it is abandoned or killed, and finishes soon after."""
    if call.layer == "cuda" or call.verb == "exec":
        return (LOCK_MS / 1000 if " lock " in f" {call.match} " or call.verb == "lock" else 0) + CUDA_TIMEOUT + 1.0
    if call.verb in ("checkpoint", "restore"):
        return SAVE_TIMEOUT + 1.0
    return RUNSC_TIMEOUT + 1.0


# runsc calls whose output runsc-cuda never reads: for them exit 0 is the whole answer, and garbage
# or empty output with exit 0 would be runsc claiming work it did not do (runsc is the trusted host side).
OUTPUT_NOT_READ = {"pause", "resume", "checkpoint", "restore"}


def runsc_faults(call: Call) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {
        "fail": {"fault": "fail", "message": f"injected failure in {call.verb}"},
        "hang": {"fault": "hang", "seconds": hang_seconds(call)},
        "die": {"fault": "die"},
        "sigterm": {"fault": "signal", "signal": "TERM"},
    }
    if call.verb not in OUTPUT_NOT_READ:
        out["garbage"] = {"fault": "garbage"}
        out["empty"] = {"fault": "empty"}
    if call.verb == "checkpoint" and "--cuda-checkpoint-path" in call.match:
        out["die-after-toggle"] = {"fault": "die", "when": "after-toggle"}
    return out


def cuda_faults(call: Call) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {
        "fail": {"fault": "fail", "code": 2},
        "hang": {"fault": "hang", "seconds": hang_seconds(call)},
        "late": {"fault": "hang", "seconds": hang_seconds(call) - 0.5, "then": "complete"},
        "garbage": {"fault": "garbage"},
        "empty": {"fault": "empty"},
        "sigterm": {"fault": "signal", "signal": "TERM", "when": "after"},
    }
    if call.pid > 0:
        out["vanish"] = {"fault": "vanish"}
    return out


def fault_env(call: Call, fault: dict[str, Any]) -> dict[str, str]:
    if call.layer == "runsc":
        plan = {"verb": call.verb, "match": call.match, "skip": call.skip, "times": 1, **fault}
        return {"FAKE_RUNSC_FAULTS": json.dumps([plan])}
    plan = {"pid": call.pid, "op": call.verb, "skip": call.skip, "times": 1, **fault}
    return {"FAKE_CUDA_FAULTS": json.dumps([plan])}


def must_fail(scenario: Scenario, call: Call, name: str) -> bool:
    """Whether the fault must fail the whole call (others may also be survived by succeeding).

    A stop request always fails it. A runsc call that fails fails it, except
    ``--version`` (only recorded) and ``help`` (engine detection falls back).
    A cuda-checkpoint call that fails fails it, except ``--get-state``: a
    probe that fails means "not a CUDA process" (NVIDIA's way to find them).
    """
    if call.layer == "runsc" and call.verb == "wait":
        return False  # the background-load watcher's, a detached process, after the restore returned
    if name == "sigterm":
        return True
    if scenario.verb == "restore":
        return call.layer == "runsc" and call.verb == "restore" and name in ("fail", "die")
    if call.layer == "runsc":
        return name in ("fail", "die", "die-after-toggle") and call.verb not in ("version", "help")
    return name in ("fail", "hang", "vanish") and call.verb not in ("get-state", "help")


# --- recording the calls of a clean run --------------------------------------------------


def retried(case: Shim, call: Call, fault: str) -> bool:
    """Whether runsc-cuda made the faulted runsc call again and it worked (a look that failed once,
    then succeeded: no reason to fail the whole call)."""
    if call.layer != "runsc" or call.verb == "exec":
        return False
    codes = []
    for entry in case.calls():
        verb, match = split_runsc_argv(entry["argv"])
        if verb == call.verb and match.startswith(call.match):
            codes.append(entry["code"])
    # A killed call (die, or hang past its timeout) leaves no record; a garbage/empty one exits 0.
    successes = sum(1 for code in codes[call.skip :] if code == 0)
    return successes > (1 if fault in ("garbage", "empty", "sigterm") else 0)


# --- one case ------------------------------------------------------------------------------


@dataclass
class Outcome:
    code: int
    stderr: str
    failed_call: bool


class Matrix:
    def __init__(self, shim: Shim, scenario: Scenario) -> None:
        self.base = shim
        self.scenario = scenario
        shim.env.update(TIMEOUTS)
        shim.env["RUNSC_CUDA_ENGINE"] = scenario.engine
        self.template = case_shim(shim, f"template-{scenario.name}")
        self.template.gpu_container(CID, PIDS, CUDA, status=scenario.status)
        self.image_template: Path | None = None
        if scenario.verb == "restore":
            image = self.template.tmp / "image"
            bundle = self.template.tmp / "bundles" / CID
            out = self.template.docker(bundle, "checkpoint", "--image-path", str(image), CID)
            assert out.returncode == 0, out.stderr
            assert self.template.run("delete", CID).returncode == 0
            self.image_template = image

    def fresh(self, name: str) -> tuple[Shim, Path, Path]:
        case = case_shim(self.base, f"{self.scenario.name}-{name}")
        image = case.tmp / "image"
        if self.image_template is None:
            bundle = clone_container(self.template, CID, case)
        else:
            import shutil

            bundle = case.tmp / "bundles" / CID
            shutil.copytree(self.template.tmp / "bundles" / CID, bundle, ignore=shutil.ignore_patterns("log.json"))
            shutil.copytree(self.image_template, image)
        return case, bundle, image

    def operate(self, case: Shim, bundle: Path, image: Path, env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
        if self.scenario.verb == "restore":
            args = ["restore", "--image-path", str(image), "--work-path", str(bundle / "work"), "--detach"]
            args += ["--pid-file", str(bundle / "init.pid"), "-no-subreaper", "--bundle", str(bundle), CID]
        else:
            args = ["checkpoint", "--image-path", str(image), "--work-path", str(bundle / "work")]
            args += ["--leave-running", CID] if self.scenario.leave_running else [CID]
        return case.docker(bundle, *args, env=env, timeout=120)

    def calls(self) -> list[Call]:
        case, bundle, image = self.fresh("baseline")
        out = self.operate(case, bundle, image, {})
        assert out.returncode == 0, out.stderr
        return recorded_calls(case, self.scenario.engine == "native")

    def check(self, case: Shim, bundle: Path, image: Path, out: subprocess.CompletedProcess[bytes]) -> list[str]:
        problems: list[str] = []
        left = wait_settled(case, 20)
        if left:
            problems.append(f"{len(left)} processes still running")
        stderr = out.stderr.decode(errors="replace")
        entries, log_bad = log_problems(case, bundle)
        problems += log_bad
        if "Traceback" in stderr or any("internal error" in str(e.get("msg")) for e in entries):
            problems.append(f"traceback or internal error: {stderr[-300:]!r}")
        if out.returncode < 0:
            problems.append(f"runsc-cuda killed by signal {-out.returncode}")
        held = held_locks(case)
        if held:
            problems.append(f"locks still held: {held}")
        state_file = case.root / CID / "state.json"
        status = case.status(CID) if state_file.exists() else "gone"
        if status in ("running", "paused"):
            states = case.cuda_states(CID)
            frozen = {p: s for p, s in states.items() if s != "running"}
            if frozen:
                problems.append(f"CUDA processes not running: {frozen} (exit {out.returncode}: {stderr[-200:]!r})")
        saved = (image / "checkpoint.img").exists()
        if self.scenario.verb == "checkpoint":
            expected = self.scenario.status
            if status != expected and not (status == "stopped" and saved and not self.scenario.leave_running):
                problems.append(f"container is {status}, was {expected}")
            if out.returncode == 0 and not (saved and (image / "runsc-cuda.json").exists()):
                problems.append("exit 0 without a whole image and sidecar")
        elif out.returncode == 0 and status != "running":
            problems.append(f"restore exited 0 but the container is {status}")
        if out.returncode != 0:
            error = last_error(entries)
            if not error:
                problems.append("failed without an error in log.json")
            elif self.scenario.verb == "checkpoint" and not error.startswith(f"runsc-cuda: checkpoint of {CID} failed"):
                problems.append(f"last error is not runsc-cuda's: {error[:160]!r}")
            if not stderr.strip():
                problems.append("failed without a message on stderr")
        return problems


def plan(scenario: Scenario, calls: list[Call]) -> list[tuple[Call, str, dict[str, Any]]]:
    """Each call with a share of its faults, rotating so that every kind meets many calls (all at scale 8)."""
    cases = []
    rotation = itertools.count()
    share = scale() - scenario.runs_at + 1
    for call in calls:
        faults = runsc_faults(call) if call.layer == "runsc" else cuda_faults(call)
        names = sorted(faults)
        if share < len(names):
            start = next(rotation) * share
            names = sorted({names[(start + k) % len(names)] for k in range(share)})
        for name in names:
            cases.append((call, name, faults[name]))
    return cases


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_fault_matrix(shim: Shim, scenario: Scenario) -> None:
    entry_point(shim)
    if scale() < scenario.runs_at:
        pytest.skip(f"runs from {SCALE_ENV}={scenario.runs_at}")
    matrix = Matrix(shim, scenario)
    calls = matrix.calls()
    assert len(calls) >= 5, calls
    tally = Tally(f"fault matrix {scenario.name}")
    tally.notes["calls"] = len(calls)
    failed_cleanly = 0

    def one(item: tuple[int, tuple[Call, str, dict[str, Any]]]) -> None:
        nonlocal failed_cleanly
        index, (call, name, fault) = item
        case, bundle, image = matrix.fresh(f"{index}")
        env = fault_env(call, fault)
        if name in HANGS:
            env.update(HANG_TIMEOUTS)
        out = matrix.operate(case, bundle, image, env)
        problems = matrix.check(case, bundle, image, out)
        if must_fail(scenario, call, name) and out.returncode == 0 and not retried(case, call, name):
            problems.append("the fault did not fail the call")
        if out.returncode != 0 and not problems:
            failed_cleanly += 1
        tally.add(f"{call.label} {name}", problems)

    cases = list(enumerate(plan(scenario, calls)))
    only = os.environ.get("RUNSC_CUDA_RELIABILITY_ONLY")  # debugging: the cases whose label contains this
    if only:
        cases = [c for c in cases if only in f"{c[1][0].label} {c[1][1]}"]
    in_parallel(one, cases)
    tally.notes["failed_cleanly"] = failed_cleanly
    tally.report()
