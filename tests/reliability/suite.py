"""What the reliability suites share: their figures, their scale, isolated copies of a container.

Each suite counts the cases it tried and the ones where an invariant broke
("lost"), prints one line (``pytest -s`` shows it) and, when
``RUNSC_CUDA_RELIABILITY_FIGURES`` names a file, appends its figures there as a
JSON line; ``bench/reliability.py`` runs the suites and makes the README table.

``RUNSC_CUDA_RELIABILITY_SCALE`` (default 1) scales the repetitions; every
figure records the scale it ran at.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from fakes import fake_runsc
from support import Shim

T = TypeVar("T")

SCALE_ENV = "RUNSC_CUDA_RELIABILITY_SCALE"
FIGURES_ENV = "RUNSC_CUDA_RELIABILITY_FIGURES"


def scale() -> int:
    try:
        return max(1, int(os.environ.get(SCALE_ENV, "1")))
    except ValueError:
        return 1


def workers() -> int:
    """Cases run in parallel: most of their time is spent in short-lived child processes and sleeps."""
    return max(2, min(8, 2 * (os.cpu_count() or 1)))


@dataclass
class Tally:
    """The figures of one suite: cases tried, and the ones that lost an invariant (with why)."""

    suite: str
    tried: int = 0
    lost: dict[str, list[str]] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, case: str, problems: Sequence[str]) -> None:
        with self._lock:
            self.tried += 1
            if problems:
                self.lost[case] = list(problems)

    @property
    def survived(self) -> int:
        return self.tried - len(self.lost)

    def line(self) -> str:
        return f"{self.suite}: {self.tried} tried, {self.survived} survived, {len(self.lost)} lost (scale {scale()})"

    def report(self) -> None:
        """Print the figures, append them to the figures file, fail the test on any loss."""
        seconds = round(time.monotonic() - self.started, 1)
        print(f"\n{self.line()} in {seconds}s")
        path = os.environ.get(FIGURES_ENV)
        if path:
            entry = {
                "suite": self.suite,
                "tried": self.tried,
                "survived": self.survived,
                "lost": len(self.lost),
                "scale": scale(),
                "seconds": seconds,
                "notes": self.notes,
                "lost_cases": {k: v[:3] for k, v in sorted(self.lost.items())[:200]},
            }
            with open(path, "a", encoding="utf-8") as f:
                fcntl.flock(f, fcntl.LOCK_EX)
                f.write(json.dumps(entry) + "\n")
        detail = "\n".join(f"  {case}: {'; '.join(why)}" for case, why in sorted(self.lost.items())[:40])
        assert not self.lost, f"{self.line()}\n{detail}"
        assert self.tried > 0


def entry_point(shim: Shim) -> None:
    """The suites run against the Python module; against the built binary too from scale 2 (time)."""
    if shim.entry != "python" and scale() < 2:
        pytest.skip(f"the reliability suites run against the {shim.entry} from {SCALE_ENV}=2")


def in_parallel(fn: Callable[[T], None], items: Iterable[T], n: int | None = None) -> None:
    with ThreadPoolExecutor(max_workers=n or workers()) as pool:
        for _ in pool.map(fn, items):
            pass


# --- isolated copies of one container -----------------------------------------------


def case_shim(base: Shim, name: str) -> Shim:
    """A Shim with its own root, state folder and scratch space, sharing the fakes of ``base``."""
    tmp = base.tmp / "cases" / name
    tmp.mkdir(parents=True, exist_ok=True)
    env = dict(base.env)
    env["RUNSC_CUDA_STATE_DIR"] = str(tmp / "state")
    return Shim(tmp, base.bin, tmp / "root", env, base.fakes, list(base.command), base.entry)


def clone_container(template: Shim, cid: str, target: Shim) -> Path:
    """Copy container ``cid`` (its runsc state and its bundle) from ``template`` into ``target``."""
    source_bundle = template.tmp / "bundles" / cid
    bundle = target.tmp / "bundles" / cid
    shutil.copytree(source_bundle, bundle, ignore=shutil.ignore_patterns("log.json"))
    folder = target.root / cid
    shutil.copytree(
        template.root / cid, folder, ignore=shutil.ignore_patterns("*.jsonl", "cuda-faults-used.json", "*.lock")
    )
    state = json.loads((folder / "state.json").read_text())
    state["bundle"] = str(bundle)
    (folder / "state.json").write_text(json.dumps(state))
    return bundle


def lock_files(shim: Shim) -> list[Path]:
    folder = Path(shim.env["RUNSC_CUDA_STATE_DIR"]) / "locks"
    return sorted(folder.glob("*.lock")) if folder.is_dir() else []


def held_locks(shim: Shim) -> list[str]:
    """Lock files someone still holds (the kernel drops an flock with its holder)."""
    held = []
    for path in lock_files(shim):
        fd = os.open(path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            held.append(path.name)
        finally:
            os.close(fd)
    return held


def log_problems(shim: Shim, bundle: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The runtime log's entries, and what is wrong with the file as containerd reads it."""
    try:
        entries = shim.log_entries(bundle)
    except ValueError as e:
        return [], [f"log.json is not a stream of JSON objects: {e}"]
    problems = [f"log entry without level/msg: {e!r:.120}" for e in entries if "level" not in e or "msg" not in e]
    return entries, problems


def last_error(entries: list[dict[str, Any]]) -> str:
    errors = [str(e.get("msg", "")) for e in entries if e.get("level") == "error"]
    return errors[-1] if errors else ""


def processes_of(shim: Shim) -> list[int]:
    """Live processes started for ``shim``'s root (runsc-cuda, the fake runsc and its exec'd calls)."""
    marker = str(shim.root).encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{entry}/stat", "rb") as f:
                zombie = f.read().rsplit(b")", 1)[-1].split()[0] == b"Z"
        except OSError:
            continue
        if marker in cmdline and not zombie:
            found.append(int(entry))
    return found


def wait_settled(shim: Shim, seconds: float) -> list[int]:
    """Wait until every process of ``shim``'s root has ended (abandoned calls finish late); those left."""
    deadline = time.monotonic() + seconds
    while True:
        left = processes_of(shim)
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.1)


class Template:
    """One GPU container made once through runsc-cuda, copied afresh for every case (copying is cheap)."""

    def __init__(self, base: Shim, name: str, cid: str, pids: tuple[int, ...], cuda: tuple[int, ...], status: str):
        self.base = base
        self.cid = cid
        self.name = name
        self.shim = case_shim(base, f"template-{name}")
        self.bundle = self.shim.gpu_container(cid, pids, cuda, status=status)

    def fresh(self, case: str) -> tuple[Shim, Path]:
        shim = case_shim(self.base, f"{self.name}-{case}")
        return shim, clone_container(self.shim, self.cid, shim)


# --- the calls of a clean run, for the fault and crash suites ------------------------------------


@dataclass(frozen=True)
class Call:
    """One call runsc-cuda makes (or, for the native engine, one cuda-checkpoint call runsc makes)."""

    layer: str  # runsc | cuda
    verb: str  # runsc: the fake's fault verb; cuda: the operation
    match: str  # runsc: argv after the global flags
    pid: int  # cuda: the PID (-1 for --help)
    skip: int  # matching calls before this one

    @property
    def label(self) -> str:
        if self.layer == "runsc":
            return f"runsc {self.match.replace('/usr/local/bin/cuda-checkpoint', 'cc')}#{self.skip}"
        return f"cuda {self.verb} {self.pid}#{self.skip}"


def split_runsc_argv(argv: list[str]) -> tuple[str, str]:
    """(fault verb, argv after the global flags) of one recorded runsc call."""
    flags, rest = fake_runsc.GoFlags(fake_runsc.GLOBAL_BOOLS, fake_runsc.GLOBAL_VALUES).parse(list(argv))
    if fake_runsc.truthy(flags, "version"):
        return "version", "--version"
    return (rest[0] if rest else ""), " ".join(rest)


def recorded_calls(shim: Shim, native: bool, cid: str = "c1") -> list[Call]:
    """Every call of a clean run, each with how many matching calls came before it.

    The fake cuda-checkpoint counts a fault's ``skip`` over every call of that
    operation on that PID, whoever makes it: with the native engine, runsc's own
    calls (during the save) come before runsc-cuda's check after it, so they
    are counted first.
    """
    calls: list[Call] = []
    seen: dict[tuple[str, str, str, int], int] = {}

    def make(layer: str, verb: str, match: str, pid: int) -> Call:
        key = (layer, verb, match if layer == "runsc" else "", pid)
        call = Call(layer, verb, match, pid, seen.get(key, 0))
        seen[key] = seen.get(key, 0) + 1
        return call

    natives: list[Call] = []
    if native:  # the cuda-checkpoint calls runsc itself makes (not through runsc exec: another process)
        exec_pids = {entry["pid"] for entry in shim.calls()}
        path = shim.root / cid / "cuda-calls.jsonl"
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            argv = entry["argv"]
            if entry["pid"] not in exec_pids:
                op = "toggle" if "--toggle" in argv else "get-state"
                natives.append(make("cuda", op, "native", int(argv[argv.index("--pid") + 1])))
    for entry in shim.calls():
        verb, match = split_runsc_argv(entry["argv"])
        # Up to the first path of the clean run's own folder (image, bundle): the same in every copy.
        words = match.split()
        match = " ".join(itertools.takewhile(lambda w: str(shim.tmp) not in w, words))
        calls.append(make("runsc", verb, match, 0))
        words = match.split()
        if verb == "exec" and "--help" in words:
            calls.append(make("cuda", "help", "", -1))
        elif verb == "exec":
            op = words[words.index("--action") + 1] if "--action" in words else words[3].lstrip("-")
            calls.append(make("cuda", op, "", int(words[words.index("--pid") + 1])))
    return calls + natives
