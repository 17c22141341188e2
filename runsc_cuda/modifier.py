"""What runsc-cuda changes in a create/run/restore call: runc-only flags, the GPU bundle, nvproxy.

A GPU container's config.json gets the host's cuda-checkpoint mounted
read-only (runsc compares mounts on restore, so the mount is the same every
time); a non-GPU bundle is never written.  The call gets ``--nvproxy=true``
unless the caller set nvproxy either way, and a GPU call that would pass
--nvproxy to a runsc without it (Debian 12's own, gVisor of 2022) is refused
before the bundle is touched (oci.help keeps what it learnt about the binary).
"""

from __future__ import annotations

from dataclasses import dataclass

from runsc_cuda.cuda import host
from runsc_cuda.errors import refusal
from runsc_cuda.logs import Note
from runsc_cuda.oci import help, spec, verbs
from runsc_cuda.oci.argv import CommandLine, Flag, VerbArgs, parse_verb_args
from runsc_cuda.session import Session


@dataclass(frozen=True)
class Prepared:
    """The runsc command line to run, and what was decided on the way."""

    cmd: CommandLine
    args: VerbArgs
    bundle: str
    gpu: spec.GpuRequest
    container_id: str | None


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


def check_runsc_serves_gpus(session: Session, cmd: CommandLine) -> None:
    """Refuse (ShimError) a GPU call whose --nvproxy this runsc does not know: it would only print its usage."""
    if cmd.global_flag(help.NVPROXY_FLAG) is None:
        return
    problem = help.no_nvproxy_problem(session)
    if problem is not None:
        raise refusal(problem)


def patch_bundle(session: Session, bundle_path: str, cid: str | None, cmd: CommandLine) -> spec.GpuRequest:
    """Read the bundle; for a GPU container, check that runsc can serve ``cmd`` and mount
    cuda-checkpoint. A non-GPU bundle is never written."""
    bundle = spec.read(bundle_path)
    gpu = spec.gpu_request(bundle.doc)
    report = session.report
    if not gpu.wanted:
        report.debug("not a GPU container", container=cid, reason=gpu.reason)
        return gpu
    check_runsc_serves_gpus(session, with_nvproxy(cmd, session.config.nvproxy))
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
        report.note(Note(note.level, f"GPU container {cid} ({gpu.reason}): {note.text}"), container=cid)
    return gpu


def prepare(session: Session, verb: str, args: VerbArgs | None = None) -> Prepared:
    """Patch the bundle of a create/run/restore call; ``args`` when already translated."""
    args = translated_args(session, verb) if args is None else args
    cid = verbs.container_id(args)
    bundle_path = spec.bundle_dir(args.value("bundle"), session.cwd)
    cmd = session.cmd.with_rest(args.tokens())
    gpu = patch_bundle(session, bundle_path, cid, cmd)
    if gpu.wanted:
        cmd = with_nvproxy(cmd, session.config.nvproxy)
    return Prepared(cmd, args, bundle_path, gpu, cid)
