"""The exec engine: runsc-cuda freezes and thaws the CUDA processes itself, through ``runsc exec``.

Checkpoint: discover -> lock -> checkpoint -> (runsc saves) -> [restore -> unlock
with --leave-running], all in parallel, every step verified, and any way out of
it brings every CUDA process back to running (``Freezer.recover``) and the
pause state back as found.  Docker and containerd pause the container first;
the freeze needs it running (runsc exec refuses a paused container).

Restore: runsc restores the sandbox, then runsc-cuda thaws the processes the
image's sidecar lists that the restored sandbox has (``runsc ps``); a list that
names others is an error, after those are thawed.
"""

from __future__ import annotations

import subprocess
import traceback
from collections.abc import Callable
from dataclasses import replace

from runsc_cuda.cuda import protocol
from runsc_cuda.cuda.freezer import Freezer, Interrupted, StepError, Timeouts
from runsc_cuda.engines.save import Target, commit, guarded_save, record, saved
from runsc_cuda.errors import ShimError
from runsc_cuda.image import background, sidecar
from runsc_cuda.modifier import Prepared
from runsc_cuda.oci.sandbox import GONE, GONE_NOTE, UP, Sandbox
from runsc_cuda.session import Session
from runsc_cuda.signals import forwarded_to

NEWCOMER_ROUNDS = 3  # times the processes are listed again for ones started during the freeze


def freezer_for(session: Session, sandbox: Sandbox, stoppable: bool = False) -> Freezer:
    cfg = session.config
    return Freezer(
        sandbox,
        Timeouts(cfg.lock_timeout_ms, cfg.cuda_call_timeout_s),
        session.clock,
        session.stop if stoppable else (lambda: False),
        max_parallel=cfg.max_parallel_cuda_calls,
    )


def describe(error: BaseException, session: Session) -> str:
    """What went wrong, for a message: a failed step or call as it is, anything else as an internal error."""
    if isinstance(error, Interrupted):
        return f"interrupted by {session.stop.name()}"
    if isinstance(error, (StepError, ShimError)):
        return str(error)
    if isinstance(error, KeyboardInterrupt):
        return "interrupted"
    session.report.debug("internal error", traceback="".join(traceback.format_exception(error)))
    return f"internal error: {type(error).__name__}: {error}"


class ExecCheckpoint:
    """The exec engine's checkpoint, with rollback at every step."""

    def __init__(self, session: Session, sandbox: Sandbox, target: Target) -> None:
        self.session = session
        self.sandbox = sandbox
        self.target = target
        self.report = session.report
        self.freezer = freezer_for(session, sandbox, stoppable=True)
        self.timeouts = self.freezer.timeouts
        self.paused_now = target.found_paused
        self.cuda_pids: list[int] = []
        self.states: dict[int, str] = {}  # the CUDA processes as found
        self.entry: sidecar.Sidecar | None = None  # the image's record, written before the save
        self.saved = False  # runsc saved the sandbox: the image restores

    # --- pause handling -----------------------------------------------------------------

    def ensure_running(self) -> None:
        if self.paused_now:
            self.sandbox.resume()
            self.paused_now = False

    def restore_pause(self) -> None:
        if self.target.found_paused and not self.paused_now:
            self.sandbox.pause()
            self.paused_now = True

    # --- the run --------------------------------------------------------------------------

    def run(self) -> int:
        try:
            self._run()
        except BaseException as e:  # every way out of a freeze rolls back, an internal error too
            if isinstance(e, SystemExit):
                raise
            raise ShimError(self._recover(e), 130 if isinstance(e, KeyboardInterrupt) else 1) from None
        return 0

    def _check_capabilities(self) -> None:
        caps = protocol.Capabilities.from_help(self.sandbox.cuda_help(self.timeouts.call_s))
        if not caps.get_state:
            raise ShimError(
                "the container's cuda-checkpoint has no --get-state (NVIDIA driver older than 555); "
                "the exec engine needs driver 555 or later, or a runsc with --cuda-checkpoint-path (engine native)"
            )
        self.freezer.toggle_only = not caps.actions

    def _save(self) -> None:
        procs = tuple(sidecar.CudaProcess(pid, self.states[pid], protocol.CHECKPOINTED) for pid in self.cuda_pids)
        self.entry = record(self.session, self.target, "exec", procs, self.freezer.timings())
        self.freezer.check_interrupt()
        result = guarded_save(self.session, self.target, self.entry)
        self.saved = result.ok
        if not result.ok:
            raise ShimError(f"runsc checkpoint failed: {result.error_text() or result.describe()}")

    def _run(self) -> None:
        freezer = self.freezer
        freezer.check_interrupt()  # a stop asked for while runsc-cuda looked at the container
        self.ensure_running()
        self._check_capabilities()
        candidates = self.sandbox.pids()
        states = self.states = freezer.discover(candidates)
        self.cuda_pids = sorted(states)
        self._log("discover", f"{len(states)} CUDA processes among {len(candidates)}")
        freezer.freeze(states)
        for name in ("toggle", "lock", "checkpoint"):
            self._log(name, "done")
        freezer.check_interrupt()
        self.restore_pause()
        self._freeze_newcomers(set(candidates), states)
        freezer.timed("save", self.cuda_pids, self._save)
        self._log("save", "runsc saved the sandbox")
        if self.target.leave_running:
            self.ensure_running()
            freezer.thaw(dict.fromkeys(self.cuda_pids, protocol.CHECKPOINTED))
            for name in ("toggle", "restore", "unlock"):
                self._log(name, "done")
            self.restore_pause()
        freezer.check_interrupt()
        assert self.entry is not None
        commit(self.session, self.target, replace(self.entry, timings=dict(freezer.timings())))
        self.report.info(
            f"checkpoint of {self.target.cid} done: {len(self.cuda_pids)} CUDA processes"
            + (", running again" if self.target.leave_running else ""),
            container=self.target.cid,
            pids=self.cuda_pids,
            timings=freezer.timings(),
        )

    def _freeze_newcomers(self, known: set[int], states: dict[int, str]) -> None:
        """List the processes again once the container is paused for the save (nothing new starts
        then): a CUDA process started during the freeze (``docker exec``) is frozen too, or the
        checkpoint fails with everything thawed.  A container found running can still start one
        between this look and runsc's own pause."""
        for round_ in range(NEWCOMER_ROUNDS + 1):
            new = [pid for pid in self.sandbox.pids() if pid not in known]
            if not new:
                return
            if round_ == NEWCOMER_ROUNDS:
                raise ShimError(f"new processes kept starting in the container during the freeze: {new[:10]}")
            known.update(new)
            self.ensure_running()
            found = self.freezer.discover(new)
            self._log("discover", f"{len(found)} CUDA processes among {len(new)} started during the freeze")
            if found:
                states.update(found)
                self.cuda_pids = sorted(states)
                self.freezer.freeze(found)
            self.freezer.check_interrupt()
            self.restore_pause()

    def _log(self, name: str, what: str) -> None:
        phase = self.freezer.last(name)
        if phase is None or (not phase.pids and name != "discover"):
            return
        self.report.info(
            f"{name}: {what} in {phase.seconds:.3f}s (PIDs {phase.pids})",
            container=self.target.cid,
            phase=name,
            seconds=round(phase.seconds, 6),
            pids=phase.pids,
        )

    def _recover(self, error: BaseException) -> str:
        """Bring every CUDA process back to running and the pause state back; what to report."""
        what = describe(error, self.session)
        try:
            return self._rollback(what)
        except Exception as e:  # the guardian sweeps after us (runsc-cuda did not say "done")
            self.report.debug("internal error in the rollback", traceback=traceback.format_exc())
            raise ShimError(f"{what}; rollback incomplete: {describe(e, self.session)}") from None

    def _rollback(self, what: str) -> str:
        problems: dict[int, str] = {}
        state = self.sandbox.try_state() or self.sandbox.try_state()  # a failed look is not a gone container
        alive = state is None or state.status in UP
        if state is not None:
            self.paused_now = state.status == "paused"
        if alive:
            try:
                if self.cuda_pids:
                    self.ensure_running()
                problems = self.freezer.recover(self.cuda_pids)
            except Exception as e:
                problems[0] = describe(e, self.session)
            try:
                self.restore_pause()
            except Exception as e:
                problems[0] = "; ".join(filter(None, [problems.get(0), f"could not pause it again: {e}"]))
        elif self.sandbox.abandoned():
            self.sandbox.wait_abandoned(self.timeouts.lock_call_s)  # their errors must not land after ours
        after = saved(self.target) if self.saved and saved(self.target) not in what else ""
        if problems:
            left = "; ".join(f"PID {p}: {w}" if p else w for p, w in sorted(problems.items()))
            return f"{what}; rollback incomplete: {left}{after}"
        if alive and self.cuda_pids:
            return f"{what}; all CUDA processes are running again{after}"
        if state is not None and state.status == GONE:
            return f"{what}; {GONE_NOTE}{after}"
        return what + after


def shortlist(pids: list[int], shown: int = 10) -> str:
    """``1, 2, 3 and 97 more``: a PID list of any length, in a few words."""
    head = ", ".join(str(p) for p in pids[:shown])
    return head if len(pids) <= shown else f"{head} and {len(pids) - shown} more"


class ExecRestore:
    """Restore an image the exec engine made: runsc restores, runsc-cuda thaws."""

    def __init__(
        self,
        session: Session,
        prepared: Prepared,
        record: sidecar.Sidecar,
        watch: bool = False,
        release: Callable[[], None] = lambda: None,
    ) -> None:
        self.session = session
        self.watch = watch  # a background page load to watch once the container runs
        self.release = release
        self.prepared = prepared
        self.cid = prepared.container_id or ""
        self.sandbox = Sandbox(session, self.cid)
        self.freezer = freezer_for(session, self.sandbox)
        self.states = {p.pid: p.state_saved for p in record.cuda_processes}
        self.disagreement = ""  # the sidecar names processes the restored sandbox does not have

    def run(self) -> int:
        argv = [self.session.runsc, *self.prepared.cmd.tokens()[1:]]
        if self.prepared.args.is_set("detach"):
            return self._detached(argv)
        return self._foreground(argv)

    def _run_runsc(self, argv: list[str]) -> int:
        """runsc restore --detach; its output goes straight to our caller."""
        limit = self.session.config.checkpoint_timeout_s
        try:
            return subprocess.run(argv, env=self.session.runner.environ, timeout=limit, check=False).returncode
        except subprocess.TimeoutExpired:
            raise ShimError(f"runsc restore did not finish in {limit:g}s") from None

    def _detached(self, argv: list[str]) -> int:
        why = self.session.interrupted()
        if why is not None:
            raise ShimError(f"{why} before runsc started", refused=True)
        code = self.freezer.timed("restore-sandbox", [], lambda: self._run_runsc(argv))
        if code < 0:  # killed: runsc wrote no error of its own
            raise ShimError(f"runsc restore was killed by signal {-code}", 128 - code)
        if code != 0:
            return code  # runsc's own error is in the log already
        try:
            self._thaw()  # even after a stop request: never leave a restored CUDA process frozen
        finally:
            self._start_watch()  # a thaw that failed because the background load did: the watcher says so
        why = self.session.interrupted()
        if why is not None:
            raise ShimError(f"{why}; the container was restored and its CUDA processes thawed")
        return 0

    def _foreground(self, argv: list[str]) -> int:
        child = subprocess.Popen(argv, env=self.session.runner.environ)
        with forwarded_to(child):
            if self.sandbox.wait_up(child):
                try:
                    try:
                        self._thaw()
                    finally:
                        self._start_watch()
                except ShimError as e:
                    self.session.report.error(e.framed_as("restore", self.cid).message)
                    child.send_signal(15)
            self.release()
            code = child.wait()
        return code if code >= 0 else 128 - code

    def _start_watch(self) -> None:
        if self.watch:
            background.start(self.session, self.cid, self.prepared.args.value("image-path"))

    def _present(self) -> dict[int, str]:
        """The sidecar's processes that the restored sandbox has (``runsc ps``); a ShimError, after
        those are thawed, when the list names others: the image and the sandbox disagree."""
        try:
            try:
                present = set(self.sandbox.pids())
            except ShimError:
                present = set(self.sandbox.pids())  # once more: a failed look is not an empty sandbox
        except ShimError as e:
            # Never leave a restored CUDA process frozen: thaw the list unchecked, then fail.
            self.disagreement = f"{e}; the image's CUDA processes were thawed without that check"
            return self.states
        missing = sorted(set(self.states) - present)
        if not missing:
            return self.states
        self.disagreement = (
            f"the image's {sidecar.NAME} lists {len(missing)} CUDA processes that the restored sandbox "
            f"does not have (PIDs {shortlist(missing)}); only the {len(self.states) - len(missing)} it has were thawed"
        )
        return {pid: state for pid, state in self.states.items() if pid in present}

    def _thaw(self) -> None:
        self.disagreement = ""
        states = self._present()
        try:
            self._thaw_these(states)
        except ShimError as e:
            raise ShimError(f"{e}; {self.disagreement}" if self.disagreement else str(e)) from None
        if self.disagreement:
            raise ShimError(self.disagreement)

    def _thaw_these(self, states: dict[int, str]) -> None:
        pids = sorted(states)
        try:
            self.freezer.thaw(states)
        except Exception as error:  # an internal error too: the thaw is tried again from the states
            first = describe(error, self.session)
            # Once more from whatever state each process is in now (the calls that outlived
            # their timeout are waited for first: a late one may still change a state).
            left = self.freezer.recover(pids)
            if left:
                detail = "; ".join(f"PID {p}: {w}" if p else w for p, w in sorted(left.items()))
                raise ShimError(f"CUDA processes could not be thawed: {first}; {detail}") from None
            self.session.report.warning(f"restore of {self.cid}: {first}; thawed on the second try")
        timings = self.freezer.timings()
        self.session.report.info(
            f"restore of {self.cid}: {len(pids)} CUDA processes thawed in "
            f"{timings.get('restore', 0) + timings.get('unlock', 0) + timings.get('toggle', 0):.3f}s",
            container=self.cid,
            pids=pids,
            timings=timings,
        )
