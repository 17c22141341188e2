"""restore: the bundle is patched as create does, the image must fit this host, CUDA is thawed after runsc."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from support import Shim, foreground_restore, stopped_image, wait_for

CUDA = (10, 11)
PIDS = (1, 10, 11)


def fake_proc(shim: Shim, driver: str, *gpus: str) -> Path:
    folder = shim.tmp / f"proc-{driver}-{len(gpus)}"
    (folder / "gpus").mkdir(parents=True, exist_ok=True)
    (folder / "version").write_text(
        f"NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  {driver}  Release Build  (dvs-builder@U16)\n"
        "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n"
    )
    for i, model in enumerate(gpus):
        bus = folder / "gpus" / f"0000:{i:02x}:00.0"
        bus.mkdir(exist_ok=True)
        (bus / "information").write_text(f"Model: \t\t {model}\nIRQ:   \t\t 42\nBus Type: \t PCIe\n")
    return folder


@pytest.fixture(autouse=True)
def exec_engine(shim: Shim) -> None:
    shim.env["RUNSC_CUDA_ENGINE"] = "exec"


def test_restore_into_a_fresh_bundle_patches_it_like_create(shim: Shim) -> None:
    bundle, image = stopped_image(shim)
    fresh = shim.tmp / "fresh"
    fresh.mkdir()
    original = json.loads((bundle / "config.json").read_text())
    original["mounts"] = [m for m in original["mounts"] if m["destination"] != "/usr/local/bin/cuda-checkpoint"]
    (fresh / "config.json").write_text(json.dumps(original))
    out = shim.docker_restore(fresh, image)
    assert out.returncode == 0, out.stderr
    assert shim.cuda_states("c1") == {10: "running", 11: "running"}
    assert any(
        m["destination"] == "/usr/local/bin/cuda-checkpoint"
        for m in json.loads((fresh / "config.json").read_text())["mounts"]
    )


def test_an_image_without_a_sidecar_restores_as_plain_runsc_would(shim: Shim) -> None:
    bundle, image = stopped_image(shim)
    (image / "runsc-cuda.json").unlink()
    before = len(shim.calls())
    out = shim.docker_restore(bundle, image)
    assert out.returncode == 0, out.stderr
    shim.wait_background(bundle)
    assert len(shim.calls_of("restore", before)) == 1
    assert shim.calls_of("exec", before) == []
    assert shim.cuda_states("c1") == {10: "checkpointed", 11: "checkpointed"}  # nobody knew to thaw


@pytest.mark.parametrize(
    "here,needle",
    [
        (
            ("575.51.03", "NVIDIA H200"),
            "driver 580.159.03, 1x NVIDIA H200; this host has driver 575.51.03, 1x NVIDIA H200",
        ),
        (("580.159.03", "NVIDIA H100 80GB HBM3"), "this host has driver 580.159.03, 1x NVIDIA H100 80GB HBM3"),
        (("580.159.03", "NVIDIA H200", "NVIDIA H200"), "this host has driver 580.159.03, 2x NVIDIA H200"),
    ],
    ids=["driver", "model", "count"],
)
def test_an_image_from_other_gpus_or_driver_is_refused_before_runsc(
    shim: Shim, here: tuple[str, ...], needle: str
) -> None:
    shim.env["RUNSC_CUDA_PROC_DRIVER_NVIDIA"] = str(fake_proc(shim, "580.159.03", "NVIDIA H200"))
    bundle, image = stopped_image(shim)
    shim.env["RUNSC_CUDA_PROC_DRIVER_NVIDIA"] = str(fake_proc(shim, *here))
    before = len(shim.calls())
    out = shim.docker_restore(bundle, image)
    assert out.returncode != 0
    assert needle in shim.last_error(bundle)
    assert shim.calls()[before:] == []


def test_the_same_gpus_restore(shim: Shim) -> None:
    shim.env["RUNSC_CUDA_PROC_DRIVER_NVIDIA"] = str(fake_proc(shim, "580.159.03", "NVIDIA H200", "NVIDIA H200"))
    bundle, image = stopped_image(shim)
    out = shim.docker_restore(bundle, image)
    assert out.returncode == 0, out.stderr
    assert shim.cuda_states("c1") == {10: "running", 11: "running"}


@pytest.mark.parametrize(
    "text,needle",
    [
        ("{", "invalid JSON"),
        ("[]", "expected a JSON object"),
        ('{"format": 99, "engine": "exec"}', "newer runsc-cuda"),
        ('{"format": 1, "engine": "warp", "gpus": [], "cuda_processes": []}', "engine"),
    ],
    ids=["syntax", "array", "newer", "engine"],
)
def test_a_damaged_sidecar_is_a_clear_error(shim: Shim, text: str, needle: str) -> None:
    bundle, image = stopped_image(shim)
    (image / "runsc-cuda.json").write_text(text)
    before = len(shim.calls())
    out = shim.docker_restore(bundle, image)
    assert out.returncode != 0
    assert needle in shim.last_error(bundle)
    assert "runsc-cuda.json" in shim.last_error(bundle)
    assert shim.calls()[before:] == []


def test_a_transient_thaw_failure_is_retried(shim: Shim) -> None:
    bundle, image = stopped_image(shim)
    plan = json.dumps([{"pid": 11, "op": "restore", "fault": "fail", "times": 1}])
    out = shim.docker_restore(bundle, image, env={"FAKE_CUDA_FAULTS": plan})
    assert out.returncode == 0, out.stderr
    assert shim.cuda_states("c1") == {10: "running", 11: "running"}
    assert any(e["level"] == "warning" and "second try" in e["msg"] for e in shim.log_entries(bundle))


def test_a_thaw_that_keeps_failing_fails_the_restore_naming_the_process(shim: Shim) -> None:
    bundle, image = stopped_image(shim)
    plan = json.dumps([{"pid": 11, "op": "restore", "fault": "fail", "times": 0}])
    out = shim.docker_restore(bundle, image, env={"FAKE_CUDA_FAULTS": plan})
    assert out.returncode != 0
    assert "PID 11" in shim.last_error(bundle)
    assert shim.cuda_states("c1")[10] == "running"


def test_a_runsc_restore_failure_is_runscs_exit_status_and_message(shim: Shim) -> None:
    bundle, image = stopped_image(shim)
    plan = json.dumps([{"verb": "restore", "fault": "fail", "message": "restoring container: boom"}])
    out = shim.docker_restore(bundle, image, env={"FAKE_RUNSC_FAULTS": plan})
    assert out.returncode == 128
    assert shim.last_error(bundle) == "restoring container: boom"


def test_foreground_restore_thaws_then_passes_on_the_containers_exit_status(shim: Shim) -> None:
    bundle, image = stopped_image(shim)
    proc = foreground_restore(shim, bundle, image)
    wait_for(lambda: shim.cuda_states("c1") == {10: "running", 11: "running"})
    assert proc.poll() is None, "runsc-cuda returned before the container exited"
    assert shim.run("kill", "c1", "KILL").returncode == 0
    proc.wait(timeout=30)
    assert proc.returncode == 137


def test_foreground_restore_forwards_signals_to_runsc(shim: Shim) -> None:
    bundle, image = stopped_image(shim)
    proc = foreground_restore(shim, bundle, image)
    wait_for(lambda: shim.cuda_states("c1") == {10: "running", 11: "running"})
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM


def test_a_refused_restore_leaves_the_bundle_unwritten(shim: Shim) -> None:
    shim.env["RUNSC_CUDA_PROC_DRIVER_NVIDIA"] = str(fake_proc(shim, "580.159.03", "NVIDIA H200"))
    bundle, image = stopped_image(shim)
    fresh = shim.tmp / "fresh"
    fresh.mkdir()
    doc = json.loads((bundle / "config.json").read_text())
    doc["mounts"] = [m for m in doc["mounts"] if m["destination"] != "/usr/local/bin/cuda-checkpoint"]
    (fresh / "config.json").write_text(json.dumps(doc))
    raw = (fresh / "config.json").read_bytes()
    shim.env["RUNSC_CUDA_PROC_DRIVER_NVIDIA"] = str(fake_proc(shim, "575.51.03", "NVIDIA H200"))
    out = shim.docker_restore(fresh, image)
    assert out.returncode != 0
    assert (fresh / "config.json").read_bytes() == raw
