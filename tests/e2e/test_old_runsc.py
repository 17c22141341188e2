"""Debian 12's own runsc package (gVisor of December 2022), the real binary: no nvproxy.

scripts/ci-install.sh unpacks it into .cache/runsc-debian (``apt-get download runsc`` and
``dpkg -x``; never installed over the system).  No container is started: runsc-cuda refuses
a GPU container before runsc would, so these need neither root nor the Docker stack.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from runsc_cuda.oci import help

from support import REPO, Shim, fixture_spec

OLD_RUNSC = REPO / ".cache" / "runsc-debian" / "usr" / "bin" / "runsc"
UNAVAILABLE = REPO / ".cache" / "runsc-debian-unavailable"


@pytest.fixture
def old_runsc() -> Path:
    if not OLD_RUNSC.is_file():
        why = UNAVAILABLE.read_text().strip() if UNAVAILABLE.is_file() else "scripts/ci-install.sh has not run"
        pytest.skip(f"no Debian runsc package in {OLD_RUNSC.parent.parent.parent}: {why}")
    return OLD_RUNSC


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=60, check=False)


def test_what_debians_runsc_says_about_itself(old_runsc: Path) -> None:
    """What runsc-cuda relies on: its version line, `runsc flags` on stderr without --nvproxy, exit 2 on it."""
    version = run(str(old_runsc), "--version")
    assert version.returncode == 0
    assert version.stdout.splitlines()[0] == "runsc version 0.0~20221219.0"
    flags = run(str(old_runsc), "flags")
    assert flags.returncode == 0 and flags.stdout == ""
    parsed = help.RunscHelp.parse(flags.stderr)
    assert parsed.knows("root") and parsed.knows("platform")
    assert help.has_nvproxy(parsed) is False
    rejected = run(str(old_runsc), "--nvproxy=true", "--version")
    assert rejected.returncode == 2
    assert rejected.stderr.splitlines()[0] == "flag provided but not defined: -nvproxy"
    checkpoint = help.RunscHelp.parse(run(str(old_runsc), "help", "checkpoint").stdout)
    assert checkpoint.flags == {"image-path", "leave-running", "work-path"}


def test_a_gpu_container_is_refused_in_one_line(shim: Shim, old_runsc: Path) -> None:
    shim.env["RUNSC_CUDA_RUNSC"] = str(old_runsc)
    bundle = shim.bundle("gpu", fixture_spec("gpu-devices"))
    raw = (bundle / "config.json").read_bytes()
    out = shim.docker(bundle, "create", "--bundle", str(bundle), "c1")
    assert out.returncode == 1
    expected = (
        f"runsc-cuda: this runsc (0.0~20221219.0, {old_runsc}) cannot run GPU containers: it has no --nvproxy; "
        f"install gVisor {help.GPU_RELEASE} or later ({help.WHERE_TO_GET})"
    )
    assert out.stderr.decode().splitlines() == [expected]
    assert shim.last_error(bundle) == expected
    assert (bundle / "config.json").read_bytes() == raw


def test_doctor_fails_nvproxy_and_names_the_release(shim: Shim, old_runsc: Path) -> None:
    shim.env["RUNSC_CUDA_RUNSC"] = str(old_runsc)
    out = shim.run("doctor", "--json", "--proc-driver-nvidia", str(shim.tmp / "no-proc"))
    assert out.returncode == 1
    found = {c["id"]: c for c in json.loads(out.stdout)["checks"]}
    assert found["runsc.runs"]["status"] == "ok"
    assert found["runsc.version"]["detail"] == "0.0~20221219.0"
    assert found["runsc.nvproxy"]["status"] == "fail" and found["runsc.nvproxy"]["required"]
    assert found["runsc.native"]["status"] == "fail"
    assert found["runsc.image_flags"]["status"] == "fail"
