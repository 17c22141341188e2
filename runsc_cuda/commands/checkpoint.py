"""checkpoint: freeze every CUDA process, let runsc save the sandbox, thaw if it keeps running.

A GPU container goes to the engine the config and the installed runsc choose
(``cuda.engine``); a container without GPUs passes straight through, unless
its image options are tuned.  Errors are framed here, once: ``cannot
checkpoint ID: ...; nothing was frozen`` or ``checkpoint of ID failed: ...``.
"""

from __future__ import annotations

from runsc_cuda import layout
from runsc_cuda.cuda import engine
from runsc_cuda.engines import guard, native
from runsc_cuda.engines.exec_engine import ExecCheckpoint
from runsc_cuda.engines.save import Target, plain
from runsc_cuda.errors import ShimError, refusal
from runsc_cuda.image import tuning
from runsc_cuda.lock import session_lock
from runsc_cuda.modifier import translated_args
from runsc_cuda.oci import cri, help, spec
from runsc_cuda.oci.argv import VerbArgs
from runsc_cuda.oci.sandbox import ContainerState, Sandbox
from runsc_cuda.oci.verbs import container_id
from runsc_cuda.session import Session


def pass_through(session: Session, args: VerbArgs) -> int:
    session.become_runsc(session.cmd.with_rest(args.tokens()).tokens()[1:])
    return 0  # not reached


EXEC_OWN_PID_NAMESPACE = (
    "the exec engine cannot reach the CUDA processes of a pod container with a PID namespace of its own "
    "(runsc ps lists the sandbox's PIDs, runsc exec runs in the container's); use runsc's native engine "
    f"(gVisor {engine.NATIVE_RELEASE} or later) or share the pod's process namespace (shareProcessNamespace: true)"
)


def require_mount(cid: str, state: ContainerState) -> None:
    """Refuse before anything is frozen when the container cannot run cuda-checkpoint."""
    bundle = spec.read(state.bundle)
    if spec.mount_at(bundle.doc, layout.CONTAINER_CUDA_CHECKPOINT) is None:
        raise refusal(
            f"GPU container {cid} has no cuda-checkpoint mount at "
            f"{layout.CONTAINER_CUDA_CHECKPOINT} (it was not created through runsc-cuda, or the host had no "
            "cuda-checkpoint then)"
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
        raise e.framed_as("checkpoint", cid, unchanged="nothing was frozen") from None


def checkpoint(session: Session, args: VerbArgs, cid: str, image: str) -> int:
    sandbox = Sandbox(session, cid)
    # Never pass a checkpoint through on a failed look: runsc would save CUDA processes unfrozen.
    state = sandbox.state()
    bundle = spec.read(state.bundle)
    gpu = spec.gpu_request(bundle.doc)
    cfg = session.config
    if not gpu.wanted:
        tune = tuning.for_checkpoint(session, cid, image, args, bundle.doc, gpu=False)
        if tune is None:
            session.report.debug("not a GPU container: checkpoint passed through", container=cid)
            return pass_through(session, args)
        with session_lock(session, cid):
            return plain(session, Target(cid, tune.apply(args), sandbox.state(), image, tune))
    with session_lock(session, cid):
        guard.recover_leftover(session, session.runsc_root, cid)  # a runsc-cuda killed mid-checkpoint, its guardian too
        state = sandbox.state()
        chosen = engine.choose(cfg.engine, help.read(session, "checkpoint").knows(engine.NATIVE_FLAG))
        require_mount(cid, state)
        if chosen == "exec" and cri.own_pid_namespace(bundle.doc):
            raise refusal(EXEC_OWN_PID_NAMESPACE)
        tune = tuning.for_checkpoint(session, cid, image, args, bundle.doc, gpu=True)
        target = Target(cid, tune.apply(args) if tune else args, state, image, tune)
        session.report.info(f"checkpoint of GPU container {cid}: engine {chosen}", container=cid, engine=chosen)
        with guard.guarded(session, cid, session.runsc_root, chosen):  # thaws even if this process is killed
            if chosen == "native":
                return native.checkpoint(session, sandbox, target)
            return ExecCheckpoint(session, sandbox, target).run()
