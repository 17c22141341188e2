"""A fault at every step and every position of a 4-process container leaves nothing frozen.

After each injected fault: every CUDA process is running, the pause state is as
found, the exit status is non-zero, and log.json's last error names the failure.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from support import Shim

CUDA = (10, 11, 12, 13)
PIDS = (1, *CUDA)

# (step, cuda-checkpoint op, fault, text the error must contain); position = which CUDA PID.
# Every step at every position, with and without --leave-running (thaw steps exist only with it).
CUDA_STEPS = [
    ("discover", "get-state", {"fault": "garbage"}, "unexpected output"),
    ("lock", "lock", {"fault": "fail", "code": 2}, "lock failed"),
    ("checkpoint", "checkpoint", {"fault": "fail", "code": 2, "state": "locked"}, "checkpoint failed"),
]
THAW_STEPS = [
    ("restore", "restore", {"fault": "fail", "code": 2, "times": 1}, "restore failed"),
    ("unlock", "unlock", {"fault": "fail", "code": 2, "times": 1}, "unlock failed"),
]
# Other ways each step fails, at one position.
VARIANTS = [
    ("discover", "get-state", {"fault": "hang", "seconds": 8}, "timed out"),
    ("lock", "lock", {"fault": "busy", "seconds": 5}, "lock failed"),
    ("checkpoint", "checkpoint", {"fault": "fail", "code": 2, "state": "running"}, "checkpoint failed"),
    ("checkpoint", "checkpoint", {"fault": "fail", "code": 2, "state": "checkpointed"}, "checkpoint failed"),
    ("checkpoint", "checkpoint", {"fault": "hang", "seconds": 8}, "checkpoint failed"),
]


def cases() -> list[tuple[str, str, dict, str, int, bool]]:
    out = []
    for leave_running in (True, False):
        for step, op, fault, text in CUDA_STEPS:
            for position in range(4):
                out.append((step, op, fault, text, position, leave_running))
    for step, op, fault, text in THAW_STEPS:
        for position in range(4):
            out.append((step, op, fault, text, position, True))
    for step, op, fault, text in VARIANTS:
        out.append((step, op, fault, text, 2, True))
    return out


def case_id(case: tuple[str, str, dict, str, int, bool]) -> str:
    step, _, fault, _, position, leave = case
    return f"{step}-{fault['fault']}-{fault.get('state', '')}-pid{position}-{'leave' if leave else 'stop'}"


def run_checkpoint(shim: Shim, bundle: Path, leave_running: bool, env: dict[str, str]) -> tuple[int, str]:
    extra = ["--leave-running"] if leave_running else []
    out = shim.docker(
        bundle,
        "checkpoint",
        "--image-path",
        str(shim.tmp / "image"),
        "--work-path",
        str(bundle / "work"),
        *extra,
        "c1",
        env=env,
    )
    return out.returncode, out.stderr.decode()


@pytest.mark.parametrize("step,op,fault,text,position,leave_running", cases(), ids=[case_id(c) for c in cases()])
def test_cuda_fault_leaves_every_process_running_and_the_pause_state_as_found(
    shim: Shim, step: str, op: str, fault: dict, text: str, position: int, leave_running: bool
) -> None:
    shim.env["RUNSC_CUDA_ENGINE"] = "exec"
    if fault["fault"] == "hang":
        # Short enough to give up on the hang, long enough for a normal call on a loaded machine.
        shim.env["RUNSC_CUDA_CUDA_CALL_TIMEOUT_S"] = "3"
    bundle = shim.gpu_container("c1", PIDS, CUDA, status="paused")
    pid = CUDA[position]
    plan = [{"pid": pid, "op": op, "times": 0, **fault}]
    code, stderr = run_checkpoint(shim, bundle, leave_running, {"FAKE_CUDA_FAULTS": json.dumps(plan)})
    assert code != 0
    assert shim.cuda_states("c1") == dict.fromkeys(CUDA, "running")
    assert shim.status("c1") == "paused"
    last = shim.last_error(bundle)
    assert last.startswith("runsc-cuda: checkpoint of c1 failed")
    assert text in last and f"PID {pid}" in last, last
    assert "Traceback" not in stderr
    # Once runsc has saved the sandbox (a thaw fault), the image keeps the record that restores it.
    after_save = op in ("restore", "unlock")
    assert (shim.tmp / "image" / "runsc-cuda.json").exists() == after_save
    assert ("runsc saved the sandbox" in last) == after_save


@pytest.mark.parametrize("leave_running", [True, False], ids=["leave", "stop"])
@pytest.mark.parametrize("found", ["paused", "running"])
def test_runsc_save_failure_thaws_everything(shim: Shim, leave_running: bool, found: str) -> None:
    shim.env["RUNSC_CUDA_ENGINE"] = "exec"
    bundle = shim.gpu_container("c1", PIDS, CUDA, status=found)
    faults = json.dumps([{"verb": "checkpoint", "fault": "fail", "message": "checkpoint failed: disk full"}])
    code, _ = run_checkpoint(shim, bundle, leave_running, {"FAKE_RUNSC_FAULTS": faults})
    assert code != 0
    assert shim.cuda_states("c1") == dict.fromkeys(CUDA, "running")
    assert shim.status("c1") == found
    last = shim.last_error(bundle)
    assert "runsc checkpoint failed: checkpoint failed: disk full" in last
    assert "all CUDA processes are running again" in last


@pytest.mark.parametrize("found", ["paused", "running"])
def test_a_fault_on_a_container_found_running_leaves_it_running(shim: Shim, found: str) -> None:
    shim.env["RUNSC_CUDA_ENGINE"] = "exec"
    bundle = shim.gpu_container("c1", PIDS, CUDA, status=found)
    plan = json.dumps([{"pid": 12, "op": "checkpoint", "fault": "fail", "times": 0}])
    code, _ = run_checkpoint(shim, bundle, True, {"FAKE_CUDA_FAULTS": plan})
    assert code != 0
    assert shim.status("c1") == found
    assert shim.cuda_states("c1") == dict.fromkeys(CUDA, "running")


def test_a_thaw_fault_after_a_good_save_still_reports_failure_but_thaws(shim: Shim) -> None:
    shim.env["RUNSC_CUDA_ENGINE"] = "exec"
    bundle = shim.gpu_container("c1", PIDS, CUDA, status="paused")
    plan = json.dumps([{"pid": 11, "op": "restore", "fault": "fail", "times": 1}])
    code, _ = run_checkpoint(shim, bundle, True, {"FAKE_CUDA_FAULTS": plan})
    assert code != 0
    assert (shim.tmp / "image" / "checkpoint.img").exists()
    assert shim.cuda_states("c1") == dict.fromkeys(CUDA, "running")
    assert "restore failed for PID 11" in shim.last_error(bundle)


def test_a_process_that_cannot_be_thawed_is_named(shim: Shim) -> None:
    shim.env["RUNSC_CUDA_ENGINE"] = "exec"
    bundle = shim.gpu_container("c1", PIDS, CUDA, status="paused")
    plan = json.dumps(
        [
            {"pid": 13, "op": "checkpoint", "fault": "fail", "state": "checkpointed", "times": 0},
            {"pid": 13, "op": "restore", "fault": "fail", "times": 0},
        ]
    )
    code, _ = run_checkpoint(shim, bundle, True, {"FAKE_CUDA_FAULTS": plan})
    assert code != 0
    last = shim.last_error(bundle)
    assert "rollback incomplete: PID 13: restore failed" in last
    assert shim.cuda_states("c1") == {10: "running", 11: "running", 12: "running", 13: "checkpointed"}
