"""What every checkpoint shares, whichever engine froze the CUDA processes: the runsc save and the image's record.

The sidecar is written last: an image without one is not a runsc-cuda image,
so a checkpoint that fails before this step never leaves one that restores
with its CUDA processes frozen.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

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


def commit(session: Session, target: Target, entry: sidecar.Sidecar) -> None:
    """Write the sidecar, which makes the image one runsc-cuda restores; a stop asked for before it fails the call."""
    why = session.interrupted()
    if why is not None:
        raise ShimError(f"{why} after runsc saved the sandbox; the image has no runsc-cuda record")
    sidecar.write(target.image, entry)


def plain(session: Session, target: Target) -> int:
    """A container without GPUs whose checkpoint runsc-cuda tunes: runsc saves it with the added flags."""
    start = session.clock()
    result = runsc_save(session, target)
    if not result.ok:
        raise ShimError(f"runsc checkpoint: {result.error_text() or result.describe()}")
    commit(session, target, record(session, target, "none", (), {"save": session.clock() - start}))
    return 0
