#!/usr/bin/env python3
"""Leave the host as it was: remove the runsc sandboxes under a --root, find runsc processes, watch system folders.

Shared by everything that starts real runsc sandboxes or checks that nothing was left behind:
tests/hygiene.py (the end-of-session check), tests/gpu/gpu_check.py, tests/e2e/stack.py,
tests/e2e/test_tuning_real.py and bench/tuning.py.  Standard library only; scripts/ is no package,
so importers put this folder on sys.path (or load the file by path).

By hand (as root), to remove what an interrupted run left::

    python3 scripts/sandboxes.py clean RUNSC ROOT [FOLDER...]   # sandboxes under --root ROOT, mounts under FOLDERs
    python3 scripts/sandboxes.py list [FOLDER...]               # runsc processes (naming FOLDER)
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

# What runsc calls its processes: the runsc command itself, then the sandbox and gofer it re-executes itself as.
RUNSC_PROGRAMS = frozenset({"runsc", "runsc-sandbox", "runsc-gofer"})

# Folders no test may add anything to (their entries are compared, not their contents).  On a merged-/usr
# system /bin is /usr/bin; each folder is read once, under its real path.
SYSTEM_FOLDERS = (
    "/",
    "/bin",
    "/sbin",
    "/etc",
    "/etc/docker",
    "/lib",
    "/lib64",
    "/opt",
    "/usr",
    "/usr/bin",
    "/usr/sbin",
    "/usr/lib",
    "/usr/lib64",
    "/usr/local",
    "/usr/local/bin",
    "/usr/local/sbin",
    "/usr/local/lib",
    "/usr/local/cuda/bin",
    "/usr/local/nvidia/bin",
)
# os.pathsep-separated folders to watch instead (the check's own tests); set but empty: none (a machine
# where other work adds files to system folders meanwhile).
ENV_FOLDERS = "RUNSC_CUDA_HYGIENE_FOLDERS"


# --- processes ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Process:
    pid: int
    argv: tuple[str, ...]
    started: int  # clock ticks after boot (/proc/PID/stat field 22): a reused PID is another process

    @property
    def key(self) -> tuple[int, int]:
        return (self.pid, self.started)

    def describe(self) -> str:
        text = " ".join(self.argv)
        return f"{self.pid} {text[:300]}{'...' if len(text) > 300 else ''}"


def read_process(pid: int) -> Process | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
        with open(f"/proc/{pid}/stat") as f:
            started = int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None
    if not raw:
        return None  # a kernel thread or a zombie: nothing left to remove
    argv = tuple(a.decode(errors="replace") for a in raw.rstrip(b"\0").split(b"\0"))
    return Process(pid, argv, started)


def processes() -> list[Process]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            proc = read_process(int(entry))
            if proc is not None:
                out.append(proc)
    return out


def ancestors() -> set[int]:
    """This process and its parents (their command lines may name a folder too)."""
    out = set()
    pid = os.getpid()
    while pid > 1 and pid not in out:
        out.add(pid)
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return out


def is_runsc(proc: Process) -> bool:
    """runsc, runsc-sandbox, runsc-gofer, or a script called runsc (the tests' fake) run by an interpreter."""
    if not proc.argv:
        return False
    if os.path.basename(proc.argv[0]) in RUNSC_PROGRAMS:
        return True
    if os.path.basename(proc.argv[0]).startswith("python"):
        script = next((a for a in proc.argv[1:] if not a.startswith("-")), "")
        return os.path.basename(script) in RUNSC_PROGRAMS
    return False


def names_folder(argv: Iterable[str], folder: str | os.PathLike[str]) -> bool:
    """An argument is the folder or a path inside it (``--root=F/x`` and ``F/x`` alike)."""
    base = os.fspath(folder).rstrip("/") or "/"
    for arg in argv:
        value = arg.split("=", 1)[1] if arg.startswith("-") and "=" in arg else arg
        if value == base or value.startswith(base + "/"):
            return True
    return False


def processes_naming(folders: Iterable[str | os.PathLike[str]], runsc_only: bool = False) -> list[Process]:
    """Processes (not this one or its parents) whose command line names one of the folders."""
    folders = [os.fspath(f) for f in folders]
    mine = ancestors()
    return [
        p
        for p in processes()
        if p.pid not in mine and (not runsc_only or is_runsc(p)) and any(names_folder(p.argv, f) for f in folders)
    ]


def root_of(proc: Process) -> str | None:
    """The --root a runsc process was given."""
    for i, arg in enumerate(proc.argv):
        if arg.startswith(("--root=", "-root=")):
            return arg.split("=", 1)[1]
        if arg in ("--root", "-root") and i + 1 < len(proc.argv):
            return proc.argv[i + 1]
    return None


def executable_of(proc: Process) -> str | None:
    """The program file a process runs (runsc-sandbox and runsc-gofer run the runsc binary)."""
    try:
        return os.readlink(f"/proc/{proc.pid}/exe").removesuffix(" (deleted)")
    except OSError:
        return None


def kill_and_wait(procs: Iterable[Process], timeout: float = 10) -> list[Process]:
    """SIGKILL each process (unless its PID went to another one meanwhile); those still there after ``timeout``."""
    procs = list(procs)
    for proc in procs:
        now = read_process(proc.pid)
        if now is not None and now.key == proc.key:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(proc.pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    left = procs
    while left:
        for proc in left:  # reap our own children, or they stay as zombies
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(proc.pid, os.WNOHANG)
        left = [p for p in left if (now := read_process(p.pid)) is not None and now.key == p.key]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    return left


# --- mounts ---------------------------------------------------------------------------------


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as \\ooo."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit() and len(field[i + 1 : i + 4]) == 3:
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounts_under(folder: str | os.PathLike[str]) -> list[str]:
    """Mount points at or under a folder (in this process's mount namespace), deepest first."""
    base = os.path.realpath(os.fspath(folder)).rstrip("/")
    points = set()
    with contextlib.suppress(OSError), open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 4:
                point = _unescape(fields[4])
                if point == base or point.startswith(base + "/"):
                    points.add(point)
    return sorted(points, key=lambda p: (p.count("/"), len(p)), reverse=True)


def unmount_under(folder: str | os.PathLike[str]) -> list[str]:
    """Unmount everything at or under a folder (lazily when busy); the mount points it unmounted."""
    done = []
    for _ in range(3):  # a lazy unmount of a parent can uncover nothing new, but stacked mounts need rounds
        points = mounts_under(folder)
        if not points:
            break
        for point in points:
            out = subprocess.run(["umount", point], capture_output=True, timeout=30, check=False)
            if out.returncode != 0:
                subprocess.run(["umount", "--lazy", point], capture_output=True, timeout=30, check=False)
            done.append(point)
    return done


# --- sandboxes ------------------------------------------------------------------------------


def _runsc(runsc: str, root: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str] | None:
    try:
        return subprocess.run(
            [runsc, "--root", str(root), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None


def container_ids(runsc: str | None, root: str | os.PathLike[str]) -> list[str]:
    """The containers runsc knows under a --root: ``runsc list``, else its state files
    (``<sandbox>_sandbox:<container>.state``: files, not folders)."""
    root = Path(root)
    ids: list[str] = []
    if runsc:
        out = _runsc(runsc, root, "list", "-quiet")
        if out is not None and out.returncode == 0:
            ids = [line.strip() for line in out.stdout.splitlines() if line.strip()]
    with contextlib.suppress(OSError):
        for entry in sorted(os.listdir(root)):
            if entry.endswith(".state") and "_sandbox:" in entry:
                cid = entry.removesuffix(".state").split("_sandbox:", 1)[1]
                if cid not in ids:
                    ids.append(cid)
    return ids


def remove_sandboxes(
    runsc: str | None,
    root: str | os.PathLike[str],
    also_unmount: Iterable[str | os.PathLike[str]] = (),
    timeout: float = 30,
) -> list[str]:
    """Remove every sandbox under a runsc --root, whatever state it is in.

    ``runsc kill ID KILL`` and ``runsc delete --force ID`` for each container runsc lists (or has a
    state file for); then SIGKILL any process still naming the root (a sandbox or gofer whose state
    was lost, a runsc call that hangs, a background watcher); then unmount what is mounted under the
    root and under ``also_unmount``.  Returns what it did, one line each (nothing: nothing was there).
    """
    root = Path(root)
    if len(root.resolve().parts) < 3:  # "/" or "/tmp": every process naming it would be killed
        raise ValueError(f"remove_sandboxes: {root} is too wide a folder for a runsc --root")
    notes: list[str] = []
    if root.is_dir():
        for cid in container_ids(runsc, root):
            if runsc:
                _runsc(runsc, root, "kill", cid, "KILL", timeout=timeout)
                out = _runsc(runsc, root, "delete", "--force", cid, timeout=timeout)
                ok = out is not None and out.returncode == 0
                why = "" if ok else f" (failed: {(out.stderr.strip()[-200:] if out else 'timed out')})"
                notes.append(f"runsc delete --force {cid} under {root}{why}")
    leftovers = processes_naming([root])
    if leftovers:
        notes.extend(f"killed leftover process {p.describe()}" for p in leftovers)
        notes.extend(f"could not kill {p.describe()}" for p in kill_and_wait(leftovers))
    for folder in (root, *also_unmount):
        notes.extend(f"unmounted {point}" for point in unmount_under(folder))
    return notes


def remove_leaked(procs: Iterable[Process]) -> list[str]:
    """Remove leaked runsc processes: their sandboxes through their own runsc and --root, then by SIGKILL."""
    notes: list[str] = []
    procs = list(procs)
    done: set[tuple[str, str]] = set()
    for proc in procs:
        root, runsc = root_of(proc), executable_of(proc)
        if root and runsc and "runsc" in os.path.basename(runsc) and (runsc, root) not in done:
            done.add((runsc, root))
            with contextlib.suppress(ValueError):
                notes.extend(remove_sandboxes(runsc, root))
    alive = [p for p in procs if (now := read_process(p.pid)) is not None and now.key == p.key]
    left = kill_and_wait(alive)
    notes.extend(f"killed {p.describe()}" for p in alive if p not in left)
    notes.extend(f"could not kill {p.describe()}" for p in left)
    return notes


# --- system folders -------------------------------------------------------------------------


def watched_folders() -> list[str]:
    given = os.environ.get(ENV_FOLDERS)
    folders = [f for f in given.split(os.pathsep) if f] if given is not None else list(SYSTEM_FOLDERS)
    out: list[str] = []
    for folder in folders:
        real = os.path.realpath(folder)
        if real not in out:
            out.append(real)
    return out


def snapshot(folders: Iterable[str] | None = None) -> dict[str, frozenset[str]]:
    """The names in each folder (one level; a folder that does not exist has none)."""
    out = {}
    for folder in watched_folders() if folders is None else folders:
        try:
            out[folder] = frozenset(os.listdir(folder))
        except OSError:
            out[folder] = frozenset()
    return out


def appeared(before: dict[str, frozenset[str]], after: dict[str, frozenset[str]] | None = None) -> list[str]:
    """The paths that are in ``after`` (default: now) and were not in ``before``, each described."""
    after = snapshot(list(before)) if after is None else after
    out = []
    for folder, names in before.items():
        for name in sorted(after.get(folder, frozenset()) - names):
            out.append(describe_path(os.path.join(folder, name)))
    return out


def describe_path(path: str) -> str:
    try:
        st = os.lstat(path)
    except OSError:
        return f"{path} (gone again)"
    if os.path.islink(path):
        return f"{path} (symbolic link to {os.readlink(path)})"
    if os.path.isdir(path):
        return f"{path} (folder)"
    executable = " executable" if st.st_mode & 0o111 else ""
    return f"{path} ({'empty' if st.st_size == 0 else f'{st.st_size} bytes'}{executable} file)"


# --- interruption ---------------------------------------------------------------------------


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def interrupt_on_termination() -> None:
    """SIGTERM and SIGHUP raise KeyboardInterrupt (where nobody handles them yet), so that ``finally``
    blocks and fixture finalizers remove what was started; SIGKILL cannot be caught (callers of a
    killed script clean up after it, see ``remove_sandboxes``)."""
    for signum in (signal.SIGTERM, signal.SIGHUP):
        with contextlib.suppress(ValueError, OSError):  # ValueError: not the main thread
            if signal.getsignal(signum) in (signal.SIG_DFL, None):
                signal.signal(signum, _interrupt)


@contextlib.contextmanager
def removed_afterwards(runsc: str | None, root: str | os.PathLike[str], *also_unmount: str) -> Iterator[list[str]]:
    """Run a block; afterwards (also on failure or interruption) remove every sandbox under ``root``.
    Yields the list the clean-up notes are appended to."""
    notes: list[str] = []
    try:
        yield notes
    finally:
        notes.extend(remove_sandboxes(runsc, root, also_unmount))


def main(argv: list[str]) -> int:
    if len(argv) >= 4 and argv[1] == "clean":
        for note in remove_sandboxes(argv[2], argv[3], argv[4:]):
            print(note)
        return 0
    if len(argv) >= 2 and argv[1] == "list":
        procs = processes_naming(argv[2:], runsc_only=True) if argv[2:] else [p for p in processes() if is_runsc(p)]
        for proc in procs:
            print(proc.describe())
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
