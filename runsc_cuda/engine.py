"""Which checkpoint engine to use, and what the installed runsc can do.

native: runsc >= release-20260608 toggles CUDA processes itself
(``checkpoint --cuda-checkpoint-path``) and thaws them on restore.
exec: runsc-cuda orchestrates cuda-checkpoint through ``runsc exec``.
"""

from __future__ import annotations

import re

from runsc_cuda.errors import ShimError
from runsc_cuda.session import Session

NATIVE_FLAG = "cuda-checkpoint-path"


def runsc_flags(session: Session, verb: str) -> set[str]:
    """The flags ``runsc help VERB`` lists (empty when runsc cannot say)."""
    result = session.call_runsc(["help", verb])
    text = (result.stdout + result.stderr).decode("utf-8", errors="replace")
    return set(re.findall(r"^\s+-{1,2}([A-Za-z0-9][\w-]*)", text, flags=re.MULTILINE))


def choose(configured: str, runsc_has_native: bool) -> str:
    """The engine to run: a pure function of the config and runsc's abilities."""
    if configured == "auto":
        return "native" if runsc_has_native else "exec"
    if configured == "native" and not runsc_has_native:
        raise ShimError(
            "engine = native, but this runsc's checkpoint has no --cuda-checkpoint-path "
            "(it arrived in release-20260608.0); upgrade runsc or set engine = exec"
        )
    return configured


def runsc_version(session: Session) -> str:
    result = session.call_runsc(["--version"])
    first = result.stdout.decode("utf-8", errors="replace").strip().splitlines()
    return first[0][:200] if first else ""
