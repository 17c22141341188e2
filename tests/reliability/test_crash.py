"""Crash safety: runsc-cuda killed with SIGKILL at many points.

- During a bundle patch: runsc-cuda runs with its file operations counted
  (os.write, fsync, rename, close, ... and mkstemp) and kills itself just
  before or just after the Nth one, for every N of a clean run. config.json
  is then the old file or the new one, never half; a new ``create`` of the
  container works and mounts cuda-checkpoint once; a later checkpoint works.
- During a checkpoint and a restore (exec engine, Docker's sequence): the fake
  runsc / cuda-checkpoint SIGKILL runsc-cuda just before or just after each
  call it makes. Right after the kill no lock is held but by the guardian
  (never by the calls it left running); Docker's next call (``resume``, a
  pass-through) follows, and once the guardian and the calls are done every
  CUDA process is running; then Docker's next attempt (pause, checkpoint
  --leave-running) works and leaves every CUDA process running; at some
  points a checkpoint that stops the container and a restore work too.

Scale 1 kills at every point before each call and after every other one, with
the restore/stop follow-up at every fourth point; scale 2 kills at every
point and follows up everywhere, and adds the native engine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from runsc_cuda.oci import spec

from suite import (
    Call,
    Tally,
    Template,
    case_shim,
    entry_point,
    held_locks,
    in_parallel,
    last_error,
    lock_files,
    log_problems,
    recorded_calls,
    scale,
    wait_settled,
)
from support import Shim, fixture_spec

CID = "c1"
CUDA = (10,) if scale() < 2 else (10, 11)  # scale 1: one CUDA process and one other (every kind of call)
PIDS = (1, *CUDA)

# runsc-cuda with its file operations counted; CRASH_AT=N kills it before/after the Nth one.
CRASHING = textwrap.dedent(
    """
    import os, signal, sys, tempfile
    at, when, count_file = int(os.environ["CRASH_AT"]), os.environ["CRASH_WHEN"], os.environ["CRASH_COUNT"]
    count = [0]

    def counted(module, name):
        real = getattr(module, name)

        def call(*args, **kw):
            count[0] += 1
            mine = count[0]  # calls inside this one (mkstemp opens a file) count after it
            if mine == at and when == "before":
                os.kill(os.getpid(), signal.SIGKILL)
            result = real(*args, **kw)
            if mine == at and when == "after":
                os.kill(os.getpid(), signal.SIGKILL)
            return result

        setattr(module, name, call)

    for name in ("open", "write", "fsync", "rename", "replace", "close", "fchmod", "fchown", "unlink"):
        counted(os, name)
    counted(tempfile, "mkstemp")
    real_execve = os.execve

    def execve(*args):
        with open(count_file, "w") as f:
            f.write(str(count[0]))
        real_execve(*args)

    os.execve = execve
    from runsc_cuda.cli import main

    sys.exit(main(["runsc-cuda", *sys.argv[1:]]))
    """
)


def big_gpu_spec() -> dict[str, Any]:
    doc = fixture_spec("gpu-devices")
    doc["annotations"] = {f"pad.example/{i}": "x" * 1000 for i in range(200)}  # a 200 kB config.json
    doc["annotations"]["test.fake-runsc/pids"] = ",".join(map(str, PIDS))
    doc["annotations"]["test.fake-runsc/cuda-pids"] = ",".join(map(str, CUDA))
    return doc


def test_sigkill_at_every_file_operation_of_a_bundle_patch(shim: Shim) -> None:
    if shim.entry != "python":
        pytest.skip("counts the file operations of the Python module")
    shim.env["RUNSC_CUDA_ENGINE"] = "native"
    doc = big_gpu_spec()
    old = json.dumps(doc, separators=(",", ":")).encode()
    new = spec.dumps(spec.patch(doc, os.path.realpath(shim.fakes["cuda-checkpoint"])).doc or {})
    counter = shim.tmp / "count"

    def create(bundle: Path, cid: str, at: int, when: str) -> subprocess.CompletedProcess[bytes]:
        env = dict(shim.env, CRASH_AT=str(at), CRASH_WHEN=when, CRASH_COUNT=str(counter))
        argv = [sys.executable, "-c", CRASHING, "--root", str(shim.root), "--log", str(bundle / "log.json")]
        argv += ["--log-format", "json", "create", "--bundle", str(bundle), cid]
        return subprocess.run(argv, env=env, capture_output=True, timeout=60, check=False)

    # The first GPU create asks runsc what it can do and keeps the answers in state_dir (more file
    # operations than any later create): count and kill the operations of a create that finds them.
    warm = shim.bundle("warm", raw=old)
    assert create(warm, "warm", 0, "never").returncode == 0
    clean = shim.bundle("clean", raw=old)
    assert create(clean, "clean", 0, "never").returncode == 0
    assert (clean / "config.json").read_bytes() == new
    points = int(counter.read_text())
    assert points >= 6, points
    tally = Tally("crash safety: SIGKILL during a bundle patch")
    tally.notes["file_operations"] = points
    outcomes = {"old": 0, "new": 0}
    cases = [(n, when) for n in range(1, points + 1) for when in ("before", "after")]

    def one(item: tuple[int, tuple[int, str]]) -> None:
        index, (at, when) = item
        cid = f"p{index}"
        bundle = shim.bundle(cid, raw=old)
        out = create(bundle, cid, at, when)
        problems = []
        if out.returncode != -9:
            problems.append(f"was not killed (exit {out.returncode})")
        now = (bundle / "config.json").read_bytes()
        if now not in (old, new):
            problems.append("config.json is neither the old nor the new file")
        else:
            outcomes["old" if now == old else "new"] += 1
        strays = [p for p in os.listdir(bundle) if p not in ("config.json", "log.json")]
        if any(not p.startswith(".config.json.") for p in strays):
            problems.append(f"unexpected files: {strays}")
        _, bad = log_problems(shim, bundle)
        problems += bad
        # The caller tries again: the container is created with one cuda-checkpoint mount, and starts.
        again = shim.docker(bundle, "create", "--bundle", str(bundle), cid)
        if again.returncode != 0:
            problems.append(f"a new create failed: {again.stderr[-200:]!r}")
        elif (bundle / "config.json").read_bytes() != new:
            problems.append("a new create did not leave the patched file")
        elif shim.run("start", cid).returncode != 0:
            problems.append("the container did not start")
        elif index % (4 // scale() or 1) == 0:
            image = shim.tmp / "images" / cid
            ck = shim.docker(bundle, "checkpoint", "--image-path", str(image), "--leave-running", cid)
            if ck.returncode != 0:
                problems.append(f"a later checkpoint failed: {last_error(shim.log_entries(bundle))[:200]!r}")
        tally.add(f"kill {when} file operation {at}", problems)

    in_parallel(one, list(enumerate(cases)))
    tally.notes["outcomes"] = outcomes
    tally.report()
    assert outcomes["old"] and outcomes["new"], outcomes


# --- SIGKILL during a checkpoint and a restore ---------------------------------------------------


def kill_plan(call: Call, when: str) -> dict[str, str]:
    """Fault env that makes the fake SIGKILL runsc-cuda just before or after ``call``."""
    fault = {"fault": "signal", "signal": "KILL", "when": when, "times": 1, "skip": call.skip}
    if call.layer == "runsc":
        return {"FAKE_RUNSC_FAULTS": json.dumps([{"verb": call.verb, "match": call.match, **fault}])}
    return {"FAKE_CUDA_FAULTS": json.dumps([{"pid": call.pid, "op": call.verb, **fault}])}


def dead_holders(case: Shim) -> list[str]:
    """Held lock files whose recorded holder is gone (the guardian holds the lock while it thaws)."""
    out = []
    for path in lock_files(case):
        deadline = time.monotonic() + 2  # a holder that has just taken it writes its PID next
        while path.name in held_locks(case):
            text = path.read_text().strip()
            if text.isdigit() and os.path.exists(f"/proc/{text}"):
                break
            if time.monotonic() > deadline:
                out.append(f"{path.name} (holder {text or '?'})")
                break
            time.sleep(0.05)
    return out


def follow_up(case: Shim, bundle: Path, index: int, with_restore: bool) -> list[str]:
    """Docker's next attempt after the crash: pause, checkpoint --leave-running, resume; maybe stop + restore."""
    problems = []
    if case.status(CID) == "running":
        case.run("pause", CID)
    image = case.tmp / f"again{index}"
    out = case.docker(bundle, "checkpoint", "--image-path", str(image), "--leave-running", CID)
    if out.returncode != 0:
        return [f"the next checkpoint failed: {last_error(case.log_entries(bundle))[:200]!r}"]
    if case.cuda_states(CID) != dict.fromkeys(CUDA, "running") or case.status(CID) != "paused":
        problems.append(f"after the next checkpoint: {case.cuda_states(CID)}, {case.status(CID)}")
    if not with_restore:
        return problems
    image = case.tmp / f"stop{index}"
    out = case.docker(bundle, "checkpoint", "--image-path", str(image), CID)
    if out.returncode != 0 or case.run("delete", CID).returncode != 0:
        return [*problems, f"a checkpoint that stops it failed: {last_error(case.log_entries(bundle))[:200]!r}"]
    args = ["restore", "--image-path", str(image), "--detach", "--bundle", str(bundle), CID]
    out = case.docker(bundle, *args)
    if out.returncode != 0:
        problems.append(f"the restore failed: {last_error(case.log_entries(bundle))[:200]!r}")
    elif case.cuda_states(CID) != dict.fromkeys(CUDA, "running"):
        problems.append(f"after the restore: {case.cuda_states(CID)}")
    return problems


def crash_cases(calls: list[Call]) -> list[tuple[Call, str]]:
    """Before and after each call. ``runsc exec`` becomes cuda-checkpoint: "after" it is the
    cuda-checkpoint call's own "after" (the next in the list)."""
    full = scale() >= 2
    out = []
    for i, call in enumerate(calls):
        for when in ("before", "after"):
            if when == "after" and call.layer == "runsc" and call.verb == "exec":
                continue
            if full or when == "before" or i % 2:
                out.append((call, when))
    return out


@pytest.mark.parametrize("engine", ["exec", "native"])
def test_sigkill_at_every_call_of_a_checkpoint(shim: Shim, engine: str) -> None:
    entry_point(shim)
    if engine == "native" and scale() < 2:
        pytest.skip("the native engine runs from RUNSC_CUDA_RELIABILITY_SCALE=2")
    shim.env.update(RUNSC_CUDA_ENGINE=engine, RUNSC_CUDA_LOCK_WAIT_S="10")
    template = Template(shim, f"crash-{engine}", CID, PIDS, CUDA, "paused")
    base, bundle = template.fresh("baseline")
    out = base.docker(bundle, "checkpoint", "--image-path", str(base.tmp / "image"), "--leave-running", CID)
    assert out.returncode == 0, out.stderr
    # The native engine's own cuda-checkpoint calls are runsc's children: killing "the caller" there is runsc.
    calls = [c for c in recorded_calls(base, native=engine == "native") if c.match != "native"]
    tally = Tally(f"crash safety: SIGKILL during a checkpoint ({engine} engine)")
    tally.notes["calls"] = len(calls)

    def one(item: tuple[int, tuple[Call, str]]) -> None:
        index, (call, when) = item
        case, bundle = template.fresh(str(index))
        args = ["checkpoint", "--image-path", str(case.tmp / "image"), "--leave-running", CID]
        out = case.docker(bundle, *args, env=kill_plan(call, when))
        problems = []
        if out.returncode != -9:
            problems.append(f"was not killed (exit {out.returncode})")
        held = dead_holders(case)  # at once: only the guardian may hold it, never a call it left running
        if held:
            problems.append(f"a lock is still held after the kill: {held}")
        # Docker's next call after a failed checkpoint is `resume` (a pass-through): CUDA ends running.
        if case.status(CID) == "paused" and case.run("resume", CID).returncode != 0 and case.status(CID) == "paused":
            problems.append("Docker's resume failed")
        if wait_settled(case, 60):
            problems.append("processes still running")
        elif case.status(CID) in ("running", "paused") and case.cuda_states(CID) != dict.fromkeys(CUDA, "running"):
            problems.append(f"after the kill and Docker's resume: {case.cuda_states(CID)}")
        _, bad = log_problems(case, bundle)
        problems += bad
        problems += follow_up(case, bundle, index, with_restore=scale() >= 2 or index % 4 == 0)
        if len(lock_files(case)) > 1:
            problems.append("more than one lock file for one container")
        tally.add(f"kill {when} {call.label}", problems)

    in_parallel(one, list(enumerate(crash_cases(calls))))
    tally.report()


def test_sigkill_at_every_call_of_a_restore(shim: Shim) -> None:
    entry_point(shim)
    shim.env.update(RUNSC_CUDA_ENGINE="exec", RUNSC_CUDA_LOCK_WAIT_S="10")
    template = Template(shim, "crash-restore", CID, PIDS, CUDA, "paused")
    image = template.shim.tmp / "image"
    assert template.shim.docker(template.bundle, "checkpoint", "--image-path", str(image), CID).returncode == 0
    assert template.shim.run("delete", CID).returncode == 0

    def fresh(name: str) -> tuple[Shim, Path]:
        target = case_shim(shim, f"crash-restore-{name}")
        bundle = target.tmp / "bundles" / CID
        shutil.copytree(template.bundle, bundle, ignore=shutil.ignore_patterns("log.json"))
        shutil.copytree(image, target.tmp / "image")
        return target, bundle

    def restore(case: Shim, bundle: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
        args = ["restore", "--image-path", str(case.tmp / "image"), "--detach", "--bundle", str(bundle), CID]
        return case.docker(bundle, *args, env=env)

    base, bundle = fresh("baseline")
    assert restore(base, bundle).returncode == 0
    # `runsc wait --restore` comes from the detached background-load watcher, after the restore
    # call has returned: there is no runsc-cuda restore left to kill at that point.
    calls = [c for c in recorded_calls(base, native=False) if c.verb != "wait"]
    tally = Tally("crash safety: SIGKILL during a restore")

    def one(item: tuple[int, tuple[Call, str]]) -> None:
        index, (call, when) = item
        case, bundle = fresh(str(index))
        out = restore(case, bundle, kill_plan(call, when))
        problems = []
        if out.returncode != -9:
            problems.append(f"was not killed (exit {out.returncode})")
        if held_locks(case):
            problems.append("a lock is still held after the kill")
        if wait_settled(case, 30):
            problems.append("processes still running")
        state = case.root / CID / "state.json"
        if state.exists():  # runsc restored it: the next checkpoint of it works and thaws everything
            problems += follow_up(case, bundle, index, with_restore=False)
        else:  # killed before runsc restored it: the caller's next restore works
            again = restore(case, bundle)
            if again.returncode != 0 or case.cuda_states(CID) != dict.fromkeys(CUDA, "running"):
                problems.append(f"the next restore failed: {last_error(case.log_entries(bundle))[:200]!r}")
        tally.add(f"kill {when} {call.label}", problems)

    in_parallel(one, list(enumerate(crash_cases(calls))))
    tally.report()


def test_a_lock_file_whose_holder_is_gone_does_not_block(shim: Shim) -> None:
    """A lock file left by a dead runsc-cuda (with its PID in it) is only a file: the next call proceeds."""
    shim.env.update(RUNSC_CUDA_ENGINE="exec", RUNSC_CUDA_LOCK_WAIT_S="1")
    bundle = shim.gpu_container(CID, PIDS, CUDA, status="paused")
    from runsc_cuda.lock import lock_path

    path = Path(lock_path(shim.env["RUNSC_CUDA_STATE_DIR"], str(shim.root), CID))
    path.parent.mkdir(parents=True, exist_ok=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path.write_text(str(dead.pid))
    start = time.monotonic()
    out = shim.docker(bundle, "checkpoint", "--image-path", str(shim.tmp / "i"), "--leave-running", CID)
    assert out.returncode == 0, shim.last_error(bundle)
    assert time.monotonic() - start < 20
