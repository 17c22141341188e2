"""Entry point. Pass-through is the hot path: parse, find runsc, execv. Nothing heavy."""

from __future__ import annotations

import os
import sys

from runsc_cuda import __version__
from runsc_cuda.errors import ShimError
from runsc_cuda.oci.argv import ArgvError, CommandLine, parse
from runsc_cuda.oci.runsc import exec_runsc, find_runsc

# The verbs runsc-cuda handles itself, by the module of runsc_cuda.commands that does; every other
# verb is runsc's (execv). Module names only: the pass-through path imports none of them.
INTERCEPTED = {
    "create": "create",
    "run": "create",
    "restore": "restore",
    "checkpoint": "checkpoint",
    "doctor": "doctor.main",
    "gc": "gc",
}


def _early_error(cmd: CommandLine | None, message: str) -> None:
    """Report a failure before any heavy module is loaded: stderr and the runtime log."""
    sys.stderr.write(f"runsc-cuda: {message}\n")
    if cmd is not None and cmd.global_value("log"):
        from runsc_cuda.logs import RuntimeLog

        RuntimeLog(cmd.global_value("log") or "", cmd.global_value("log-format") or "text").write(
            "error", f"runsc-cuda: {message}"
        )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    environ = os.environ
    try:
        cmd: CommandLine | None = parse(argv)
    except ArgvError:
        cmd = None  # runsc will say what is wrong with it
    wants_version = cmd is not None and any(f.name == "version" and f.as_bool() for f in cmd.global_flags)
    if cmd is not None and cmd.verb in INTERCEPTED and not wants_version:
        from runsc_cuda.commands import dispatch

        return dispatch.main(cmd, environ)
    if cmd is not None and cmd.verb == "start":  # CRI sub-container: create's stdio (runsc_cuda/oci/stdio.py)
        from runsc_cuda.oci.stdio import take_create_stdio

        if take_create_stdio(cmd, environ):
            return 0  # restored at create (a pod restored from a checkpoint): running already
    if cmd is not None and cmd.verb in ("kill", "delete"):  # a pod still restoring (oci/restoring.py)
        from runsc_cuda.oci import restoring

        marker = restoring.waiting(cmd, environ)
        if marker is not None and cmd.verb == "kill":
            return restoring.end_restoring_pod(cmd, environ, marker)
        if marker is not None:
            restoring.forget(marker)
    try:
        if cmd is not None and cmd.verb == "kill" and any("all" in t for t in cmd.rest):  # runc.v2 shim (oci/kill.py)
            from runsc_cuda.oci import kill

            if kill.wants_all(cmd):
                return kill.kill_all(argv, environ)
        runsc = find_runsc(environ)
        if wants_version:
            sys.stdout.write(f"runsc-cuda version {__version__}\n")
        exec_runsc(runsc, argv[1:], environ)
    except ShimError as e:
        _early_error(cmd, e.message)
        return e.exit_code
    return 0  # not reached: exec_runsc replaces the process
