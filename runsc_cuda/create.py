"""create / run / restore: patch a GPU bundle, turn nvproxy on, hand over to runsc."""

from __future__ import annotations

from dataclasses import dataclass

from runsc_cuda import host, spec, verbs
from runsc_cuda.argv import CommandLine, Flag, VerbArgs, parse_verb_args
from runsc_cuda.session import Session


@dataclass(frozen=True)
class Prepared:
    """The runsc command line to run, and what was decided on the way."""

    cmd: CommandLine
    args: VerbArgs
    bundle: str
    gpu: spec.GpuRequest
    container_id: str | None


def container_id(args: VerbArgs) -> str | None:
    return args.args[-1] if args.args else None


def with_nvproxy(cmd: CommandLine, wanted: bool) -> CommandLine:
    """Add ``--nvproxy=true`` unless the caller already set nvproxy either way."""
    if not wanted or cmd.global_flag("nvproxy") is not None:
        return cmd
    return cmd.with_global(Flag.make("nvproxy", "true"))


def translated_args(session: Session, verb: str) -> VerbArgs:
    """The verb's flags, runc-only ones dropped or refused (ShimError)."""
    parsed = parse_verb_args(session.cmd.rest, verbs.known_flags(verb))
    translation = verbs.translate(verb, parsed)
    for flag in translation.dropped:
        session.report.debug(f"dropped runc flag {' '.join(flag.tokens)}: gVisor has no use for it")
    for old, new in translation.renamed:
        session.report.debug(f"renamed runc flag {' '.join(old.tokens)} to {' '.join(new.tokens)}")
    return translation.args


def patch_bundle(session: Session, bundle_path: str, cid: str | None) -> spec.GpuRequest:
    """Read the bundle; for a GPU container, mount cuda-checkpoint. A non-GPU bundle is never written."""
    bundle = spec.read(bundle_path)
    gpu = spec.gpu_request(bundle.doc)
    report = session.report
    if not gpu.wanted:
        report.debug("not a GPU container", container=cid, reason=gpu.reason)
        return gpu
    cfg = session.config
    binary = host.find_cuda_checkpoint(cfg.cuda_checkpoint, session.environ, cfg.trust_cuda_checkpoint)
    source: str | None = None
    if binary is None:
        report.warning(f"GPU container {cid}: no cuda-checkpoint on this host; it starts, but checkpoint will not work")
    elif binary.problem is not None:
        report.warning(
            f"GPU container {cid}: not mounting host cuda-checkpoint: {binary.problem}; "
            "it starts, but checkpoint will not work"
        )
    else:
        source = binary.path
    result = spec.patch(bundle.doc, source)
    if result.doc is not None:
        spec.save_atomic(bundle, spec.dumps(result.doc))
    for note in result.notes:
        if "does not replace" in note:
            report.warning(f"GPU container {cid}: {note}")
        elif result.doc is None:
            report.debug(f"GPU container {cid}: {note}", container=cid)
        else:
            report.info(f"GPU container {cid} ({gpu.reason}): {note}", container=cid)
    return gpu


def prepare(session: Session, verb: str, args: VerbArgs | None = None) -> Prepared:
    """Patch the bundle of a create/run/restore call; ``args`` when already translated."""
    args = translated_args(session, verb) if args is None else args
    cid = container_id(args)
    bundle_path = spec.bundle_dir(args.value("bundle"), session.cwd)
    gpu = patch_bundle(session, bundle_path, cid)
    cmd = session.cmd.with_rest(args.tokens())
    if gpu.wanted:
        cmd = with_nvproxy(cmd, session.config.nvproxy)
    return Prepared(cmd, args, bundle_path, gpu, cid)


def handle(session: Session) -> int:
    """create and run: prepare, then become runsc."""
    verb = session.cmd.verb or "create"
    prepared = prepare(session, verb)
    if verb == "create":  # CRI sub-container: stdio and exit through a holder (runsc_cuda/oci/subcontainer.py)
        from runsc_cuda.oci import subcontainer

        code = subcontainer.create(session, prepared.cmd, prepared.bundle, prepared.args)
        if code is not None:
            return code
    session.become_runsc(prepared.cmd.tokens()[1:])
    return 0  # not reached
