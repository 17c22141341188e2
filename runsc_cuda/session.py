"""What an intercepted call works with: config, logs, the real runsc, a runner, a clock."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from runsc_cuda import config as config_mod
from runsc_cuda import logs
from runsc_cuda.errors import ShimError
from runsc_cuda.oci.argv import CommandLine
from runsc_cuda.oci.runsc import DEFAULT_RUNSC_ROOT, exec_runsc, resolve_runsc
from runsc_cuda.runner import Result, Runner
from runsc_cuda.signals import StopFlag


@dataclass
class Session:
    cmd: CommandLine
    environ: Mapping[str, str]
    config: config_mod.Config
    report: logs.Reporter
    runsc: str
    runner: Runner
    cwd: str
    clock: Callable[[], float] = field(default=time.monotonic)
    # Set by SIGTERM/SIGINT/SIGHUP while an intercepted verb runs: the work stops at the
    # next step boundary, rolls back, and the call fails.
    stop: StopFlag = field(default_factory=StopFlag)

    @property
    def runsc_root(self) -> str:
        """runsc's --root for this call (runsc's own default when the caller gives none)."""
        return self.cmd.global_value("root") or DEFAULT_RUNSC_ROOT

    def runsc_argv(self, args: Sequence[str]) -> list[str]:
        """A runsc call with the caller's global flags (``--root`` decides which containers exist)."""
        return [self.runsc, *self.cmd.global_tokens(), *args]

    def call_runsc(self, args: Sequence[str], timeout: float | None = None) -> Result:
        argv = self.runsc_argv(args)
        result = self.runner.run(argv, timeout or self.config.runsc_call_timeout_s)
        self.report.debug("runsc call", argv=argv, rc=result.returncode, seconds=round(result.duration, 4))
        return result

    def ask_runsc(self, args: Sequence[str]) -> Result:
        """A runsc call about the binary itself (``flags``, ``--version``): the caller's global flags
        less the nvproxy ones, which would make an old runsc print only its usage."""
        kept = [t for flag in self.cmd.global_flags if not flag.name.startswith("nvproxy") for t in flag.tokens]
        argv = [self.runsc, *kept, *args]
        result = self.runner.run(argv, self.config.runsc_call_timeout_s)
        self.report.debug("runsc call", argv=argv, rc=result.returncode, seconds=round(result.duration, 4))
        return result

    def interrupted(self) -> str | None:
        """``interrupted by SIGTERM`` once a stop was asked for, else None."""
        return f"interrupted by {self.stop.name()}" if self.stop() else None

    def become_runsc(self, tokens: Sequence[str]) -> None:
        """Hand over to runsc (``execv``) unless a stop was asked for first."""
        why = self.interrupted()
        if why is not None:
            raise ShimError(f"{self.cmd.verb}: {why} before runsc started; nothing was changed in the sandbox")
        exec_runsc(self.runsc, list(tokens), self.environ)


def runtime_log_for(cmd: CommandLine) -> logs.RuntimeLog | None:
    path = cmd.global_value("log")
    if not path:
        return None
    return logs.RuntimeLog(path, cmd.global_value("log-format") or "text")


def open_session(
    cmd: CommandLine, environ: Mapping[str, str], report: logs.Reporter, stop: StopFlag | None = None
) -> Session:
    """Load config, set up the detailed log, find runsc. Raises ShimError."""
    from runsc_cuda.oci.runsc import child_environ

    cfg = config_mod.load(environ)
    debug_flag = cmd.global_flag("debug")
    level = "debug" if debug_flag is not None and debug_flag.as_bool() else cfg.log_level
    report.logger = logs.detail_logger(cfg.log_file, level)
    report.context = {"verb": cmd.verb}
    runsc = resolve_runsc(cfg.runsc, environ.get("PATH"))
    return Session(
        cmd=cmd,
        environ=environ,
        config=cfg,
        report=report,
        runsc=runsc,
        runner=Runner(child_environ(environ), cfg.max_output_bytes),
        cwd=os.getcwd(),
        stop=stop if stop is not None else StopFlag(),
    )
