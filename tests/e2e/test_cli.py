"""runsc-cuda run by hand (as one runs runsc) on containers that Docker started."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import DockerContainers
from .stack import Stack, run

pytestmark = pytest.mark.e2e


def runsc_cuda_by_hand(stack: Stack, *args: str, cwd: str = "/") -> tuple[int, str]:
    """bin/runsc-cuda (the project's program with the stack's config) with Docker's --root, from ``cwd``."""
    result = run([str(stack.bin / "runsc-cuda"), "--root", str(stack.docker_runtime_root), *args], 120, cwd=cwd)
    return result.returncode, result.stdout + result.stderr


def test_plain_runsc_checkpoints_a_container_from_any_folder(docker: DockerContainers, stack: Stack) -> None:
    """The baseline for the next test: runsc needs no bundle folder to checkpoint."""
    name = docker.start_counter("runsc")
    image = stack.root / f"by-hand-{name}"
    result = run(
        [stack.tools.runsc, "--root", str(stack.docker_runtime_root), "checkpoint", "--leave-running",
         "--image-path", str(image), docker.container_id(name)],
        120,
        cwd="/",
    )  # fmt: skip
    assert result.returncode == 0, result.describe()
    assert (image / "checkpoint.img").exists()


def test_runsc_cuda_checkpoints_a_container_from_any_folder_like_runsc(docker: DockerContainers, stack: Stack) -> None:
    name = docker.start_counter("runsc-cuda")
    image = stack.root / f"by-hand-{name}"
    status, output = runsc_cuda_by_hand(
        stack, "checkpoint", "--leave-running", "--image-path", str(image), docker.container_id(name)
    )
    assert status == 0, output
    assert Path(image, "checkpoint.img").exists()
