"""Running the programs runsc-cuda calls itself: bounded output, timeouts, no shell.

Everything from inside the sandbox (``runsc ps``/``exec`` output) is untrusted:
output is read up to a limit and the rest discarded; argv is a list, never a
shell string.
"""

from __future__ import annotations

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
        """The first line of stderr (or stdout), shortened, for messages."""
        for blob in (self.stderr, self.stdout):
            for line in blob.decode("utf-8", errors="replace").splitlines():
                line = line.strip()
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
            try:
                proc.wait(timeout=timeout)
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
        return Result(tuple(argv), code, stdout, stderr, time.monotonic() - start, timed_out, cut_out or cut_err)

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
