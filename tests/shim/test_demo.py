"""The README's demonstration keeps working."""

from __future__ import annotations

import subprocess
import sys

import pytest

from support import REPO


@pytest.mark.parametrize("engine", ["exec", "native"])
def test_the_demo_runs_the_whole_lifecycle(engine: str) -> None:
    out = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "demo.py"), "--engine", engine],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert 'mounts += {"destination": "/usr/local/bin/cuda-checkpoint"' in out.stdout
    assert "runsc --nvproxy=true create" in out.stdout
    assert out.stdout.rstrip().splitlines()[-1].strip().startswith("runsc-cuda: ")
    assert "CUDA processes: {'23': 'running', '24': 'running'}" in out.stdout.split("restore --image-path")[-1]
