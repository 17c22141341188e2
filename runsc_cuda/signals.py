"""Signals while runsc-cuda works: remembered between steps, or forwarded to a child."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


class StopFlag:
    """Set by SIGTERM/SIGINT/SIGHUP; the work stops at the next step boundary and rolls back."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self) -> bool:
        return self.signum is not None

    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""


@contextmanager
def deferred_stop(flag: StopFlag) -> Iterator[StopFlag]:
    """While inside, SIGTERM/SIGINT/SIGHUP only set ``flag``."""

    def handler(signum: int, frame: FrameType | None) -> None:
        flag.signum = signum

    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextmanager
def forwarded_to(child: subprocess.Popen[bytes]) -> Iterator[None]:
    """Pass the signals a runtime's caller sends on to ``child`` (as runc does for its init)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        if child.poll() is None:
            with suppress(OSError):
                child.send_signal(signum)

    previous = {s: signal.signal(s, handler) for s in FORWARDED}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
