"""checkpoint: freeze every CUDA process, let runsc save the sandbox, thaw if it keeps running.

Docker and containerd pause the container first (pause -> checkpoint -> resume);
the exec engine resumes it for the CUDA work and leaves it as it found it.
"""

from __future__ import annotations

from dataclasses import dataclass

from runsc_cuda.commands.create import container_id, translated_args
from runsc_cuda.cuda import host, protocol
from runsc_cuda.cuda.freezer import Freezer, Interrupted, StepError, Timeouts
from runsc_cuda.errors import ShimError
from runsc_cuda.image import sidecar, tuning
from runsc_cuda.lock import container_lock
from runsc_cuda.oci import help, spec
from runsc_cuda.oci.argv import Flag, VerbArgs
from runsc_cuda.oci.sandbox import ContainerState, Sandbox
from runsc_cuda.runner import Result
from runsc_cuda.session import Session


@dataclass
class Target:
    """A checkpoint call that concerns a GPU container."""

    cid: str
    args: VerbArgs
    state: ContainerState
    image: str
    tune: tuning.Plan | None = None


def replay(result: Result) -> None:
    """Give runsc's own output to our caller, as if it had been runsc's process."""
    import sys

    if result.stdout:
        sys.stdout.buffer.write(result.stdout)
        sys.stdout.flush()
    if result.stderr:
        sys.stderr.buffer.write(result.stderr)
        sys.stderr.flush()


def runsc_verb(session: Session, verb: str, args: VerbArgs) -> Result:
    argv = session.runsc_argv([verb, *args.tokens()])
    result = session.runner.run(argv, session.config.checkpoint_timeout_s)
    replay(result)
    return result


def pass_through(session: Session, args: VerbArgs) -> int:
    session.become_runsc(session.cmd.with_rest(args.tokens()).tokens()[1:])
    return 0  # not reached


def require_mount(cid: str, state: ContainerState) -> None:
    """Fail before anything is frozen when the container cannot run cuda-checkpoint."""
    bundle = spec.read(state.bundle)
    mount = spec.mount_at(bundle.doc, spec.CUDA_CHECKPOINT_DEST)
    if mount is None:
        raise ShimError(
            f"GPU container {cid} has no cuda-checkpoint mount at "
            f"{spec.CUDA_CHECKPOINT_DEST} (it was not created through runsc-cuda, or the host had no "
            "cuda-checkpoint then); nothing was frozen"
        )


def handle(session: Session) -> int:
    args = translated_args(session, "checkpoint")
    cid = container_id(args)
    image = args.value("image-path")
    if cid is None or not image:
        return pass_through(session, args)  # runsc says what is missing
    try:
        return checkpoint(session, args, cid, image)
    except ShimError as e:
        prefix = f"checkpoint of {cid} failed"
        if e.message.startswith((prefix, f"cannot checkpoint {cid}")):
            raise
        raise ShimError(f"{prefix}: {e.message}", e.exit_code) from None


def checkpoint(session: Session, args: VerbArgs, cid: str, image: str) -> int:
    sandbox = Sandbox(session, cid)
    # Never pass a checkpoint through on a failed look: runsc would save CUDA processes unfrozen.
    state = sandbox.state()
    bundle = spec.read(state.bundle)
    gpu = spec.gpu_request(bundle.doc)
    cfg = session.config
    root = session.cmd.global_value("root") or "/var/run/runsc"
    if not gpu.wanted:
        tune = tuning.for_checkpoint(session, cid, image, args, bundle.doc, gpu=False)
        if tune is None:
            session.report.debug("not a GPU container: checkpoint passed through", container=cid)
            return pass_through(session, args)
        with container_lock(cfg.state_dir, root, cid, cfg.lock_wait_s):
            return plain(session, Target(cid, tune.apply(args), sandbox.state(), image, tune))
    with container_lock(cfg.state_dir, root, cid, cfg.lock_wait_s):
        state = sandbox.state()
        flags = help.runsc_flags(session, "checkpoint")
        chosen = help.choose(cfg.engine, help.NATIVE_FLAG in flags)
        require_mount(cid, state)
        tune = tuning.for_checkpoint(session, cid, image, args, bundle.doc, gpu=True)
        target = Target(cid, tune.apply(args) if tune else args, state, image, tune)
        session.report.info(f"checkpoint of GPU container {cid}: engine {chosen}", container=cid, engine=chosen)
        if chosen == "native":
            return native(session, sandbox, target)
        return ExecCheckpoint(session, sandbox, target).run()


def record(
    session: Session,
    target: Target,
    engine_name: str,
    procs: tuple[sidecar.CudaProcess, ...],
    timings: dict[str, float],
) -> sidecar.Sidecar:
    """The image's sidecar (written by ``commit``: the last step of a checkpoint)."""
    gpu = engine_name != "none"
    info = host.read_gpu_info(session.config.proc_driver_nvidia) if gpu else host.GpuInfo()
    return sidecar.Sidecar(
        engine=engine_name,
        container=target.cid,
        runsc_version=help.runsc_version(session),
        driver_version=info.driver_version,
        gpus=info.gpus,
        cuda_processes=procs,
        leave_running=target.args.is_set("leave-running"),
        timings={k: round(v, 6) for k, v in timings.items()},
        options={
            f.name: f.value if f.value is not None else True
            for f in target.args.flags
            if f.name not in ("image-path", "work-path")
        },
        tuning=tuning.sidecar_record(target.tune, target.image),
        created=sidecar.now_rfc3339(),
    )


def commit(session: Session, target: Target, entry: sidecar.Sidecar) -> None:
    """Write the sidecar, which makes the image one runsc-cuda restores; a stop asked for before it fails the call."""
    why = session.interrupted()
    if why is not None:
        raise ShimError(f"{why} after runsc saved the sandbox; the image has no runsc-cuda record")
    sidecar.write(target.image, entry)


def native(session: Session, sandbox: Sandbox, target: Target) -> int:
    args = target.args
    if args.get(help.NATIVE_FLAG) is None:
        args = args.with_flag(Flag.make(help.NATIVE_FLAG, protocol.CONTAINER_PATH))
    if session.config.sequential and args.get("cuda-checkpoint-sequential") is None:
        args = args.with_flag(Flag.make("cuda-checkpoint-sequential"))
    why = session.interrupted()
    if why is not None:
        raise ShimError(f"checkpoint of {target.cid} failed: {why}; nothing was frozen")
    start = session.clock()
    result = runsc_verb(session, "checkpoint", args)
    seconds = session.clock() - start
    if not result.ok:
        reason = result.error_text() or result.describe()
        after = sweep(session, sandbox, target)
        raise ShimError(f"checkpoint of {target.cid} failed: runsc checkpoint: {reason}{after}", 1)
    session.report.info(
        f"save: runsc checkpoint with CUDA toggled by runsc in {seconds:.3f}s",
        container=target.cid,
        phase="save",
        seconds=round(seconds, 6),
    )
    if target.args.is_set("leave-running"):
        # runsc trusts cuda-checkpoint's exit status; a toggle that did nothing leaves a process frozen.
        after = sweep(session, sandbox, target)
        if after:
            raise ShimError(f"checkpoint of {target.cid} failed: runsc checkpoint succeeded{after}", 1)
    commit(session, target, record(session, target, "native", (), {"save": seconds}))
    return 0


def sweep(session: Session, sandbox: Sandbox, target: Target) -> str:
    """After a native checkpoint (a failed one, or one with --leave-running): thaw every CUDA
    process runsc left frozen.

    runsc undoes its partial toggles when it fails cleanly, but not when it is
    killed or times out mid-save; a failed thaw toggle can leave processes
    checkpointed, and runsc trusts cuda-checkpoint's exit 0. Every process of
    a live container is queried (in parallel) and the frozen ones are brought
    back to running; the pause state is put back as found. Returns what to
    add to the error message: empty when every process was seen running.
    """
    state = sandbox.try_state() or sandbox.try_state()
    if state is None or state.status not in ("running", "paused"):
        return ""
    cfg = session.config
    runner = session.runner
    timeouts = Timeouts(cfg.lock_timeout_ms, cfg.cuda_call_timeout_s)
    freezer = Freezer(sandbox, timeouts, session.clock, max_parallel=cfg.max_parallel_cuda_calls)
    found_paused = target.state.status == "paused"
    paused = state.status == "paused"
    notes: list[str] = []
    frozen: list[int] = []
    left: dict[int, str] = {}
    try:
        if paused:
            sandbox.resume()
            paused = False
        help_text = sandbox.cuda(["--help"], timeouts.call_s)
        caps = protocol.Capabilities.from_help((help_text.stdout + help_text.stderr).decode("utf-8", errors="replace"))
        if not caps.get_state:
            notes.append("runsc-cuda could not check the CUDA processes (this cuda-checkpoint has no --get-state)")
        else:
            freezer.toggle_only = not caps.actions
            frozen, unknown = freezer.frozen(sandbox.pids())
            left = freezer.rollback(frozen) if frozen else {}
            if runner.abandoned_total and frozen:
                runner.reap(timeouts.lock_call_s)
                left = freezer.rollback(frozen)
            if unknown:
                detail = "; ".join(f"PID {p}: {w}" for p, w in unknown.items())
                notes.append(f"runsc-cuda could not check every process: {detail}")
    except ShimError as e:
        notes.append(f"runsc-cuda could not check the CUDA processes: {e}")
    if runner.abandoned_total:
        runner.reap(timeouts.lock_call_s)  # their errors must not land after ours in log.json
    if found_paused and not paused:
        try:
            try:
                sandbox.pause()
            except ShimError:
                sandbox.pause()  # once more: the pause state must be as found
        except ShimError as e:
            notes.append(f"could not pause it again: {e}")
    parts = []
    if left:
        detail = "; ".join(f"PID {p}: {w}" for p, w in sorted(left.items()))
        parts.append(f"runsc left CUDA processes frozen and runsc-cuda could not thaw them all: {detail}")
    elif frozen:
        parts.append(f"runsc left CUDA processes {frozen} frozen: runsc-cuda thawed them")
    parts += notes
    return "".join(f"; {p}" for p in parts)


def plain(session: Session, target: Target) -> int:
    """A container without GPUs whose checkpoint runsc-cuda tunes: runsc saves it with the added flags."""
    start = session.clock()
    result = runsc_verb(session, "checkpoint", target.args)
    if not result.ok:
        reason = result.error_text() or result.describe()
        raise ShimError(f"checkpoint of {target.cid} failed: runsc checkpoint: {reason}", 1)
    commit(session, target, record(session, target, "none", (), {"save": session.clock() - start}))
    return 0


class ExecCheckpoint:
    """The exec engine's checkpoint, with rollback at every step."""

    def __init__(self, session: Session, sandbox: Sandbox, target: Target) -> None:
        self.session = session
        self.sandbox = sandbox
        self.target = target
        self.report = session.report
        cfg = session.config
        self.timeouts = Timeouts(cfg.lock_timeout_ms, cfg.cuda_call_timeout_s)
        self.stop = session.stop
        self.freezer = Freezer(
            sandbox, self.timeouts, session.clock, self.stop, max_parallel=cfg.max_parallel_cuda_calls
        )
        self.was_paused = target.state.status == "paused"
        self.paused_now = self.was_paused
        self.cuda_pids: list[int] = []
        self.leave_running = target.args.is_set("leave-running")

    # --- pause handling -----------------------------------------------------------------

    def ensure_running(self) -> None:
        if self.paused_now:
            self.sandbox.resume()
            self.paused_now = False

    def restore_pause(self) -> None:
        if self.was_paused and not self.paused_now:
            self.sandbox.pause()
            self.paused_now = True

    # --- the run --------------------------------------------------------------------------

    def run(self) -> int:
        try:
            self._run()
        except (StepError, Interrupted, ShimError) as e:
            raise ShimError(self._recover(e)) from None
        return 0

    def _check_capabilities(self) -> None:
        result = self.sandbox.cuda(["--help"], self.timeouts.call_s)
        caps = protocol.Capabilities.from_help((result.stdout + result.stderr).decode("utf-8", errors="replace"))
        if not caps.get_state:
            raise ShimError(
                "the container's cuda-checkpoint has no --get-state (NVIDIA driver older than 555); "
                "the exec engine needs driver 555 or later, or a runsc with --cuda-checkpoint-path (engine native)"
            )
        self.freezer.toggle_only = not caps.actions

    def _save(self) -> None:
        result = runsc_verb(self.session, "checkpoint", self.target.args)
        if not result.ok:
            raise ShimError(f"runsc checkpoint failed: {result.error_text() or result.describe()}")

    def _run(self) -> None:
        freezer = self.freezer
        freezer.check_interrupt()  # a stop asked for while runsc-cuda looked at the container
        self.ensure_running()
        self._check_capabilities()
        candidates = self.sandbox.pids()
        states = freezer.discover(candidates)
        self.cuda_pids = sorted(states)
        self._log("discover", f"{len(states)} CUDA processes among {len(candidates)}")
        freezer.freeze(states)
        for name in ("toggle", "lock", "checkpoint"):
            self._log(name, "done")
        freezer.check_interrupt()
        self.restore_pause()
        freezer.timed("save", self.cuda_pids, self._save)
        self._log("save", "runsc saved the sandbox")
        if self.leave_running:
            self.ensure_running()
            freezer.thaw({pid: protocol.CHECKPOINTED for pid in self.cuda_pids})
            for name in ("toggle", "restore", "unlock"):
                self._log(name, "done")
            self.restore_pause()
        procs = tuple(sidecar.CudaProcess(pid, states[pid], protocol.CHECKPOINTED) for pid in self.cuda_pids)
        entry = record(self.session, self.target, "exec", procs, freezer.timings())
        freezer.check_interrupt()
        commit(self.session, self.target, entry)
        self.report.info(
            f"checkpoint of {self.target.cid} done: {len(self.cuda_pids)} CUDA processes"
            + (", running again" if self.leave_running else ""),
            container=self.target.cid,
            pids=self.cuda_pids,
            timings=freezer.timings(),
        )

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

    def _recover(self, error: Exception) -> str:
        """Bring every CUDA process back to running and the pause state back; the message to report."""
        cid = self.target.cid
        what = f"interrupted by {self.stop.name()}" if isinstance(error, Interrupted) else str(error)
        problems: dict[int, str] = {}
        runner = self.session.runner
        state = self.sandbox.try_state() or self.sandbox.try_state()  # a failed look is not a gone container
        alive = state is None or state.status in ("running", "paused")
        if state is not None:
            self.paused_now = state.status == "paused"
        if alive:
            try:
                if self.cuda_pids:
                    self.ensure_running()
                    problems = self.freezer.rollback(self.cuda_pids)
                if runner.abandoned_total:
                    # A call that outlived its timeout may still change a state (even one that has
                    # finished since the rollback looked): wait for the rest, look again.
                    still = runner.reap(self.timeouts.lock_call_s)
                    if self.cuda_pids:
                        self.ensure_running()
                        problems = self.freezer.rollback(self.cuda_pids)
                    if still:
                        problems[0] = f"{still} cuda-checkpoint call(s) still running"
                self.restore_pause()
            except ShimError as e:
                problems[0] = str(e)
        elif runner.abandoned_total:
            runner.reap(self.timeouts.lock_call_s)  # their errors must not land after ours in log.json
        if problems:
            left = "; ".join(f"PID {p}: {w}" if p else w for p, w in sorted(problems.items()))
            return f"checkpoint of {cid} failed: {what}; rollback incomplete: {left}"
        if alive and self.cuda_pids:
            return f"checkpoint of {cid} failed: {what}; all CUDA processes are running again"
        return f"checkpoint of {cid} failed: {what}"
