"""Serialising checkpoint/restore of one container across runsc-cuda processes.

An flock on a file under ``state_dir`` (outside runsc's root). The kernel drops
the lock when its holder dies, so a crashed runsc-cuda never blocks a container:
a stale lock file is just a file.  ``state_dir`` must be a folder only root
(runsc-cuda's user) can change, the lock file is never opened through a link,
and the key is the runsc root's real path: one container, one lock, however
``--root`` is spelled.  A stop request (SIGTERM) ends a wait for another call's lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from runsc_cuda import files
from runsc_cuda.errors import ShimError, refusal
from runsc_cuda.signals import StopFlag

if TYPE_CHECKING:
    from runsc_cuda.session import Session


def lock_path(state_dir: str, root: str, cid: str) -> str:
    key = hashlib.sha256(f"{os.path.realpath(root)}\0{cid}".encode()).hexdigest()[:24]
    return os.path.join(state_dir, "locks", f"{key}.lock")


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 64, 0).decode("ascii", errors="replace").strip()
    except OSError:
        return ""
    return f" (pid {text})" if text.isdigit() else ""


def _open(path: str) -> int:
    """The lock file, created if needed: never through a link, and only a regular file."""
    files.ensure_private_dir(os.path.dirname(os.path.dirname(path)))
    files.ensure_private_dir(os.path.dirname(path), "state_dir's locks folder")
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as e:
        why = "it is a symbolic link" if e.errno == errno.ELOOP else e.strerror
        raise refusal(f"cannot open lock file {path}: {why}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise refusal(f"cannot open lock file {path}: it is {files.kind(mode)}")
    return fd


@contextmanager
def container_lock(
    state_dir: str,
    root: str,
    cid: str,
    wait_s: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    stop: StopFlag | None = None,
) -> Iterator[str]:
    path = lock_path(state_dir, root, cid)
    fd = _open(path)
    try:
        deadline = clock() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise refusal(f"cannot lock {path}: {e.strerror}") from None
                if stop is not None and stop():
                    raise refusal(
                        f"interrupted by {stop.name()} while waiting for another checkpoint or restore of "
                        f"container {cid}{_holder(fd)}"
                    ) from None
                if clock() >= deadline:
                    raise ShimError(
                        f"another checkpoint or restore of container {cid} is still running{_holder(fd)}; "
                        f"gave up after {wait_s:g}s"
                    ) from None
                sleep(0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the flock


def session_lock(session: Session, cid: str) -> contextlib.AbstractContextManager[str]:
    """The container's lock for an intercepted call: its state_dir, its runsc root, its stop flag."""
    cfg = session.config
    return container_lock(cfg.state_dir, session.runsc_root, cid, cfg.lock_wait_s, stop=session.stop)
