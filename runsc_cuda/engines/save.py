"""What every checkpoint shares, whichever engine froze the CUDA processes: the runsc save and the image's record.

The sidecar is written twice: a provisional one just before runsc saves (what
was frozen, which GPUs), removed again when the save fails, and the complete
one after.  So an image that runsc saved always has a record that restores it
correctly (its CUDA processes thawed), even when the disk fills or a stop
request comes after the save; and an image whose save failed has none.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass, replace

from runsc_cuda.cuda import host
from runsc_cuda.errors import ShimError
from runsc_cuda.image import sidecar, tuning
from runsc_cuda.oci import help
from runsc_cuda.oci.argv import VerbArgs
from runsc_cuda.oci.sandbox import ContainerState
from runsc_cuda.runner import Result
from runsc_cuda.session import Session


@dataclass
class Target:
    """One checkpoint call: the container, runsc's flags (tuned), its state when the call came, the image."""

    cid: str
    args: VerbArgs
    state: ContainerState
    image: str
    tune: tuning.Plan | None = None

    @property
    def leave_running(self) -> bool:
        return self.args.is_set("leave-running")

    @property
    def found_paused(self) -> bool:
        return self.state.status == "paused"


def replay(result: Result) -> None:
    """Give runsc's own output to our caller, as if it had been runsc's process."""
    if result.stdout:
        sys.stdout.buffer.write(result.stdout)
        sys.stdout.flush()
    if result.stderr:
        sys.stderr.buffer.write(result.stderr)
        sys.stderr.flush()


def runsc_save(session: Session, target: Target, args: VerbArgs | None = None) -> Result:
    """``runsc checkpoint`` with the caller's global flags; its output is passed on as runsc's own."""
    argv = session.runsc_argv(["checkpoint", *(args or target.args).tokens()])
    result = session.runner.run(argv, session.config.checkpoint_timeout_s)
    replay(result)
    return result


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
        runsc_version=help.version(session),
        driver_version=info.driver_version,
        gpus=info.gpus,
        cuda_processes=procs,
        leave_running=target.leave_running,
        timings={k: round(v, 6) for k, v in timings.items()},
        options={
            f.name: f.value if f.value is not None else True
            for f in target.args.flags
            if f.name not in ("image-path", "work-path")
        },
        tuning=tuning.sidecar_record(target.tune, target.image),
        created=sidecar.now_rfc3339(),
    )


def provisional(session: Session, target: Target, entry: sidecar.Sidecar) -> bool:
    """Before the save: the image's record as far as it is known (``discard`` it if the save fails).
    The folder is made as runsc would make it (0755); whether it was made here."""
    made = False
    if not os.path.isdir(target.image):
        try:
            os.makedirs(target.image, 0o755)
            made = True
        except OSError as e:
            raise ShimError(f"cannot create {target.image}: {e.strerror}") from None
    try:
        sidecar.write(target.image, entry)
    except ShimError:
        discard(target, made)
        raise
    return made


def discard(target: Target, made: bool) -> None:
    """The save failed: its image is no runsc-cuda image (and a folder made for it goes if empty)."""
    with contextlib.suppress(OSError):
        os.unlink(os.path.join(target.image, sidecar.NAME))
    if made:
        with contextlib.suppress(OSError):
            os.rmdir(target.image)


def saved(target: Target) -> str:
    """What a failure after the save adds: what became of the container, and that the image restores."""
    if target.leave_running:
        return f"; runsc saved the sandbox: the image at {target.image} restores"
    return f"; the container was stopped (runsc saved it: the image at {target.image} restores)"


def commit(session: Session, target: Target, entry: sidecar.Sidecar) -> None:
    """Complete the image's record (timings, what the image holds); a stop asked for before it fails the call.

    Either way the provisional record stays: the image restores correctly.
    """
    why = session.interrupted()
    if why is not None:
        raise ShimError(f"{why} after the save{saved(target)}")
    entry = replace(entry, tuning=tuning.sidecar_record(target.tune, target.image), created=sidecar.now_rfc3339())
    try:
        sidecar.write(target.image, entry)
    except ShimError as e:
        raise ShimError(f"{e}{saved(target)}") from None


def guarded_save(session: Session, target: Target, entry: sidecar.Sidecar, args: VerbArgs | None = None) -> Result:
    """The provisional record, then ``runsc checkpoint``; the record goes again unless runsc saved."""
    made = provisional(session, target, entry)
    try:
        result = runsc_save(session, target, args)
    except BaseException:
        discard(target, made)
        raise
    if not result.ok:
        discard(target, made)
    return result


def plain(session: Session, target: Target) -> int:
    """A container without GPUs whose checkpoint runsc-cuda tunes: runsc saves it with the added flags."""
    start = session.clock()
    entry = record(session, target, "none", (), {})
    result = guarded_save(session, target, entry)
    if not result.ok:
        raise ShimError(f"runsc checkpoint: {result.error_text() or result.describe()}")
    commit(session, target, replace(entry, timings={"save": round(session.clock() - start, 6)}))
    return 0
