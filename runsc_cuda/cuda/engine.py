"""Which checkpoint engine freezes the CUDA processes: a pure function of the config and runsc.

native: runsc >= release-20260608.0 toggles CUDA processes itself
(``checkpoint --cuda-checkpoint-path``) and thaws them on restore.
exec: runsc-cuda orchestrates cuda-checkpoint through ``runsc exec``.
"""

from __future__ import annotations

from runsc_cuda.errors import ShimError
from runsc_cuda.oci.help import GPU_RELEASE

NATIVE_FLAG = "cuda-checkpoint-path"
NATIVE_RELEASE = GPU_RELEASE  # the first runsc release whose checkpoint has NATIVE_FLAG (release-20260608.0)
SEQUENTIAL_FLAG = "cuda-checkpoint-sequential"


def choose(configured: str, runsc_has_native: bool) -> str:
    """The engine to run; ShimError when the config asks for one this runsc cannot be."""
    if configured == "auto":
        return "native" if runsc_has_native else "exec"
    if configured == "native" and not runsc_has_native:
        raise ShimError(
            f"engine = native, but this runsc's checkpoint has no --{NATIVE_FLAG} "
            f"(it arrived in {NATIVE_RELEASE}); upgrade runsc or set engine = exec"
        )
    return configured
