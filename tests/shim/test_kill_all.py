"""``kill --all`` of a container whose sandbox has exited (runsc_cuda/oci/kill.py): runc's words for the shim."""

from __future__ import annotations

import pytest

from runsc_cuda.oci import kill
from runsc_cuda.oci.argv import parse

from support import Shim

GONE = """#!/bin/sh
echo "$*" >> "$CALLS"
echo "sandbox is not running" >&2
exit 128
"""


@pytest.mark.parametrize(
    ("rest", "wanted"),
    [
        (["--all", "c1", "9"], True),
        (["-all", "c1", "9"], True),
        (["--all=true", "c1", "9"], True),
        (["--all=false", "c1", "9"], False),
        (["c1", "9"], False),
        (["c1", "--all"], False),  # after the id: an argument, not a flag
        (["--pid", "3", "c1", "9"], False),
    ],
)
def test_wants_all(rest: list[str], wanted: bool) -> None:
    assert kill.wants_all(parse(["runsc-cuda", "--root", "/r", "kill", *rest])) is wanted


def test_kill_all_of_an_exited_sandbox_says_container_not_running(shim: Shim) -> None:
    runsc = shim.bin / "gone-runsc"
    runsc.write_text(GONE)
    runsc.chmod(0o755)
    calls = shim.tmp / "calls"
    result = shim.run("kill", "--all", "c1", "9", env={"RUNSC_CUDA_RUNSC": str(runsc), "CALLS": str(calls)})
    assert result.returncode == 128
    assert b"sandbox is not running" in result.stderr
    assert b"container not running" in result.stderr  # what containerd's checkKillError matches
    assert calls.read_text().split() == ["--root", str(shim.root), "kill", "--all", "c1", "9"]


def test_plain_kill_is_passed_through_unchanged(shim: Shim) -> None:
    runsc = shim.bin / "gone-runsc"
    runsc.write_text(GONE)
    runsc.chmod(0o755)
    result = shim.run("kill", "c1", "9", env={"RUNSC_CUDA_RUNSC": str(runsc), "CALLS": str(shim.tmp / "calls")})
    assert result.returncode == 128
    assert b"container not running" not in result.stderr
