"""The exact Docker/containerd sequence, replayed against the fake runsc, for both engines.

docker checkpoint create [--leave-running]: pause -> checkpoint -> resume.
docker start --checkpoint: restore --detach -no-subreaper --bundle B (no create).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from support import Shim

CUDA = (10, 11)
PIDS = (1, 10, 11, 12)


def checkpoint(shim: Shim, bundle: Path, cid: str, image: Path, leave_running: bool) -> None:
    assert shim.docker(bundle, "pause", cid).returncode == 0
    extra = ["--leave-running"] if leave_running else []
    out = shim.docker(
        bundle, "checkpoint", "--image-path", str(image), "--work-path", str(bundle / "work" / "criu-work"), *extra, cid
    )
    assert out.returncode == 0, out.stderr
    if leave_running:
        assert shim.docker(bundle, "resume", cid).returncode == 0


def restore(shim: Shim, bundle: Path, cid: str, image: Path) -> None:
    assert shim.docker(bundle, "delete", cid).returncode == 0
    out = shim.docker_restore(bundle, image, cid)
    assert out.returncode == 0, out.stderr


def verbs(shim: Shim, since: int) -> list[str]:
    """The runsc verbs called (with the cuda-checkpoint operation for exec calls)."""
    out = []
    for argv in shim.runsc_argvs()[since:]:
        i = next(
            i
            for i, t in enumerate(argv)
            if t
            in {
                "create",
                "start",
                "state",
                "ps",
                "pause",
                "resume",
                "exec",
                "checkpoint",
                "restore",
                "delete",
                "help",
                "wait",
            }
            or t == "--version"
        )
        verb = argv[i]
        if verb == "exec":
            op = argv[i + 3 :]
            verb = "exec " + (op[1] if op[0] == "--action" else op[0])
        out.append(verb)
    return out


def collapse(seq: list[str]) -> list[str]:
    out: list[str] = []
    for item in seq:
        if not out or out[-1] != item:
            out.append(item)
    return out


@pytest.mark.parametrize("leave_running", [True, False], ids=["leave-running", "stop"])
def test_exec_engine_docker_sequence_freezes_saves_and_thaws(shim: Shim, leave_running: bool) -> None:
    shim.env["RUNSC_CUDA_ENGINE"] = "exec"
    bundle = shim.gpu_container("c1", PIDS, CUDA)
    image = shim.tmp / "image"
    before = len(shim.calls())
    checkpoint(shim, bundle, "c1", image, leave_running)
    expected = [
        "pause",
        "state",
        "help",
        "resume",
        "exec --help",
        "ps",
        "exec --get-state",
        "exec lock",
        "exec checkpoint",
        "exec --get-state",  # every process checked: checkpointed
        "pause",
        "ps",  # again, paused: a CUDA process started during the freeze is frozen too
        "--version",  # the image's record, written before the save
        "checkpoint",
    ]
    if leave_running:
        expected += ["resume", "exec restore", "exec unlock", "exec --get-state", "pause", "resume"]
    assert collapse(verbs(shim, before)) == expected
    saved = json.loads((image / "checkpoint.img").read_text())["cuda"]
    assert saved == {"10": "checkpointed", "11": "checkpointed"}, "runsc saved unfrozen CUDA processes"
    sidecar = json.loads((image / "runsc-cuda.json").read_text())
    assert sidecar["engine"] == "exec"
    assert [p["pid"] for p in sidecar["cuda_processes"]] == list(CUDA)
    if leave_running:
        assert shim.status("c1") == "running"
        assert shim.cuda_states("c1") == {10: "running", 11: "running"}
        return
    assert shim.status("c1") == "stopped"
    before = len(shim.calls())
    restore(shim, bundle, "c1", image)
    assert "all memory loaded" in shim.wait_background(bundle)
    # restore --background (the default for GPU containers), the sandbox's PIDs (the sidecar's list is
    # checked against them), thaw, then the watcher: wait --restore.
    expected = ["delete", "help", "restore", "ps", "exec restore", "exec unlock", "exec --get-state", "wait"]
    assert collapse(verbs(shim, before)) == expected
    assert "--background" in shim.calls_of("restore", before)[0]
    assert shim.status("c1") == "running"
    assert shim.cuda_states("c1") == {10: "running", 11: "running"}


def test_every_probe_happens_before_any_lock(shim: Shim) -> None:
    shim.env["RUNSC_CUDA_ENGINE"] = "exec"
    bundle = shim.gpu_container("c1", PIDS, CUDA)
    checkpoint(shim, bundle, "c1", shim.tmp / "image", True)
    ops = [argv[0] if argv[0] != "--action" else argv[1] for argv in shim.cuda_calls("c1")]
    first_lock = ops.index("lock")
    last_checkpoint = max(i for i, op in enumerate(ops) if op == "checkpoint")
    probes = [i for i, op in enumerate(ops) if op == "--get-state"]
    assert len([i for i in probes if i < first_lock]) == len(PIDS), "every candidate is probed before any lock"
    # The only queries after that check the frozen processes, once all are checkpointed (none is just locked).
    assert all(i < first_lock or i > last_checkpoint for i in probes)
    assert ops.index("checkpoint") > max(i for i, op in enumerate(ops) if op == "lock")


@pytest.mark.parametrize("leave_running", [True, False], ids=["leave-running", "stop"])
def test_native_engine_adds_the_flag_and_lets_runsc_toggle(shim: Shim, leave_running: bool) -> None:
    shim.env["RUNSC_CUDA_ENGINE"] = "auto"
    bundle = shim.gpu_container("c1", PIDS, CUDA)
    image = shim.tmp / "image"
    before = len(shim.calls())
    checkpoint(shim, bundle, "c1", image, leave_running)
    ckpt = next(a for a in shim.runsc_argvs()[before:] if "checkpoint" in a and "help" not in a)
    assert "--cuda-checkpoint-path=/usr/local/bin/cuda-checkpoint" in ckpt
    seq = verbs(shim, before)
    ran = [v for v in seq if v.startswith("exec")]
    if leave_running:  # runsc-cuda only checks afterwards that runsc left every CUDA process running
        assert set(ran) == {"exec --help", "exec --get-state"}, ran
        assert min(i for i, v in enumerate(seq) if v.startswith("exec")) > seq.index("checkpoint")
    else:
        assert not ran, "runsc-cuda ran cuda-checkpoint itself"
    saved = json.loads((image / "checkpoint.img").read_text())["cuda"]
    assert saved == {"10": "checkpointed", "11": "checkpointed"}
    assert json.loads((image / "runsc-cuda.json").read_text())["engine"] == "native"
    if leave_running:
        assert shim.cuda_states("c1") == {10: "running", 11: "running"}
        return
    before = len(shim.calls())
    restore(shim, bundle, "c1", image)
    assert not any(v.startswith("exec") for v in verbs(shim, before)), "runsc-cuda thawed after runsc did"
    assert shim.cuda_states("c1") == {10: "running", 11: "running"}


@pytest.mark.parametrize("engine", ["exec", "auto"])
def test_a_non_gpu_container_is_passed_through_unchanged(shim: Shim, engine: str) -> None:
    shim.env["RUNSC_CUDA_ENGINE"] = engine
    bundle = shim.bundle("plain")
    for args in (["create", "--bundle", str(bundle), "p1"], ["start", "p1"]):
        assert shim.docker(bundle, *args).returncode == 0
    image = shim.tmp / "image"
    before = len(shim.calls())
    checkpoint(shim, bundle, "p1", image, True)
    call = [
        "checkpoint",
        "--image-path",
        str(image),
        "--work-path",
        str(bundle / "work" / "criu-work"),
        "--leave-running",
        "p1",
    ]
    assert [a[6:] for a in shim.runsc_argvs()[before:]] == [["pause", "p1"], ["state", "p1"], call, ["resume", "p1"]]
    assert not (image / "runsc-cuda.json").exists()
    checkpoint(shim, bundle, "p1", shim.tmp / "image2", False)
    restore(shim, bundle, "p1", shim.tmp / "image2")
    assert shim.status("p1") == "running"


def test_auto_picks_exec_on_an_older_runsc(shim: Shim) -> None:
    shim.env["FAKE_RUNSC_OLD"] = "1"
    bundle = shim.gpu_container("c1", PIDS, CUDA)
    checkpoint(shim, bundle, "c1", shim.tmp / "image", True)
    assert json.loads((shim.tmp / "image" / "runsc-cuda.json").read_text())["engine"] == "exec"
    assert not any("--cuda-checkpoint-path" in " ".join(a) for a in shim.runsc_argvs())


def test_engine_native_on_an_older_runsc_is_a_clear_error_before_anything_is_frozen(shim: Shim) -> None:
    shim.env.update(FAKE_RUNSC_OLD="1", RUNSC_CUDA_ENGINE="native")
    bundle = shim.gpu_container("c1", PIDS, CUDA)
    out = shim.docker(bundle, "checkpoint", "--image-path", str(shim.tmp / "i"), "--leave-running", "c1")
    assert out.returncode != 0
    assert "no --cuda-checkpoint-path" in shim.last_error(bundle)
    assert shim.cuda_calls("c1") == []


@pytest.mark.parametrize("engine", ["native", "exec"])
def test_a_gpu_container_without_the_mount_fails_before_anything_is_frozen(shim: Shim, engine: str) -> None:
    shim.env["RUNSC_CUDA_ENGINE"] = engine
    shim.env["RUNSC_CUDA_CUDA_CHECKPOINT"] = str(shim.tmp / "absent")  # created without a host binary
    bundle = shim.gpu_container("c1", PIDS, CUDA)
    out = shim.docker(bundle, "checkpoint", "--image-path", str(shim.tmp / "i"), "--leave-running", "c1")
    assert out.returncode != 0
    assert "no cuda-checkpoint mount" in shim.last_error(bundle)
    assert shim.cuda_states("c1") == {10: "running", 11: "running"}
    assert not any("checkpoint" in a and "--image-path" in a for a in shim.runsc_argvs())


def test_native_sequential_flag_from_config(shim: Shim) -> None:
    shim.env.update(RUNSC_CUDA_ENGINE="native", RUNSC_CUDA_SEQUENTIAL="true")
    bundle = shim.gpu_container("c1", PIDS, CUDA)
    checkpoint(shim, bundle, "c1", shim.tmp / "image", True)
    assert any("--cuda-checkpoint-sequential" in a for a in shim.runsc_argvs())


def test_exec_engine_falls_back_to_toggle_without_action_support(shim: Shim) -> None:
    shim.env.update(RUNSC_CUDA_ENGINE="exec", FAKE_CUDA_NO_ACTION="1")
    bundle = shim.gpu_container("c1", PIDS, CUDA)
    checkpoint(shim, bundle, "c1", shim.tmp / "image", True)
    ops = {argv[0] for argv in shim.cuda_calls("c1")}
    assert ops == {"--help", "--get-state", "--toggle"}
    assert shim.cuda_states("c1") == {10: "running", 11: "running"}


def test_exec_engine_refuses_a_driver_without_get_state(shim: Shim) -> None:
    shim.env.update(RUNSC_CUDA_ENGINE="exec", FAKE_CUDA_DRIVER="550")
    bundle = shim.gpu_container("c1", PIDS, CUDA, status="paused")
    out = shim.docker(bundle, "checkpoint", "--image-path", str(shim.tmp / "i"), "--leave-running", "c1")
    assert out.returncode != 0
    assert "driver 555 or later" in shim.last_error(bundle)
    assert shim.status("c1") == "paused"
    assert shim.cuda_states("c1") == {10: "running", 11: "running"}


def test_checkpoint_works_from_any_folder_not_only_the_bundle(shim: Shim) -> None:
    # The e2e suite found this: runsc-cuda must find the bundle through `runsc state`, never the cwd.
    shim.env["RUNSC_CUDA_ENGINE"] = "exec"
    bundle = shim.gpu_container("c1", PIDS, CUDA)
    out = shim.docker(bundle, "checkpoint", "--image-path", str(shim.tmp / "i"), "--leave-running", "c1", cwd="/")
    assert out.returncode == 0, out.stderr
    assert json.loads((shim.tmp / "i" / "runsc-cuda.json").read_text())["cuda_processes"]


def as_pod_container(bundle: Path, pid_namespace: dict[str, str]) -> None:
    """The container's spec as the CRI plugin writes a pod's app container: its type, its PID namespace
    (written after create: the fake runsc runs it as a plain container)."""
    doc = json.loads((bundle / "config.json").read_text())
    doc.setdefault("annotations", {})["io.kubernetes.cri.container-type"] = "container"
    spaces = [ns for ns in doc["linux"].get("namespaces", []) if ns["type"] != "pid"]
    doc["linux"]["namespaces"] = [*spaces, pid_namespace]
    (bundle / "config.json").write_text(json.dumps(doc))


def test_exec_engine_refuses_a_pod_container_with_its_own_pid_namespace_before_anything_is_frozen(
    shim: Shim,
) -> None:
    # The kubelet's default: runsc gives the container a child PID namespace, so the PIDs runsc ps lists
    # are not the ones cuda-checkpoint sees through runsc exec (it would find no CUDA process and save
    # them unfrozen).
    shim.env["RUNSC_CUDA_ENGINE"] = "exec"
    bundle = shim.gpu_container("c1", PIDS, CUDA)
    as_pod_container(bundle, {"type": "pid"})
    out = shim.docker(bundle, "checkpoint", "--image-path", str(shim.tmp / "i"), "--leave-running", "c1")
    assert out.returncode != 0
    error = shim.last_error(bundle)
    assert "PID namespace of its own" in error and "shareProcessNamespace: true" in error, error
    assert shim.cuda_calls("c1") == []
    assert not any("checkpoint" in a and "--image-path" in a for a in shim.runsc_argvs())


@pytest.mark.parametrize(
    ("engine", "pid_namespace"),
    [("exec", {"type": "pid", "path": "/proc/4225/ns/pid"}), ("native", {"type": "pid"})],
    ids=["exec-shared-pid-namespace", "native-own-pid-namespace"],
)
def test_pod_containers_checkpoint_when_their_engine_reaches_their_processes(
    shim: Shim, engine: str, pid_namespace: dict[str, str]
) -> None:
    shim.env["RUNSC_CUDA_ENGINE"] = engine
    bundle = shim.gpu_container("c1", PIDS, CUDA)
    as_pod_container(bundle, pid_namespace)
    checkpoint(shim, bundle, "c1", shim.tmp / "image", True)
    assert json.loads((shim.tmp / "image" / "runsc-cuda.json").read_text())["engine"] == engine
    assert shim.cuda_states("c1") == {10: "running", 11: "running"}
