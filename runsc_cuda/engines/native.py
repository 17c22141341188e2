"""The native engine: runsc (release-20260608.0+) toggles the CUDA processes itself.

runsc-cuda adds ``--cuda-checkpoint-path`` and checks runsc's work afterwards:
runsc undoes its partial toggles when it fails cleanly, but not when it is
killed or times out mid-save, and it trusts cuda-checkpoint's exit 0.
"""

from __future__ import annotations

from dataclasses import replace

from runsc_cuda import layout
from runsc_cuda.cuda import engine, protocol
from runsc_cuda.cuda.freezer import Freezer, Timeouts
from runsc_cuda.engines.save import Target, commit, guarded_save, record, saved
from runsc_cuda.errors import ShimError, refusal
from runsc_cuda.oci.argv import Flag
from runsc_cuda.oci.sandbox import GONE, GONE_NOTE, UP, Sandbox
from runsc_cuda.session import Session


def checkpoint(session: Session, sandbox: Sandbox, target: Target) -> int:
    args = target.args
    if args.get(engine.NATIVE_FLAG) is None:
        args = args.with_flag(Flag.make(engine.NATIVE_FLAG, layout.CONTAINER_CUDA_CHECKPOINT))
    if session.config.sequential and args.get(engine.SEQUENTIAL_FLAG) is None:
        args = args.with_flag(Flag.make(engine.SEQUENTIAL_FLAG))
    entry = record(session, target, "native", (), {})
    why = session.interrupted()
    if why is not None:
        raise refusal(why)
    start = session.clock()
    try:
        result = guarded_save(session, target, entry, args)
    except BaseException as e:  # runsc may have toggled some processes before whatever this was
        if isinstance(e, SystemExit):
            raise
        what = "interrupted" if isinstance(e, KeyboardInterrupt) else f"internal error: {type(e).__name__}: {e}"
        raise ShimError(f"runsc checkpoint: {what}{sweep(session, sandbox, target)}") from None
    seconds = session.clock() - start
    if not result.ok:
        reason = result.error_text() or result.describe()
        raise ShimError(f"runsc checkpoint: {reason}{sweep(session, sandbox, target)}")
    session.report.info(
        f"save: runsc checkpoint with CUDA toggled by runsc in {seconds:.3f}s",
        container=target.cid,
        phase="save",
        seconds=round(seconds, 6),
    )
    if target.leave_running:
        after = sweep(session, sandbox, target)
        if after:
            raise ShimError(f"runsc checkpoint succeeded{after}{saved(target)}")
    commit(session, target, replace(entry, timings={"save": round(seconds, 6)}))
    return 0


def sweep(session: Session, sandbox: Sandbox, target: Target) -> str:
    """After a native checkpoint (a failed one, or one with --leave-running): thaw every CUDA
    process runsc left frozen.

    Every process of a live container is queried (in parallel) and the frozen
    ones are brought back to running; the pause state is put back as found.
    Returns what to add to the error message: empty when every process was
    seen running.
    """
    state = sandbox.try_state() or sandbox.try_state()
    if state is not None and state.status == GONE:
        return f"; {GONE_NOTE}"
    if state is None or state.status not in UP:
        return ""
    return "".join(f"; {p}" for p in thaw_all(session, sandbox, state.status == "paused", target.found_paused)[0])


def thaw_all(session: Session, sandbox: Sandbox, paused: bool, found_paused: bool) -> tuple[list[str], bool]:
    """Query every process of a live container and thaw the frozen ones; ``paused`` as it is now,
    put back to ``found_paused``.  What to say, and whether every CUDA process was seen running."""
    cfg = session.config
    timeouts = Timeouts(cfg.lock_timeout_ms, cfg.cuda_call_timeout_s)
    freezer = Freezer(sandbox, timeouts, session.clock, max_parallel=cfg.max_parallel_cuda_calls)
    notes: list[str] = []
    frozen: list[int] = []
    left: dict[int, str] = {}
    try:
        if paused:
            sandbox.resume()
            paused = False
        caps = protocol.Capabilities.from_help(sandbox.cuda_help(timeouts.call_s))
        if not caps.get_state:
            notes.append("runsc-cuda could not check the CUDA processes (this cuda-checkpoint has no --get-state)")
        else:
            freezer.toggle_only = not caps.actions
            frozen, unknown = freezer.frozen(sandbox.pids())
            left = freezer.recover(frozen) if frozen else {}
            if unknown:
                detail = "; ".join(f"PID {p}: {w}" for p, w in unknown.items())
                notes.append(f"runsc-cuda could not check every process: {detail}")
    except Exception as e:  # an internal error too: it must not skip the pause below
        what = str(e) if isinstance(e, ShimError) else f"internal error: {type(e).__name__}: {e}"
        notes.append(f"runsc-cuda could not check the CUDA processes: {what}")
    if sandbox.abandoned():
        sandbox.wait_abandoned(timeouts.lock_call_s)  # their errors must not land after ours in log.json
    if found_paused and not paused:
        try:
            try:
                sandbox.pause()
            except ShimError:
                sandbox.pause()  # once more: the pause state must be as found
        except Exception as e:
            notes.append(f"could not pause it again: {e}")
    parts = []
    if left:
        detail = "; ".join(f"PID {p}: {w}" if p else w for p, w in sorted(left.items()))
        parts.append(f"runsc left CUDA processes frozen and runsc-cuda could not thaw them all: {detail}")
    elif frozen:
        parts.append(f"runsc left CUDA processes {frozen} frozen: runsc-cuda thawed them")
    return parts + notes, not left and not notes
