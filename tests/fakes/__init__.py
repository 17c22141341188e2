"""Test doubles for gVisor's runsc and NVIDIA's cuda-checkpoint.

``install(folder)`` writes executables ``runsc`` and ``cuda-checkpoint`` there
that run the fakes with this interpreter (``-S``: they use only the stdlib).
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def _wrapper(module: str) -> str:
    return (
        f"#!{sys.executable} -S\nimport sys\nsys.path.insert(0, {HERE!r})\nimport {module}\n{module}.main(sys.argv)\n"
    )


def install(folder: str) -> dict[str, str]:
    """Write the fake programs into ``folder``; return their paths by name."""
    os.makedirs(folder, exist_ok=True)
    paths = {}
    for name, module in (("runsc", "fake_runsc"), ("cuda-checkpoint", "fake_cuda_checkpoint")):
        path = os.path.join(folder, name)
        with open(path, "w") as f:
            f.write(_wrapper(module))
        os.chmod(path, 0o755)
        paths[name] = path
    return paths
