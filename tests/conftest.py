"""Fixtures for every tier: runsc-cuda over the fake runsc and cuda-checkpoint; markers by folder."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

import fakes
from support import ENTRY_POINTS, ENV_TEST_BINARY, REPO, Shim, entry_command

pytest_plugins = ["hygiene"]  # tests/hygiene.py: the session fails if it leaves sandboxes or system files behind

# Each folder under tests/ is a tier; the tiers that need more than this machine's Python get a marker.
TIER_MARKERS = {"reliability": "reliability", "e2e": "e2e", "gpu": "gpu"}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--binary",
        default=os.environ.get(ENV_TEST_BINARY, ""),
        help=f"a built runsc-cuda binary to run the shim tests against too (env {ENV_TEST_BINARY})",
    )


def pytest_configure(config: pytest.Config) -> None:
    binary = config.getoption("--binary")
    if binary and not os.access(binary, os.X_OK):
        raise pytest.UsageError(f"--binary / {ENV_TEST_BINARY}: {binary} is not an executable file")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    tests = Path(__file__).resolve().parent
    for item in items:
        try:
            tier = Path(str(item.fspath)).resolve().relative_to(tests).parts[0]
        except ValueError:
            continue
        if tier in TIER_MARKERS:
            item.add_marker(getattr(pytest.mark, TIER_MARKERS[tier]))


def pytest_report_header(config: pytest.Config) -> str:
    binary = config.getoption("--binary")
    if binary:
        return f"runsc-cuda entry points: python module, binary {binary}"
    return (
        "runsc-cuda entry points: python module only; the [binary] cases skip. `make test` builds "
        f"the binary and runs them, or set {ENV_TEST_BINARY}=dist/runsc-cuda-<version>-linux-<arch>/runsc-cuda"
    )


@pytest.fixture(params=ENTRY_POINTS)
def shim(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Shim]:
    """runsc-cuda as the Python module, and as the built binary (see ENTRY_POINTS)."""
    command = entry_command(request.config, request.param)
    bin_dir = tmp_path / "bin"
    paths = fakes.install(str(bin_dir))
    root = tmp_path / "root"
    env = {
        "PATH": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin",
        "PYTHONPATH": str(REPO),
        "RUNSC_CUDA_CONFIG": str(tmp_path / "no-config.toml"),
        "RUNSC_CUDA_CUDA_CHECKPOINT": paths["cuda-checkpoint"],
        "RUNSC_CUDA_NVPROXY": "true",
        "RUNSC_CUDA_STATE_DIR": str(tmp_path / "state"),
        "RUNSC_CUDA_LOCK_TIMEOUT_MS": "500",
        "RUNSC_CUDA_CUDA_CALL_TIMEOUT_S": "20",
        "HOME": str(tmp_path),
    }
    if request.param == "binary":
        del env["PYTHONPATH"]  # the binary carries its own runsc_cuda
    (tmp_path / "no-config.toml").write_text("")
    yield Shim(tmp_path, bin_dir, root, env, paths, command, request.param)
    shutil.rmtree(tmp_path / "state", ignore_errors=True)
