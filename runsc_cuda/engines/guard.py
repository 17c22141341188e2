"""The guardian: no CUDA process stays frozen when runsc-cuda itself is killed mid-checkpoint.

containerd's runc shim kills a runtime call with SIGKILL on a context timeout
(and through the parent-death signal); no handler runs then, and Docker's next
call (``resume``) passes straight through to runsc.  So before anything is
frozen, a checkpoint of a GPU container:

1. writes a record of what it is doing to ``state_dir/frozen/KEY.json``
   (atomically; the save's PID is added once ``runsc checkpoint`` starts);
2. forks a detached guardian (own session, stdio /dev/null, other fds closed)
   that holds the read end of a pipe.

When the work is over (thawed, a completed stopping save, or a failure whose
rollback ran), runsc-cuda writes ``done`` and removes the record.  On EOF
without ``done`` (runsc-cuda died), the guardian takes the container's lock,
waits for a save still running in the orphaned ``runsc checkpoint`` (bounded by
``checkpoint_timeout_s``), and brings every CUDA process back to running with
the engines' own recovery (``native.thaw_all``; a paused container is resumed
for it and paused again), logs to the runtime log and removes the record.  A
record the guardian never got to (it was killed too) is recovered by the next
checkpoint of the container, under its lock.  Pass-through calls pay nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from runsc_cuda import detach, files
from runsc_cuda.engines import native
from runsc_cuda.errors import ShimError, refusal
from runsc_cuda.lock import container_lock, lock_path
from runsc_cuda.oci.sandbox import UP, Sandbox
from runsc_cuda.runner import pid_alive
from runsc_cuda.session import Session

DONE = b"done"
POLL_S = 0.1


def record_path(state_dir: str, root: str, cid: str) -> str:
    """The record of one container, keyed like its lock."""
    key = os.path.basename(lock_path(state_dir, root, cid)).rsplit(".", 1)[0]
    return os.path.join(state_dir, "frozen", f"{key}.json")


def start_time(pid: int) -> str:
    """The process's start time (/proc/PID/stat field 22): a reused PID is another process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[-1].split()[19].decode()
    except (OSError, IndexError):
        return ""


def still_running(pid: int, started: str) -> bool:
    return pid_alive(pid) and (not started or start_time(pid) in ("", started))


class Guard:
    """The record and the guardian of one checkpoint."""

    def __init__(self, session: Session, cid: str, root: str, engine: str) -> None:
        self.session = session
        self.path = record_path(session.config.state_dir, root, cid)
        self.token = secrets.token_hex(8)
        self.doc: dict[str, Any] = {"container": cid, "root": root, "engine": engine, "owner": os.getpid()}
        self.doc["token"] = self.token
        self.globals = len(session.cmd.global_tokens())
        self.fd: int | None = None

    def write(self) -> None:
        try:
            os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
            files.write_atomic(self.path, json.dumps(self.doc))
        except OSError as e:
            raise ShimError(f"cannot write {self.path}: {e.strerror}") from None

    def on_start(self, argv: Sequence[str], pid: int) -> None:
        """The runner started a program: the save's PID goes into the record (the guardian waits for it)."""
        if len(argv) > self.globals + 1 and argv[self.globals + 1] == "checkpoint":
            self.doc.update(save_pid=pid, save_started=start_time(pid))
            with contextlib.suppress(ShimError):
                self.write()

    def start(self) -> None:
        try:
            self.write()
        except ShimError as e:
            raise refusal(str(e)) from None
        r, w = os.pipe()
        try:
            started = detach.spawn(lambda: _guardian(self.session, self.path, self.token, r), keep=r, ignore_stop=True)
            why = None if started is not None else "it did not start"
        except OSError as e:
            why = str(e.strerror)
        finally:
            os.close(r)
        if why is not None:  # nothing is frozen without one
            os.close(w)
            self.remove()
            raise ShimError(f"cannot start the guardian: {why}")
        self.fd = w
        self.session.runner.on_start = self.on_start

    def done(self) -> None:
        """The work is over and its own rollback ran: the guardian can go."""
        self.session.runner.on_start = None
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.write(self.fd, DONE)
        self.remove()
        self.close()

    def close(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.path)


@contextmanager
def guarded(session: Session, cid: str, root: str, engine: str) -> Iterator[Guard]:
    """Around a freeze: ``done`` on any way out that rolled back; anything else leaves it to the guardian."""
    guard = Guard(session, cid, root, engine)
    guard.start()
    try:
        yield guard
    except ShimError:
        guard.done()
        raise
    except BaseException:
        guard.close()  # the guardian sweeps once this process is gone (it holds the lock until then)
        raise
    guard.done()


def _guardian(session: Session, path: str, token: str, r: int) -> int:
    """The detached guardian's whole life (detach.spawn: stop requests ignored, they were for runsc-cuda)."""
    said = b""
    while chunk := os.read(r, 16):
        said += chunk
    if said.startswith(DONE) or not os.path.exists(path):
        return 0
    detach.fresh_session(session)
    cfg = session.config
    doc = _read(path)
    if doc is None or doc.get("token") != token:
        return 0
    with container_lock(cfg.state_dir, str(doc.get("root", "")), str(doc.get("container", "")), cfg.lock_wait_s):
        return 0 if recover(session, path, token, "runsc-cuda was killed before it finished") else 1


def _read(path: str) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def recover(session: Session, path: str, token: str | None, why: str) -> bool:
    """Bring the container of the record at ``path`` back (the caller holds its lock); whether all is well.

    ``token`` None: any record (a leftover one, found by the next checkpoint).
    """
    doc = _read(path)
    if doc is None or (token is not None and doc.get("token") != token):
        return True
    cid = str(doc.get("container", ""))
    report = session.report
    pid, started = doc.get("save_pid"), str(doc.get("save_started", ""))
    if isinstance(pid, int) and pid > 0:
        deadline = time.monotonic() + session.config.checkpoint_timeout_s
        while still_running(pid, started) and time.monotonic() < deadline:
            time.sleep(POLL_S)  # the orphaned save is still writing the image: thaw after it
        if still_running(pid, started):
            report.warning(f"checkpoint of {cid}: runsc checkpoint (PID {pid}) still runs after checkpoint_timeout_s")
    sandbox = Sandbox(session, cid)
    state = sandbox.try_state() or sandbox.try_state()
    parts: list[str] = []
    ok = True
    if state is not None and state.status in UP:
        paused = state.status == "paused"  # resumed for the thaw, paused again after it
        parts, ok = native.thaw_all(session, sandbox, paused, paused)
        if not ok and paused:
            again = sandbox.try_state()  # Docker's own resume may have come in between
            if again is not None and again.status == "running":
                parts, ok = native.thaw_all(session, sandbox, False, False)
    detail = "; ".join(parts) or ("no CUDA process was left frozen" if state is not None else "the container is gone")
    message = f"checkpoint of {cid}: {why}; {detail}"
    if ok:
        report.warning(message, container=cid)
    else:
        report.error(message, container=cid)
    with contextlib.suppress(OSError):
        os.unlink(path)
    return ok


def recover_leftover(session: Session, root: str, cid: str) -> None:
    """At the start of a checkpoint (under the container's lock): a record whose guardian never finished."""
    path = record_path(session.config.state_dir, root, cid)
    if os.path.exists(path):
        recover(session, path, None, "an earlier runsc-cuda was killed before it finished")
