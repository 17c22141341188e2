"""Detached helper processes (the background-load watcher, the crash guardian): they outlive the
call that started them, so they let go of everything that call was given."""

from __future__ import annotations

import contextlib
import os

FD_LIMIT = 65536


def let_go(keep: int | None = None) -> None:
    """Point stdio at /dev/null (containerd reads the caller's to EOF) and close every other file
    descriptor but ``keep``."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    limit = FD_LIMIT
    with contextlib.suppress(OSError, ValueError):
        limit = min(limit, os.sysconf("SC_OPEN_MAX"))
    if keep is None:
        os.closerange(3, limit)
    else:
        os.closerange(3, keep)
        os.closerange(keep + 1, limit)
