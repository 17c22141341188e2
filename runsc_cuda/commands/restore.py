"""restore: patch the bundle as create does, check the image fits this host, thaw after runsc.

Docker's ``docker start --checkpoint`` calls restore without create, so the
bundle is patched here too: runsc compares the mounts with the checkpointed
spec.  Everything is read and checked before the bundle is written, so a
refused restore (``cannot restore ID: ...; nothing was changed``) changes
nothing; a later failure reads ``restore of ID failed: ...``.
"""

from __future__ import annotations

import dataclasses
from contextlib import ExitStack
from dataclasses import dataclass

from runsc_cuda import files
from runsc_cuda.cuda import host, protocol
from runsc_cuda.engines.exec_engine import ExecRestore
from runsc_cuda.errors import ShimError
from runsc_cuda.image import background, sidecar, tuning
from runsc_cuda.lock import session_lock
from runsc_cuda.modifier import Prepared, prepare, translated_args
from runsc_cuda.oci import spec
from runsc_cuda.oci.argv import VerbArgs
from runsc_cuda.oci.verbs import container_id
from runsc_cuda.session import Session


@dataclass(frozen=True)
class Plan:
    """A restore call read and checked: the image's record and the image options to add."""

    args: VerbArgs
    image: str | None
    record: sidecar.Sidecar | None
    tune: tuning.Plan | None


def handle(session: Session) -> int:
    args = translated_args(session, "restore")
    cid = container_id(args) or ""
    try:
        plan = check(session, args, cid)
    except ShimError as e:
        raise ShimError(e.message, e.exit_code, refused=True).framed_as("restore", cid) from None
    try:
        return restore(session, plan)
    except ShimError as e:
        raise e.framed_as("restore", cid) from None


def check(session: Session, args: VerbArgs, cid: str) -> Plan:
    """Read the image's sidecar and the bundle, and decide the image options; changes nothing."""
    image = args.value("image-path")
    record = sidecar.read(image) if image else None
    if record is not None and record.engine != "none":
        here = host.read_gpu_info(session.config.proc_driver_nvidia)
        problem = sidecar.mismatch(record.gpu_info, here)
        if problem is not None:
            raise ShimError(f"image {image}: {problem}")
    bundle = spec.read(spec.bundle_dir(args.value("bundle"), session.cwd))
    gpu = spec.gpu_request(bundle.doc).wanted
    if record is not None and record.engine == "exec":
        files.ensure_private_dir(session.config.state_dir)  # the thaw is done under a lock kept there
    return Plan(args, image, record, tuning.for_restore(session, cid, image, args, bundle.doc, gpu))


def tuned(prepared: Prepared, tune: tuning.Plan | None) -> Prepared:
    """The restore call with the image flags that fit this image and the container's settings."""
    if tune is None or not tune.add:
        return prepared
    args = tune.apply(prepared.args)
    return dataclasses.replace(prepared, args=args, cmd=prepared.cmd.with_rest(args.tokens()))


def restore(session: Session, plan: Plan) -> int:
    prepared = tuned(prepare(session, "restore", plan.args), plan.tune)
    record = plan.record
    watch = plan.tune is not None and plan.tune.background
    if (
        record is None
        or record.engine != "exec"
        or all(p.state_saved == protocol.RUNNING for p in record.cuda_processes)
        or prepared.container_id is None
    ):
        # No image sidecar: restore as plain runsc would. Native engine: runsc thaws by itself.
        if watch and prepared.container_id:
            argv = [session.runsc, *prepared.cmd.tokens()[1:]]
            detach = prepared.args.is_set("detach")
            return background.restore_and_watch(session, argv, prepared.container_id, plan.image, detach)
        session.become_runsc(prepared.cmd.tokens()[1:])
        return 0
    with ExitStack() as held:
        held.enter_context(session_lock(session, prepared.container_id))
        # A foreground restore lasts as long as its container: the lock goes once the thaw is done.
        return ExecRestore(session, prepared, record, watch, release=held.close).run()
