"""Serialising checkpoint/restore of one container across runsc-cuda processes.

An flock on a file under ``state_dir`` (outside runsc's root). The kernel drops
the lock when its holder dies, so a crashed runsc-cuda never blocks a container:
a stale lock file is just a file.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from runsc_cuda.errors import ShimError


def lock_path(state_dir: str, root: str, cid: str) -> str:
    key = hashlib.sha256(f"{os.path.abspath(root)}\0{cid}".encode()).hexdigest()[:24]
    return os.path.join(state_dir, "locks", f"{key}.lock")


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 64, 0).decode("ascii", errors="replace").strip()
    except OSError:
        return ""
    return f" (pid {text})" if text.isdigit() else ""


@contextmanager
def container_lock(
    state_dir: str,
    root: str,
    cid: str,
    wait_s: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[str]:
    path = lock_path(state_dir, root, cid)
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise ShimError(f"cannot create lock file {path}: {e.strerror}") from None
    try:
        deadline = clock() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise ShimError(f"cannot lock {path}: {e.strerror}") from None
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
