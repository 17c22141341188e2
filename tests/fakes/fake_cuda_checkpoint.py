"""A fake NVIDIA cuda-checkpoint that keeps per-PID states with the real rules.

Forms (anything else is refused, as the real tool refuses it):
  --get-state --pid P                 prints running|locked|checkpointed|failed
  --action lock [--timeout MS] --pid P
  --action checkpoint|unlock --pid P
  --action restore [--device-map old=new,...] --pid P
  --toggle --pid P                    running -> checkpointed, checkpointed -> running
  --get-restore-tid --pid P
  --help

Legal transitions: lock needs running, checkpoint needs locked, restore needs
checkpointed, unlock needs locked.  Failures exit with the CUDA error code
mod 256 and say why on stderr.  A PID that exists but is not a CUDA process
fails every call (so --get-state is a probe); a PID that does not exist fails
with "no such process".

State lives in $FAKE_CONTAINER_DIR (set by the fake runsc's exec):
  state.json  the fake container (its "pids" are the processes that exist)
  cuda.json   {"<pid>": "<state>"} for the CUDA processes
  cuda-calls.jsonl  every call: argv, start, end, exit status

Test switches (environment):
  FAKE_CUDA_DRIVER=550      a driver without --action/--get-state (only --toggle)
  FAKE_CUDA_NO_ACTION=1     --get-state but no --action (exercises the --toggle fallback)
  FAKE_CUDA_DELAY=<s>       every call takes this long (benchmarks)
  FAKE_CUDA_FAULTS=<json>   [{"pid": 7, "op": "lock", "fault": "fail", "code": 2,
                              "state": "locked", "seconds": 5, "times": 1, "skip": 0}]
    pid:   the PID the call names (-1 or absent: any)
    op:    get-state | lock | checkpoint | restore | unlock | toggle | help | any
    times: how many matching calls get the fault (0: all); skip: let this many through first
    fault: fail     exit non-zero (after setting "state", if given)
           hang     sleep "seconds" first, then fail without changing anything
                    ("then": "complete" carries the operation out after the sleep)
           busy     GPU work pending for "seconds": lock waits up to --timeout
           vanish   the process exits: it is gone from the container
           garbage  print garbage (or "output") and exit 0 without changing anything
           empty    print nothing and exit 0 without changing anything
           output   print "output" (and "stderr"), each "repeat" times, exit "code"
                    ("output_file": print that file's bytes as well: megabytes, binary)
           signal   send "signal" (default TERM) to the caller, "when" before (default) or
                    after the call is carried out
           spawn    a process "new_pid" starts in the container (``docker exec``), a CUDA
                    process (running) unless "cuda" is false; then the call is carried out
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import sys
import time
from typing import Any, NoReturn

STATES = ("running", "locked", "checkpointed", "failed")
# CUDA error codes (cuda.h)
CUDA_ERROR_INVALID_VALUE = 1
CUDA_ERROR_NOT_INITIALIZED = 3
CUDA_ERROR_NOT_FOUND = 500
CUDA_ERROR_ILLEGAL_STATE = 401
CUDA_ERROR_TIMEOUT = 909
CUDA_ERROR_OPERATING_SYSTEM = 304

USAGE_LINES = {
    "head": "CUDA checkpoint and restore utility.\nVersion 580.159.03. Copyright (C) 2025 NVIDIA Corporation.\n\n"
    "Operations:",
    "--get-state": "--get-state --pid <pid>",
    "--action": "--action lock | checkpoint | restore | unlock --pid <pid> [--timeout <ms>] [--device-map <map>]",
    "--toggle": "--toggle --pid <pid>",
    "--get-restore-tid": "--get-restore-tid --pid <pid>",
    "--help": "--help",
}


def usage(known: set[str]) -> str:
    return "\n".join([USAGE_LINES["head"], *(v for k, v in USAGE_LINES.items() if k in known)]) + "\n"


LEGAL = {
    "lock": ("running", "locked"),
    "checkpoint": ("locked", "checkpointed"),
    "restore": ("checkpointed", "locked"),
    "unlock": ("locked", "running"),
}


class Exit(Exception):
    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def parse(argv: list[str], old_driver: bool) -> dict[str, str]:
    """Strict option parsing: every option once, each form complete."""
    opts: dict[str, str] = {}
    takes_value = {"--pid", "--action", "--timeout", "--device-map"}
    flags = {"--get-state", "--toggle", "--get-restore-tid", "--help"}
    if old_driver:
        takes_value = {"--pid"}
        flags = {"--toggle", "--help"}
    elif os.environ.get("FAKE_CUDA_NO_ACTION"):
        takes_value = {"--pid"}
        flags = {"--get-state", "--toggle", "--get-restore-tid", "--help"}
    i = 0
    while i < len(argv):
        token = argv[i]
        name, eq, value = token.partition("=")
        if name in takes_value:
            if not eq:
                if i + 1 >= len(argv):
                    raise Exit(1, f"Option {name} requires an argument\n{usage(takes_value | flags)}")
                value = argv[i + 1]
                i += 1
            opts[name] = value
        elif token in flags:
            opts[token] = ""
        else:
            raise Exit(1, f"Unrecognized option {token!r}\n{usage(takes_value | flags)}")
        i += 1
    if "--help" in opts:
        return {"--help": usage(takes_value | flags)}
    ops = [k for k in ("--get-state", "--toggle", "--get-restore-tid", "--action") if k in opts]
    if len(ops) != 1 or "--pid" not in opts:
        raise Exit(1, f"Exactly one operation and --pid are required\n{usage(takes_value | flags)}")
    if "--timeout" in opts and opts.get("--action") != "lock":
        raise Exit(1, f"--timeout is only valid with --action lock\n{usage(takes_value | flags)}")
    if "--device-map" in opts and opts.get("--action") != "restore":
        raise Exit(1, f"--device-map is only valid with --action restore\n{usage(takes_value | flags)}")
    if "--action" in opts and opts["--action"] not in LEGAL:
        raise Exit(1, f"Unknown action {opts['--action']!r}\n{usage(takes_value | flags)}")
    if not opts["--pid"].isdigit():
        raise Exit(1, f"Invalid pid {opts['--pid']!r}")
    return opts


class Container:
    """The fake container's processes and CUDA states, under a file lock."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.lock_file = open(os.path.join(folder, "cuda.lock"), "a+")  # noqa: SIM115

    def __enter__(self) -> Container:
        fcntl.flock(self.lock_file, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.lock_file, fcntl.LOCK_UN)

    def _read(self, name: str, default: Any) -> Any:
        try:
            with open(os.path.join(self.folder, name)) as f:
                return json.load(f)
        except FileNotFoundError:
            return default

    def _write(self, name: str, value: Any) -> None:
        path = os.path.join(self.folder, name)
        with open(path + ".tmp", "w") as f:
            json.dump(value, f)
        os.replace(path + ".tmp", path)

    def pids(self) -> list[int]:
        return [int(p) for p in self._read("state.json", {}).get("pids", [])]

    def states(self) -> dict[str, str]:
        return dict(self._read("cuda.json", {}))

    def set_state(self, pid: int, state: str) -> None:
        states = self.states()
        states[str(pid)] = state
        self._write("cuda.json", states)

    def vanish(self, pid: int) -> None:
        full = self._read("state.json", {})
        full["pids"] = [p for p in full.get("pids", []) if int(p) != pid]
        self._write("state.json", full)
        states = self.states()
        states.pop(str(pid), None)
        self._write("cuda.json", states)

    def spawn(self, pid: int, cuda: bool) -> None:
        full = self._read("state.json", {})
        full["pids"] = [*full.get("pids", []), pid]
        self._write("state.json", full)
        if cuda:
            self.set_state(pid, "running")

    def consume(self, key: str, times: int, skip: int = 0) -> bool:
        """Count a matching call: the fault applies after ``skip`` of them, ``times`` times (0: always)."""
        used = dict(self._read("cuda-faults-used.json", {}))
        seen = used.get(key, 0)
        used[key] = seen + 1
        self._write("cuda-faults-used.json", used)
        return seen >= skip and (times <= 0 or seen < skip + times)


AFTER_SIGNAL: list[int] = []  # "signal" faults with "when": "after": sent once the call is done


def signal_number(name: str | int) -> int:
    """``"TERM"``, ``"SIGTERM"`` or 15."""
    if isinstance(name, int) or str(name).isdigit():
        return int(name)
    text = str(name).upper()
    return int(getattr(signal, text if text.startswith("SIG") else "SIG" + text))


def fail(code: int, message: str) -> NoReturn:
    raise Exit(code % 256, message)


def op_name(opts: dict[str, str]) -> str:
    if "--action" in opts:
        return opts["--action"]
    for key in ("--get-state", "--toggle", "--get-restore-tid"):
        if key in opts:
            return key[2:]
    return "?"


def planned_fault(box: Container, pid: int, op: str) -> dict[str, Any] | None:
    raw = os.environ.get("FAKE_CUDA_FAULTS")
    if not raw:
        return None
    for index, plan in enumerate(json.loads(raw)):
        if int(plan.get("pid", -1)) not in (pid, -1):
            continue
        if plan.get("op") not in (op, "any"):
            continue
        with box:
            if box.consume(f"cuda-{index}", int(plan.get("times", 1)), int(plan.get("skip", 0))):
                return dict(plan)
    return None


def apply_fault(plan: dict[str, Any], box: Container, pid: int, op: str, opts: dict[str, str]) -> str | None:
    """Carry out a planned fault: exit, or return what to print instead, or None to go on."""
    kind = plan["fault"]
    if kind == "hang":
        time.sleep(float(plan.get("seconds", 30)))
        if plan.get("then") != "complete":
            fail(CUDA_ERROR_TIMEOUT, f'Could not {op} process {pid}: "the operation timed out"')
    elif kind == "garbage":
        return str(plan.get("output", "\x07\x00}{garbage"))
    elif kind == "empty":
        raise Exit(0)
    elif kind == "output":
        repeat = int(plan.get("repeat", 1))
        if plan.get("output_file"):
            with open(plan["output_file"], "rb") as f:
                data = f.read()
            sys.stdout.flush()
            for _ in range(repeat):
                sys.stdout.buffer.write(data)
        for _ in range(repeat):
            sys.stdout.write(str(plan.get("output", "")))
        for _ in range(repeat if plan.get("stderr") else 0):
            sys.stderr.write(str(plan["stderr"]))
        raise Exit(int(plan.get("code", 0)))
    elif kind == "signal":
        signum = signal_number(plan.get("signal", "TERM"))
        if plan.get("when", "before") == "after":
            AFTER_SIGNAL.append(signum)
        else:
            os.kill(os.getppid(), signum)
            time.sleep(float(plan.get("seconds", 0)))
    elif kind == "spawn":
        with box:
            box.spawn(int(plan["new_pid"]), bool(plan.get("cuda", True)))
    elif kind == "vanish":
        with box:
            box.vanish(pid)
        fail(CUDA_ERROR_INVALID_VALUE, f"Process {pid} does not exist")
    elif kind == "fail":
        if plan.get("state"):
            with box:
                box.set_state(pid, str(plan["state"]))
        code = int(plan.get("code", CUDA_ERROR_OPERATING_SYSTEM))
        fail(code, f'Could not {op} process {pid}: "injected failure"')
    elif kind == "busy" and op == "lock":
        busy = float(plan.get("seconds", 1))
        allowed = int(opts.get("--timeout", "0") or 0) / 1000.0
        if allowed and busy > allowed:
            time.sleep(allowed)
            fail(CUDA_ERROR_TIMEOUT, f'Could not lock process {pid}: "the operation timed out"')
        time.sleep(busy)
    return None


def run(argv: list[str]) -> str:
    driver = os.environ.get("FAKE_CUDA_DRIVER", "580").split(".")[0]
    old_driver = int(driver) < 555 if driver.isdigit() else False
    opts = parse(argv, old_driver)
    folder = os.environ.get("FAKE_CONTAINER_DIR")
    if "--help" in opts:  # needs no CUDA; faults are planned with op "help"
        if folder and os.path.isdir(folder):
            plan = planned_fault(Container(folder), -1, "help")
            if plan is not None:
                out = apply_fault(plan, Container(folder), -1, "help", opts)
                if out is not None:
                    return out
        raise Exit(0, opts["--help"])
    if not folder or not os.path.isdir(folder):
        fail(CUDA_ERROR_OPERATING_SYSTEM, 'Error initializing CUDA: "OS call failed or operation not supported"')
    pid = int(opts["--pid"])
    op = op_name(opts)
    box = Container(folder)
    delay = float(os.environ.get("FAKE_CUDA_DELAY", "0") or 0)
    if delay:
        time.sleep(delay)
    plan = planned_fault(box, pid, op)
    if plan is not None:
        out = apply_fault(plan, box, pid, op, opts)
        if out is not None:
            return out
    with box:
        if pid not in box.pids():
            fail(CUDA_ERROR_INVALID_VALUE, f"Process {pid} does not exist")
        states = box.states()
        if str(pid) not in states:
            fail(CUDA_ERROR_NOT_INITIALIZED, f'Could not {op} process {pid}: "initialization error"')
        current = states[str(pid)]
        if op == "get-state":
            return current
        if op == "get-restore-tid":
            if current != "checkpointed":
                fail(CUDA_ERROR_ILLEGAL_STATE, f'Could not get restore tid of process {pid}: "illegal state"')
            return str(pid + 1)
        if op == "toggle":
            if current == "running":
                box.set_state(pid, "checkpointed")
            elif current == "checkpointed":
                box.set_state(pid, "running")
            else:
                fail(CUDA_ERROR_ILLEGAL_STATE, f'Could not toggle process {pid} in state {current}: "illegal state"')
            return ""
        need, after = LEGAL[op]
        if current != need:
            fail(CUDA_ERROR_ILLEGAL_STATE, f'Could not {op} process {pid} in state {current}: "illegal state"')
        box.set_state(pid, after)
        return ""


def record(argv: list[str], start: float, code: int) -> None:
    folder = os.environ.get("FAKE_CONTAINER_DIR")
    if not folder or not os.path.isdir(folder):
        return
    line = json.dumps({"argv": argv, "start": start, "end": time.time(), "code": code, "pid": os.getpid()})
    fd = os.open(os.path.join(folder, "cuda-calls.jsonl"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def main(argv: list[str]) -> NoReturn:
    start = time.time()
    try:
        out = run(argv[1:])
        if out:
            sys.stdout.write(out + "\n")
        code = 0
    except Exit as e:
        stream = sys.stdout if e.code == 0 else sys.stderr
        if e.message:
            stream.write(e.message.rstrip("\n") + "\n")
        code = e.code
    record(argv[1:], start, code)
    for signum in AFTER_SIGNAL:
        sys.stdout.flush()
        sys.stderr.flush()
        os.kill(os.getppid(), signum)
    sys.exit(code)


if __name__ == "__main__":
    main(sys.argv)
