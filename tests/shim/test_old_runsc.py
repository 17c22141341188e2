"""A runsc that cannot serve GPU containers (Debian 12's own, gVisor of 2022: no --nvproxy).

runsc-cuda refuses a GPU create/run/restore with one line in the runtime log
before it touches the bundle; a non-GPU container passes through as before and
costs no extra runsc call.  What runsc-cuda learns about the binary is kept in
``state_dir``, so a second call asks runsc nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runsc_cuda.oci import help

from support import Shim, fixture_spec, stopped_image

OLD = {"FAKE_RUNSC_OLD": "2022"}


def refusal_line(release: str, shim: Shim) -> str:
    return (
        f"this runsc ({release}, {shim.fakes['runsc']}) cannot run GPU containers: it has no --nvproxy; "
        f"install gVisor {help.GPU_RELEASE} or later ({help.WHERE_TO_GET})"
    )


def gpu_bundle(shim: Shim, name: str = "gpu") -> tuple[Path, bytes]:
    doc = fixture_spec("gpu-devices")
    bundle = shim.bundle(name, raw=json.dumps(doc, indent=2).encode())
    return bundle, (bundle / "config.json").read_bytes()


def verbs(shim: Shim, since: int = 0) -> list[str]:
    return [shim.verb_of(argv) or "--version" for argv in shim.runsc_argvs()[since:]]


@pytest.mark.parametrize("verb", ["create", "run"])
def test_a_gpu_container_is_refused_in_one_line_before_the_bundle_is_written(shim: Shim, verb: str) -> None:
    shim.env.update(OLD)
    bundle, raw = gpu_bundle(shim)
    out = shim.docker(bundle, verb, "--bundle", str(bundle), "c1")
    assert out.returncode == 1
    expected = refusal_line("0.0~20221219.0", shim)
    assert out.stderr.decode().splitlines() == [f"runsc-cuda: {expected}"]
    assert shim.last_error(bundle) == f"runsc-cuda: {expected}"
    assert (bundle / "config.json").read_bytes() == raw, "the bundle was patched for a container that never ran"
    assert verbs(shim) == ["flags", "--version"], "runsc was asked to start it anyway"


def test_what_runsc_said_is_kept_so_a_second_call_asks_nothing(shim: Shim) -> None:
    shim.env.update(OLD)
    bundle, _ = gpu_bundle(shim)
    assert shim.docker(bundle, "create", "--bundle", str(bundle), "c1").returncode == 1
    asked = len(shim.runsc_argvs())
    out = shim.docker(bundle, "create", "--bundle", str(bundle), "c1")
    assert out.returncode == 1
    assert shim.last_error(bundle) == "runsc-cuda: " + refusal_line("0.0~20221219.0", shim)
    assert verbs(shim, asked) == []


def test_a_runsc_with_nvproxy_is_asked_once_per_binary(shim: Shim) -> None:
    first, _ = gpu_bundle(shim, "one")
    second, _ = gpu_bundle(shim, "two")
    assert shim.run("create", "--bundle", str(first), "c1").returncode == 0
    assert shim.run("create", "--bundle", str(second), "c2").returncode == 0
    assert verbs(shim) == ["flags", "create", "create"]


def test_the_callers_own_nvproxy_flag_is_refused_the_same_way(shim: Shim) -> None:
    """Docker's runtimeArgs may hold --nvproxy: runsc is asked about itself without it."""
    shim.env.update(OLD)
    bundle, raw = gpu_bundle(shim)
    out = shim.docker(bundle, "--nvproxy=true", "create", "--bundle", str(bundle), "c1")
    assert out.returncode == 1
    assert shim.last_error(bundle) == "runsc-cuda: " + refusal_line("0.0~20221219.0", shim)
    assert (bundle / "config.json").read_bytes() == raw
    assert all("--nvproxy=true" not in argv for argv in shim.runsc_argvs())


def test_a_source_build_is_named_as_one(shim: Shim) -> None:
    shim.env.update(OLD, FAKE_RUNSC_VERSION="VERSION_MISSING")
    bundle, _ = gpu_bundle(shim)
    assert shim.docker(bundle, "create", "--bundle", str(bundle), "c1").returncode == 1
    assert shim.last_error(bundle) == "runsc-cuda: " + refusal_line("VERSION_MISSING: a source build", shim)


def test_a_non_gpu_container_passes_through_and_pays_nothing_new(shim: Shim) -> None:
    shim.env.update(OLD)
    bundle = shim.bundle("plain")
    raw = (bundle / "config.json").read_bytes()
    out = shim.docker(bundle, "create", "--bundle", str(bundle), "c1")
    assert out.returncode == 0, out.stderr
    assert (bundle / "config.json").read_bytes() == raw
    assert verbs(shim) == ["create"]
    assert shim.status("c1") == "created"


def test_with_nvproxy_turned_off_in_the_config_the_call_goes_to_runsc(shim: Shim) -> None:
    """nvproxy = false: runsc-cuda adds no flag this runsc would reject, and so refuses nothing."""
    shim.env.update(OLD, RUNSC_CUDA_NVPROXY="false")
    bundle, _ = gpu_bundle(shim)
    out = shim.docker(bundle, "create", "--bundle", str(bundle), "c1")
    assert out.returncode == 0, out.stderr
    assert verbs(shim) == ["create"]


def test_a_gpu_restore_is_refused_before_the_bundle_is_written(shim: Shim) -> None:
    _, image = stopped_image(shim)  # checkpointed by a runsc with nvproxy
    shim.env.update(OLD)
    # The same fake file now plays another runsc: forget what the first one said about itself.
    (Path(shim.env["RUNSC_CUDA_STATE_DIR"]) / help.HELP_FILE).unlink()
    bundle, raw = gpu_bundle(shim, "restored")
    since = len(shim.runsc_argvs())
    out = shim.docker_restore(bundle, image)
    assert out.returncode == 1
    expected = f"runsc-cuda: cannot restore c1: {refusal_line('0.0~20221219.0', shim)}; nothing was changed"
    assert shim.last_error(bundle) == expected
    assert (bundle / "config.json").read_bytes() == raw
    assert "restore" not in verbs(shim, since)
