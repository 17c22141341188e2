"""Running the programs runsc-cuda calls itself: bounded output, timeouts, no shell.

Everything from inside the sandbox (``runsc ps``/``exec`` output) is untrusted:
output is read up to a limit and the rest discarded; argv is a list, never a
shell string.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import IO


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    returncode: int | None  # None: still running when abandoned after the timeout
    stdout: bytes
    stderr: bytes
    duration: float
    timed_out: bool = False
    truncated: bool = False
    started: bool = True  # False: the program could not be started at all

    @property
    def answered(self) -> bool:
        """The program ran and exited on its own (not killed, not abandoned, not runsc exec's own failure).

        ``runsc exec`` exits with its child's status, 128+signal when the child
        was killed, or 128 for its own errors; a negative status means runsc
        itself was killed.
        """
        code = self.returncode
        return self.started and not self.timed_out and code is not None and code >= 0 and code != 128

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def text(self) -> str:
        return self.stdout.decode("utf-8", errors="replace")

    def error_text(self, limit: int = 300) -> str:
        """The first line of stderr (or stdout), shortened and printable, for messages.

        It may come from inside the sandbox: control characters (terminal
        escapes) are replaced, so it cannot steer the terminal that shows it.
        """
        for blob in (self.stderr, self.stdout):
            for line in blob[: limit * 4].decode("utf-8", errors="replace").splitlines():
                line = printable(line).strip()
                if line:
                    return line[:limit]
        return ""

    def describe(self) -> str:
        if self.timed_out:
            return "timed out"
        detail = self.error_text()
        code = self.returncode
        status = f"exit status {code}" if code is not None and code >= 0 else f"killed by signal {-(code or 0)}"
        return f"{status}: {detail}" if detail else status


def printable(text: str) -> str:
    """``text`` with every non-printable character (control codes, escapes) as ``?``."""
    return text if text.isprintable() else "".join(c if c.isprintable() else "?" for c in text)


def _append_only(f: IO[bytes]) -> None:
    """Make writes to ``f`` (and to the program's copy of it) land at its end, even after a truncate."""
    flags = fcntl.fcntl(f.fileno(), fcntl.F_GETFL)
    fcntl.fcntl(f.fileno(), fcntl.F_SETFL, flags | os.O_APPEND)


def _cap(f: IO[bytes], limit: int) -> bool:
    """Cut ``f`` back to ``limit`` + 1 bytes once it has grown past twice that; whether it was cut."""
    fd = f.fileno()
    if os.fstat(fd).st_size <= 2 * (limit + 1):
        return False
    os.ftruncate(fd, limit + 1)  # the first limit bytes stay; the extra byte marks the cut
    return True


def _read_bounded(f: IO[bytes], limit: int) -> tuple[bytes, bool]:
    f.seek(0)
    data = f.read(limit + 1)
    return data[:limit], len(data) > limit


class Runner:
    """Starts programs with a timeout and bounded output.

    ``kill_on_timeout`` False leaves a timed-out program running (it is
    abandoned, never killed): runsc-cuda must never SIGKILL a cuda-checkpoint
    mid-operation.  The caller gets ``returncode None`` and can ``reap`` later.
    """

    def __init__(self, environ: Mapping[str, str], max_output: int = 1 << 20) -> None:
        self.environ = dict(environ)
        self.max_output = max_output
        self._abandoned: list[subprocess.Popen[bytes]] = []
        self.abandoned_total = 0  # every call ever abandoned, finished since or not

        self._lock = threading.Lock()

    def run(
        self,
        argv: Sequence[str],
        timeout: float,
        stdin: bytes | None = None,
        kill_on_timeout: bool = True,
    ) -> Result:
        """Run ``argv`` (no shell); output goes to anonymous temp files, so a program
        that outlives the call (abandoned after its timeout) never writes into a
        closed pipe."""
        start = time.monotonic()
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            _append_only(out)
            _append_only(err)
            try:
                proc = subprocess.Popen(
                    list(argv),
                    stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    env=self.environ,
                    close_fds=True,
                )
            except OSError as e:
                return Result(
                    tuple(argv), 127, b"", f"cannot execute {argv[0]}: {e.strerror}".encode(), 0.0, started=False
                )
            if stdin is not None and proc.stdin is not None:
                try:
                    proc.stdin.write(stdin)
                    proc.stdin.close()
                except OSError:
                    pass
            timed_out = False
            cut = False
            deadline = start + timeout
            pause = 0.001
            try:
                # Wait in slices (1 ms growing to 10 ms, back to 1 ms while a program keeps
                # writing): output beyond the limit is cut from the temp files as it comes, so
                # a program inside the sandbox cannot fill the host's disk.
                while True:
                    try:
                        proc.wait(timeout=max(0.0, min(pause, deadline - time.monotonic())))
                        break
                    except subprocess.TimeoutExpired:
                        now_cut = _cap(out, self.max_output) | _cap(err, self.max_output)
                        cut = cut or now_cut
                        pause = 0.001 if now_cut else min(0.01, pause * 2)
                        if time.monotonic() >= deadline:
                            raise
            except subprocess.TimeoutExpired:
                timed_out = True
                if kill_on_timeout:
                    proc.kill()
                    proc.wait()
                else:
                    with self._lock:
                        self._abandoned.append(proc)
                        self.abandoned_total += 1
            stdout, cut_out = _read_bounded(out, self.max_output)
            stderr, cut_err = _read_bounded(err, self.max_output)
        code = None if (timed_out and not kill_on_timeout) else proc.returncode
        truncated = cut or cut_out or cut_err
        return Result(tuple(argv), code, stdout, stderr, time.monotonic() - start, timed_out, truncated)

    def abandoned(self) -> int:
        with self._lock:
            self._abandoned = [p for p in self._abandoned if p.poll() is None]
            return len(self._abandoned)

    def reap(self, grace: float) -> int:
        """Wait up to ``grace`` seconds for abandoned programs; return how many still run."""
        deadline = time.monotonic() + grace
        while self.abandoned() and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.abandoned()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
