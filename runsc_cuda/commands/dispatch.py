"""The verbs runsc-cuda handles itself (``cli.INTERCEPTED``). Imported only when one of them is called.

Each verb's module has ``handle(session)``; one that must run without a
session (doctor) says ``NEEDS_SESSION = False`` and has ``main(cmd, environ)``.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping

from runsc_cuda import logs
from runsc_cuda.cli import INTERCEPTED
from runsc_cuda.errors import ShimError
from runsc_cuda.oci.argv import CommandLine
from runsc_cuda.session import open_session, runtime_log_for
from runsc_cuda.signals import StopFlag, deferred_stop


def main(cmd: CommandLine, environ: Mapping[str, str]) -> int:
    """Run an intercepted verb. SIGTERM/SIGINT/SIGHUP only set a flag while it runs: the
    handlers stop at the next step boundary, undo what they did and fail with a message,
    so a stop request never leaves a CUDA process frozen or the runtime log silent."""
    command = importlib.import_module(f"runsc_cuda.commands.{INTERCEPTED[cmd.verb or '']}")
    if not getattr(command, "NEEDS_SESSION", True):
        # doctor reports what would make opening a session fail: it runs without one.
        return int(command.main(cmd, environ))
    report = logs.Reporter(runtime_log_for(cmd), None)
    stop = StopFlag()
    with deferred_stop(stop):
        try:
            session = open_session(cmd, environ, report, stop)
            return int(command.handle(session))
        except ShimError as e:
            report.error(e.message)
            return e.exit_code
        except KeyboardInterrupt:
            report.error("interrupted")
            return 130
        except Exception as e:  # never a traceback for users: one line, details in the log
            import traceback

            report.debug("internal error", traceback=traceback.format_exc())
            report.error(f"internal error: {type(e).__name__}: {e}")
            return 1
