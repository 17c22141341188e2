"""Detached helper processes (the background-load watcher, the crash guardian, the pod restore
watcher): they outlive the call that started them, so they let go of everything that call was given.

``spawn`` is the one way to start one: fork, a new session, fork again (the helper is a grandchild
that no terminal or process group of the caller's reaches, reparented to init or the nearest
subreaper), stdio on /dev/null and every other file closed.  ``fresh_session`` gives it its own
log handles, runner and stop flag.
"""

from __future__ import annotations

import contextlib
import os

TYPE_CHECKING = False  # typing costs ~4 ms to import; mypy honours this spelling
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from runsc_cuda.session import Session

FD_LIMIT = 65536
PID_DIGITS = 32  # what the helper's PID may take on the pipe that tells it


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


def spawn(body: Callable[[], int], keep: int | None = None, ignore_stop: bool = False) -> int | None:
    """Run ``body`` in a detached helper that exits with its status (1 if it raised); the helper's PID
    (None if it could not be told). OSError: nothing could be forked.

    The helper keeps the file ``keep`` besides its stdio on /dev/null.  SIGTERM, SIGINT and SIGHUP are
    back at their defaults, or ignored with ``ignore_stop`` (the caller's stop requests are not for a
    helper that must finish its work); SIGPIPE is at its default.
    """
    r, w = os.pipe()
    try:
        child = os.fork()
    except OSError:
        os.close(r)
        os.close(w)
        raise
    if child == 0:
        _helper(body, keep, ignore_stop, r, w)  # never returns
    os.close(w)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(child, 0)
    with os.fdopen(r, "rb") as f:
        said = f.read(PID_DIGITS)
    return int(said) if said.isdigit() else None


def _helper(body: Callable[[], int], keep: int | None, ignore_stop: bool, r: int, w: int) -> None:
    """The forked child: a new session, then the helper as its child (the child exits at once)."""
    import signal

    code = 1
    try:
        os.close(r)
        os.setsid()
        helper = os.fork()
        if helper:
            os.write(w, str(helper).encode())
            os._exit(0)
        os.close(w)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN if ignore_stop else signal.SIG_DFL)
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        let_go(keep)
        code = body()
    except BaseException:
        code = 1
    finally:
        os._exit(code)


def fresh_session(session: Session, context: Mapping[str, object] | None = None) -> None:
    """In a helper: its own handle on the detailed log, stderr on /dev/null (the runtime log and the
    detailed log still speak), a runner and stop flag of its own, and the context its lines carry."""
    from runsc_cuda import logs
    from runsc_cuda.runner import Runner
    from runsc_cuda.signals import StopFlag

    cfg = session.config
    session.report.logger = logs.detail_logger(cfg.log_file, cfg.log_level)
    session.report.stderr = open(os.devnull, "w")  # noqa: SIM115 - lives as long as this process
    if context is not None:
        session.report.context = dict(context)
    session.runner = Runner(session.runner.environ, cfg.max_output_bytes)
    session.stop = StopFlag()
