"""The verbs runsc-cuda handles itself. Imported only when one of them is called."""

from __future__ import annotations

import traceback
from collections.abc import Callable, Mapping

from runsc_cuda import logs
from runsc_cuda.errors import ShimError
from runsc_cuda.oci.argv import CommandLine
from runsc_cuda.session import Session, open_session, runtime_log_for
from runsc_cuda.signals import StopFlag, deferred_stop


def _create(session: Session) -> int:
    from runsc_cuda.commands import create

    return create.handle(session)


def _checkpoint(session: Session) -> int:
    from runsc_cuda.commands import checkpoint

    return checkpoint.handle(session)


def _restore(session: Session) -> int:
    from runsc_cuda.commands import restore

    return restore.handle(session)


HANDLERS: dict[str, Callable[[Session], int]] = {
    "create": _create,
    "run": _create,
    "restore": _restore,
    "checkpoint": _checkpoint,
}


def _doctor(cmd: CommandLine, environ: Mapping[str, str]) -> int:
    from runsc_cuda.commands.doctor import main as doctor

    return doctor.main(cmd, environ)


# Verbs that run without a session: doctor reports what would make opening one fail.
SESSIONLESS: dict[str, Callable[[CommandLine, Mapping[str, str]], int]] = {
    "doctor": _doctor,
}


def main(cmd: CommandLine, environ: Mapping[str, str]) -> int:
    """Run an intercepted verb. SIGTERM/SIGINT/SIGHUP only set a flag while it runs: the
    handlers stop at the next step boundary, undo what they did and fail with a message,
    so a stop request never leaves a CUDA process frozen or the runtime log silent."""
    if cmd.verb in SESSIONLESS:
        return SESSIONLESS[cmd.verb or ""](cmd, environ)
    report = logs.Reporter(runtime_log_for(cmd), None)
    stop = StopFlag()
    with deferred_stop(stop):
        try:
            session = open_session(cmd, environ, report, stop)
            return HANDLERS[cmd.verb or ""](session)
        except ShimError as e:
            report.error(e.message)
            return e.exit_code
        except KeyboardInterrupt:
            report.error("interrupted")
            return 130
        except Exception as e:  # never a traceback for users: one line, details in the log
            report.debug("internal error", traceback=traceback.format_exc())
            report.error(f"internal error: {type(e).__name__}: {e}")
            return 1
