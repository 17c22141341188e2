"""The image sidecar's record, and one checkpoint/restore at a time per container."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import threading
import time

from test_restore import fake_proc

from runsc_cuda import __version__
from runsc_cuda.lock import lock_path

from support import Shim

CUDA = (10, 11, 12)
PIDS = (1, *CUDA)


def test_the_sidecar_records_versions_gpus_processes_and_timings(shim: Shim) -> None:
    shim.env.update(
        RUNSC_CUDA_ENGINE="exec",
        RUNSC_CUDA_PROC_DRIVER_NVIDIA=str(fake_proc(shim, "580.159.03", "NVIDIA H200", "NVIDIA H200")),
    )
    bundle = shim.gpu_container("c1", PIDS, CUDA, status="paused")
    image = shim.tmp / "image"
    out = shim.docker(bundle, "checkpoint", "--image-path", str(image), "--leave-running", "c1")
    assert out.returncode == 0, out.stderr
    doc = json.loads((image / "runsc-cuda.json").read_text())
    assert doc["runsc_cuda_version"] == __version__
    assert doc["engine"] == "exec"
    assert doc["runsc_version"] == "runsc version fake-20260817.0"
    assert doc["driver_version"] == "580.159.03"
    assert doc["gpus"] == ["NVIDIA H200", "NVIDIA H200"] and doc["gpu_count"] == 2
    assert doc["cuda_processes"] == [{"pid": p, "state_before": "running", "state_saved": "checkpointed"} for p in CUDA]
    assert set(doc["timings"]) >= {"discover", "lock", "checkpoint", "save", "restore", "unlock"}
    assert all(v >= 0 for v in doc["timings"].values())
    assert doc["leave_running"] is True


def test_every_phase_is_logged_with_its_duration_and_pids(shim: Shim) -> None:
    detail = shim.tmp / "detail.log"
    shim.env.update(RUNSC_CUDA_ENGINE="exec", RUNSC_CUDA_LOG_FILE=str(detail))
    bundle = shim.gpu_container("c1", PIDS, CUDA)
    assert (
        shim.docker(bundle, "checkpoint", "--image-path", str(shim.tmp / "i"), "--leave-running", "c1").returncode == 0
    )
    records = [json.loads(x) for x in detail.read_text().splitlines()]
    phases = {r["phase"]: r for r in records if "phase" in r}
    assert set(phases) == {"discover", "lock", "checkpoint", "save", "restore", "unlock"}
    assert phases["lock"]["pids"] == list(CUDA)
    assert phases["discover"]["pids"] == list(PIDS)
    assert all(isinstance(r["seconds"], float) for r in phases.values())


def test_concurrent_checkpoints_of_one_container_take_turns(shim: Shim) -> None:
    shim.env.update(RUNSC_CUDA_ENGINE="exec", FAKE_CUDA_DELAY="0.1")
    bundle = shim.gpu_container("c1", PIDS, CUDA)
    results: list[int] = []

    def one(n: int) -> None:
        out = shim.docker(bundle, "checkpoint", "--image-path", str(shim.tmp / f"image{n}"), "--leave-running", "c1")
        results.append(out.returncode)

    threads = [threading.Thread(target=one, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [0, 0]
    assert shim.cuda_states("c1") == dict.fromkeys(CUDA, "running")
    calls = [json.loads(x) for x in (shim.root / "c1" / "cuda-calls.jsonl").read_text().splitlines()]
    assert all(c["code"] == 0 or c["argv"][0] == "--get-state" for c in calls), "the two runs interleaved"


def test_a_held_lock_makes_the_second_caller_give_up_clearly(shim: Shim) -> None:
    shim.env.update(RUNSC_CUDA_ENGINE="exec", RUNSC_CUDA_LOCK_WAIT_S="0.5")
    bundle = shim.gpu_container("c1", PIDS, CUDA)
    path = lock_path(shim.env["RUNSC_CUDA_STATE_DIR"], str(shim.root), "c1")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    holder = subprocess.Popen(
        [
            "python3",
            "-c",
            f"""
import fcntl, os, time
fd = os.open({path!r}, os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.pwrite(fd, str(os.getpid()).encode(), 0)
print("held", flush=True)
time.sleep(60)
""",
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        out = shim.docker(bundle, "checkpoint", "--image-path", str(shim.tmp / "i"), "--leave-running", "c1")
        assert out.returncode != 0
        assert f"still running (pid {holder.pid})" in shim.last_error(bundle)
        assert shim.cuda_calls("c1") == []
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_left_by_a_killed_runsc_cuda_does_not_block(shim: Shim) -> None:
    shim.env.update(RUNSC_CUDA_ENGINE="exec", FAKE_CUDA_DELAY="0.2")
    bundle = shim.gpu_container("c1", PIDS, CUDA)
    proc = subprocess.Popen(
        [
            *shim.command,
            "--root",
            str(shim.root),
            "checkpoint",
            "--image-path",
            str(shim.tmp / "i1"),
            "--leave-running",
            "c1",
        ],
        env=shim.env,
    )
    path = lock_path(shim.env["RUNSC_CUDA_STATE_DIR"], str(shim.root), "c1")
    deadline = time.monotonic() + 20
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert os.path.exists(path)
    # The kernel released it with its holder; the guardian may take it while it thaws, then lets go.
    deadline = time.monotonic() + 30
    while True:
        fd = os.open(path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            holder = open(path).read().strip()  # noqa: SIM115
            assert holder != str(proc.pid), holder  # empty: a holder that has just taken it
            assert time.monotonic() < deadline, "the lock is still held"
        finally:
            os.close(fd)
        time.sleep(0.05)
    shim.env.pop("FAKE_CUDA_DELAY")
    time.sleep(1.0)  # let calls the killed run left behind finish
    out = shim.docker(bundle, "checkpoint", "--image-path", str(shim.tmp / "i2"), "--leave-running", "c1")
    assert out.returncode == 0, shim.last_error(bundle)
    assert shim.cuda_states("c1") == dict.fromkeys(CUDA, "running")


def test_sigterm_mid_checkpoint_rolls_back_at_the_next_step(shim: Shim) -> None:
    shim.env.update(RUNSC_CUDA_ENGINE="exec", FAKE_CUDA_DELAY="0.3")
    bundle = shim.gpu_container("c1", PIDS, CUDA, status="paused")
    proc = subprocess.Popen(
        [
            *shim.command,
            "--root",
            str(shim.root),
            "--log",
            str(bundle / "log.json"),
            "--log-format",
            "json",
            "checkpoint",
            "--image-path",
            str(shim.tmp / "i"),
            "--leave-running",
            "c1",
        ],
        env=shim.env,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if any(a[:2] == ["--action", "lock"] for a in shim.cuda_calls("c1")):
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert b"Traceback" not in err
    assert "interrupted by SIGTERM" in shim.last_error(bundle)
    assert shim.cuda_states("c1") == dict.fromkeys(CUDA, "running")
    assert shim.status("c1") == "paused"
    assert not any("--image-path" in a and "checkpoint" in a for a in shim.runsc_argvs()), "saved after SIGTERM"
