"""Running the programs runsc-cuda calls itself: bounded output, timeouts, no shell.

Everything from inside the sandbox (``runsc ps``/``exec`` output) is untrusted:
output is read up to a limit and the rest discarded; argv is a list, never a
shell string.
"""

from __future__ import annotations

import atexit
import os
import select
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
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


class _Drain:
    """Reads one pipe to its end on a thread: the first ``limit`` bytes are kept, the rest
    discarded (``truncated``), so a program never blocks on a full pipe and nothing of its
    output touches the disk."""

    CHUNK = 1 << 16

    def __init__(self, pipe: IO[bytes], limit: int) -> None:
        self.fd = pipe.fileno()
        self._pipe = pipe
        self.limit = limit
        self.data = bytearray()
        self.truncated = False
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while True:
                chunk = os.read(self.fd, self.CHUNK)
                if not chunk:
                    break
                with self._lock:
                    room = self.limit - len(self.data)
                    if room > 0:
                        self.data += chunk[:room]
                    if len(chunk) > max(room, 0):
                        self.truncated = True
        except OSError:
            pass
        finally:
            with self._lock:
                self._pipe.close()

    def wait(self, timeout: float) -> bool:
        self.thread.join(max(0.0, timeout))
        return not self.thread.is_alive()

    def take(self) -> tuple[bytes, bool]:
        with self._lock:
            return bytes(self.data), self.truncated


def wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Wait for ``proc`` to exit, for at most ``timeout`` seconds; True once it has (and is reaped).

    Woken by the exit itself (a pidfd, Linux 5.3+), not by ``Popen.wait``'s polling, which sleeps up
    to 50 ms between looks and so adds up to that to every call runsc-cuda waits for.
    """
    if proc.poll() is not None:
        return True
    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # no pidfd here: Popen's own polling
        try:
            proc.wait(timeout=max(0.0, timeout))
        except subprocess.TimeoutExpired:
            return False
        return True
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        deadline = time.monotonic() + max(0.0, timeout)
        while not poller.poll(min(60_000, max(0, int((deadline - time.monotonic()) * 1000)))):
            if time.monotonic() >= deadline:
                return proc.poll() is not None
        proc.wait()  # it has exited: reap it
        return True
    finally:
        os.close(fd)


def _hand_to_drainer(pipes: list[_Drain]) -> None:
    """At exit: the pipes of programs still running (abandoned) go to a detached process that
    reads them to their end, so none of them ever blocks on a full pipe or meets a closed one."""
    fds = [d.fd for d in pipes if d.thread.is_alive()]
    if not fds:
        return
    try:
        child = os.fork()
    except OSError:
        return
    if child:
        os.waitpid(child, 0)
        return
    try:
        os.setsid()
        if os.fork():
            os._exit(0)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        left = set(fds)
        while left:
            for fd, _ in poller.poll():
                try:
                    data = os.read(fd, 1 << 16)
                except OSError:
                    data = b""
                if not data:
                    poller.unregister(fd)
                    left.discard(fd)
    finally:
        os._exit(0)


class Runner:
    """Starts programs with a timeout and bounded output.

    Output is read from pipes by threads, up to ``max_output`` bytes per stream
    (the rest is read and dropped): reading it needs no disk space.
    ``kill_on_timeout`` False leaves a timed-out program running (it is
    abandoned, never killed): runsc-cuda must never SIGKILL a cuda-checkpoint
    mid-operation.  Its pipes are drained on (by a detached drainer once
    runsc-cuda exits), so it never blocks on a full pipe nor meets a closed one.
    The caller gets ``returncode None`` and can ``reap`` later.
    """

    EOF_GRACE_S = 1.0  # how long to wait for the end of output once a program has exited

    def __init__(self, environ: Mapping[str, str], max_output: int = 1 << 20) -> None:
        self.environ = dict(environ)
        self.max_output = max_output
        self._abandoned: list[subprocess.Popen[bytes]] = []
        self.abandoned_total = 0  # every call ever abandoned, finished since or not
        self._open_pipes: list[_Drain] = []  # pipes still being read after their call returned
        self._lock = threading.Lock()
        # Called with the PID of each program as it starts (the guardian's record of a save).
        self.on_start: Callable[[Sequence[str], int], None] | None = None

    def _keep_draining(self, drains: list[_Drain]) -> None:
        with self._lock:
            if not self._open_pipes:
                atexit.register(self._hand_off)
            self._open_pipes += [d for d in drains if d.thread.is_alive()]

    def _hand_off(self) -> None:
        with self._lock:
            pipes, self._open_pipes = self._open_pipes, []
        _hand_to_drainer(pipes)

    def run(
        self,
        argv: Sequence[str],
        timeout: float,
        stdin: bytes | None = None,
        kill_on_timeout: bool = True,
    ) -> Result:
        """Run ``argv`` (no shell) with its output read from pipes, bounded."""
        start = time.monotonic()
        try:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=self.environ,
                close_fds=True,
            )
        except OSError as e:
            return Result(tuple(argv), 127, b"", f"cannot execute {argv[0]}: {e.strerror}".encode(), 0.0, started=False)
        assert proc.stdout is not None and proc.stderr is not None
        drains = [_Drain(proc.stdout, self.max_output), _Drain(proc.stderr, self.max_output)]
        if self.on_start is not None:
            self.on_start(argv, proc.pid)
        if stdin is not None and proc.stdin is not None:
            try:
                proc.stdin.write(stdin)
                proc.stdin.close()
            except OSError:
                pass
        timed_out = False
        if not wait_exit(proc, start + timeout - time.monotonic()):
            timed_out = True
            if kill_on_timeout:
                proc.kill()
                proc.wait()
            else:
                with self._lock:
                    self._abandoned.append(proc)
                    self.abandoned_total += 1
        if not timed_out or kill_on_timeout:
            # A program that left a child holding its output: take what came, keep draining the rest.
            deadline = time.monotonic() + self.EOF_GRACE_S
            for d in drains:
                d.wait(deadline - time.monotonic())
        if any(d.thread.is_alive() for d in drains):
            self._keep_draining(drains)
        (stdout, cut_out), (stderr, cut_err) = drains[0].take(), drains[1].take()
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
