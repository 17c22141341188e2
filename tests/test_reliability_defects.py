"""One test per defect the reliability suites found (each fixed in the same change).

The suites (test_reliability_*.py) find them by the hundred; these pin each
cause down with the smallest case that shows it.
"""

from __future__ import annotations

import json
from pathlib import Path

from test_restore import docker_restore, stopped_image

from conftest import Shim

CUDA = (10, 11)
PIDS = (1, *CUDA)


def checkpoint(shim: Shim, bundle: Path, *extra: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return shim.docker(bundle, "checkpoint", "--image-path", str(shim.tmp / "image"), *extra, "c1", env=env)


def faults(*plans: dict[str, object]) -> dict[str, str]:
    return {"FAKE_RUNSC_FAULTS": json.dumps(list(plans))}


def cuda_faults(*plans: dict[str, object]) -> dict[str, str]:
    return {"FAKE_CUDA_FAULTS": json.dumps(list(plans))}


# --- stop requests (SIGTERM) outside the exec engine's freeze ---------------------------------
# Before: runsc-cuda installed its SIGTERM handler only around the exec engine's work, so a
# SIGTERM while it looked at the container, during the native engine's runsc call or during
# a restore killed it silently (no line in log.json; a restore left CUDA processes frozen),
# and one after the last step let the checkpoint report success.


def test_sigterm_while_looking_at_the_container_fails_cleanly(shim: Shim) -> None:
    shim.env["RUNSC_CUDA_ENGINE"] = "exec"
    bundle = shim.gpu_container("c1", PIDS, CUDA, status="paused")
    out = checkpoint(shim, bundle, "--leave-running", env=faults({"verb": "state", "fault": "signal"}))
    assert out.returncode == 1, out.stderr
    assert "interrupted by SIGTERM" in shim.last_error(bundle)
    assert not any(a[:2] == ["--action", "lock"] for a in shim.cuda_calls("c1"))
    assert shim.status("c1") == "paused"


def test_sigterm_during_a_native_checkpoint_fails_cleanly(shim: Shim) -> None:
    shim.env["RUNSC_CUDA_ENGINE"] = "native"
    bundle = shim.gpu_container("c1", PIDS, CUDA, status="paused")
    out = checkpoint(shim, bundle, "--leave-running", env=faults({"verb": "checkpoint", "fault": "signal"}))
    assert out.returncode == 1, out.stderr
    assert "interrupted by SIGTERM" in shim.last_error(bundle)
    assert shim.cuda_states("c1") == dict.fromkeys(CUDA, "running")
    assert not (shim.tmp / "image" / "runsc-cuda.json").exists()


def test_sigterm_during_the_last_step_still_fails_the_checkpoint(shim: Shim) -> None:
    shim.env["RUNSC_CUDA_ENGINE"] = "exec"
    bundle = shim.gpu_container("c1", PIDS, CUDA, status="paused")
    out = checkpoint(shim, bundle, "--leave-running", env=faults({"verb": "version", "fault": "signal"}))
    assert out.returncode == 1, out.stderr
    assert "interrupted by SIGTERM" in shim.last_error(bundle)
    assert shim.cuda_states("c1") == dict.fromkeys(CUDA, "running")
    assert shim.status("c1") == "paused"
    assert not (shim.tmp / "image" / "runsc-cuda.json").exists()


def test_sigterm_during_restore_still_thaws_and_fails(shim: Shim) -> None:
    shim.env["RUNSC_CUDA_ENGINE"] = "exec"
    bundle, image = stopped_image(shim)
    out = docker_restore(shim, bundle, image, env=faults({"verb": "restore", "fault": "signal"}))
    assert out.returncode == 1, out.stderr
    assert "interrupted by SIGTERM" in shim.last_error(bundle)
    assert shim.cuda_states("c1") == dict.fromkeys(CUDA, "running")
