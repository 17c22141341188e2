"""runsc-cuda doctor: pure checks over gathered facts, gathering from fake folders, and the verb itself."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from runsc_cuda import config, layout
from runsc_cuda.commands.doctor import checks, render
from runsc_cuda.commands.doctor import facts as doctor_facts
from runsc_cuda.commands.doctor import main as doctor
from runsc_cuda.commands.doctor.gather import gather as gather_facts
from runsc_cuda.cuda import host

from support import REPO, Shim

PACKAGING = REPO / "packaging"

RUNSC_HELP_NATIVE = "checkpoint [flags] <container id>\n  -cuda-checkpoint-path string\n  -image-path string\n"
RUNSC_HELP_OLD = "checkpoint [flags] <container id>\n  -image-path string\n  -leave-running\n"
RUNSC_HELP_CHECKPOINT = (
    RUNSC_HELP_NATIVE + "  -compression value\n  -direct\n  -exclude-committed-zero-pages\n  -leave-running\n"
)
RUNSC_HELP_RESTORE = (
    "restore [flags] <container id>\n  -background\n  -bundle string\n  -direct\n  -image-path string\n"
)
# `runsc flags` prints on stderr (Go's PrintDefaults), as both the 2022 and the 2026 runsc do.
RUNSC_FLAGS = "  -debug\n    \tenable debug logging.\n  -nvproxy\n    \tLEGACY: enable support for Nvidia GPUs.\n"
RUNSC_FLAGS_2022 = "  -debug\n    \tenable debug logging.\n  -root string\n    \troot directory for storage.\n"
CC_HELP_555 = "Operations:\n--get-state --pid <pid>\n--action lock | checkpoint | restore | unlock --pid <pid>\n"
CC_HELP_550 = "Usage: cuda-checkpoint --toggle --pid <pid>\n"
VERSION_580 = (
    "NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.65.06  Sun Jul 27 07:09:36 UTC 2025\n"
    "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n"
)
H100 = "Model: \t\t NVIDIA H100 80GB HBM3\nIRQ:   \t\t 200\nGPU UUID: \t GPU-00000000\nBus Type: \t PCIe\n"


def probe(argv: str, stdout: str = "", code: int = 0, error: str | None = None) -> doctor_facts.Probe:
    return doctor_facts.Probe(tuple(argv.split()), code, stdout, "", error)


def runsc_flags(stderr: str, code: int = 0) -> doctor_facts.Probe:
    return doctor_facts.Probe(("runsc", "flags"), code, "", stderr)


def exe(path: str, uid: int = 0, mode: int = 0o755) -> doctor_facts.FileInfo:
    return doctor_facts.FileInfo(path, True, True, uid, stat.S_IFREG | mode)


def healthy(**changes: Any) -> doctor_facts.Facts:
    """A host where everything is right; tests break one thing at a time."""
    facts = doctor_facts.Facts(
        config_path="/etc/runsc-cuda/config.toml",
        config_file_exists=True,
        config=config.Config(),
        config_error=None,
        runsc="/usr/local/bin/runsc",
        runsc_error=None,
        runsc_version=probe("runsc --version", "runsc version release-20260817.0\nspec: 1.2.1\n"),
        runsc_help_checkpoint=probe("runsc help checkpoint", RUNSC_HELP_CHECKPOINT),
        runsc_help_restore=probe("runsc help restore", RUNSC_HELP_RESTORE),
        runsc_flags=runsc_flags(RUNSC_FLAGS),
        cuda_checkpoint=host.HostBinary("/usr/bin/cuda-checkpoint", "default"),
        cuda_checkpoint_file=exe("/usr/bin/cuda-checkpoint"),
        cuda_checkpoint_help=probe("cuda-checkpoint --help", CC_HELP_555),
        proc_dir="/proc/driver/nvidia",
        gpu=host.GpuInfo("580.65.06", ("NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB HBM3")),
        docker=doctor_facts.TextFile(layout.DOCKER_CONFIG, (PACKAGING / "docker" / "daemon.json").read_text()),
        containerd=doctor_facts.TextFile(
            layout.CONTAINERD_CONFIG, (PACKAGING / "containerd" / "config-v3.toml").read_text()
        ),
        registered={layout.BIN_PATH: exe(layout.BIN_PATH)},
        criu="/usr/sbin/criu",
        state_dir=doctor_facts.FileInfo("/run/runsc-cuda", True, False, 0, stat.S_IFDIR | 0o700),
    )
    return dataclasses.replace(facts, **changes)


def by_id(results: list[checks.Check]) -> dict[str, checks.Check]:
    return {c.id: c for c in results}


def test_a_healthy_host_passes_everything() -> None:
    results = doctor.checks(healthy(), ["docker", "containerd", "kubernetes"])
    assert [c for c in results if c.status != checks.OK] == []
    assert checks.exit_status(results) == 0
    found = by_id(results)
    assert found["runsc.version"].detail == "release-20260817.0"
    assert found["driver.gpus"].detail == "driver 580.65.06, 2x NVIDIA H100 80GB HBM3"
    assert "'runsc-cuda' -> /usr/bin/runsc-cuda (path form)" in found["docker.runtime"].detail
    assert "config version 3" in found["containerd.handler"].detail


def test_every_failure_has_a_one_line_fix() -> None:
    broken = healthy(
        config=None,
        config_error="config file x: unknown key 'foo'",
        runsc=None,
        runsc_error="runsc not found on PATH",
        cuda_checkpoint=None,
        cuda_checkpoint_file=None,
        gpu=host.GpuInfo(),
        docker=doctor_facts.TextFile("/etc/docker/daemon.json", "{}"),
        containerd=doctor_facts.TextFile("/etc/containerd/config.toml", "version = 2\n"),
        criu=None,
    )
    results = doctor.checks(broken, ["kubernetes", "docker"])
    failed = [c for c in results if c.failed]
    assert len(failed) >= 7
    for check in failed:
        assert check.fix and "\n" not in check.fix, check
    assert checks.exit_status(results) == 1


@pytest.mark.parametrize(
    ("info", "detail"),
    [
        (doctor_facts.FileInfo("/run/runsc-cuda", True, False, 0, stat.S_IFDIR | 0o1777), "mode 1777"),
        (doctor_facts.FileInfo("/run/runsc-cuda", True, False, 0, stat.S_IFDIR | 0o770), "mode 0770"),
        (doctor_facts.FileInfo("/run/runsc-cuda", True, False, 1000, stat.S_IFDIR | 0o700), "owned by uid 1000"),
        (doctor_facts.FileInfo("/run/runsc-cuda", True, True, 0, stat.S_IFREG | 0o600), "not a folder"),
    ],
)
def test_a_state_dir_others_can_change_fails_with_a_one_line_fix(info: doctor_facts.FileInfo, detail: str) -> None:
    found = by_id(doctor.checks(healthy(state_dir=info)))["state_dir"]
    assert found.failed and found.required and detail in found.detail
    assert found.fix == (
        "chown root /run/runsc-cuda && chmod 700 /run/runsc-cuda, or set state_dir to a folder only root can change"
    )


def test_a_state_dir_not_made_yet_is_fine() -> None:
    found = by_id(doctor.checks(healthy(state_dir=doctor_facts.FileInfo("/run/runsc-cuda", False))))["state_dir"]
    assert found.status == checks.OK and "created with mode 0700" in found.detail


def test_gather_reads_the_state_dir(host_files: dict[str, Path], tmp_path: Path) -> None:
    state = tmp_path / "open-state"
    state.mkdir()
    os.chmod(state, 0o777)
    found = by_id(gather(host_files, RUNSC_CUDA_STATE_DIR=str(state)))["state_dir"]
    assert found.failed and found.detail == f"{state} can be written by other users (mode 0777)"


def test_runsc_missing_skips_what_depends_on_it() -> None:
    found = by_id(doctor.checks(healthy(runsc=None, runsc_error="runsc not found on PATH")))
    assert found["runsc.found"].failed and found["runsc.found"].required
    skipped = ("runsc.runs", "runsc.version", "runsc.nvproxy", "runsc.native", "runsc.image_flags")
    assert {found[k].status for k in skipped} == {checks.SKIP}
    assert found["runsc.nvproxy"].required


def test_runsc_that_does_not_run() -> None:
    facts = healthy(runsc_version=probe("runsc --version", "", 127, "cannot execute: Exec format error"))
    found = by_id(doctor.checks(facts))
    assert found["runsc.runs"].failed and found["runsc.runs"].required
    assert "Exec format error" in found["runsc.runs"].detail


def test_old_runsc_means_the_exec_engine_which_needs_action_and_555() -> None:
    old = probe("runsc help checkpoint", RUNSC_HELP_OLD)
    found = by_id(doctor.checks(healthy(runsc_help_checkpoint=old)))
    native = found["runsc.native"]
    assert native.failed and not native.required
    assert "exec engine is used" in native.detail
    assert found["cuda_checkpoint.action"].required
    assert found["driver.version"].required
    assert checks.exit_status(list(found.values())) == 0


def test_a_runsc_without_nvproxy_fails_a_required_check_naming_its_release() -> None:
    """Debian 12's runsc: it runs, but no GPU container starts under it."""
    facts = healthy(
        runsc_version=probe("runsc --version", "runsc version 0.0~20221219.0\nspec: 1.0.2-dev\n"),
        runsc_flags=runsc_flags(RUNSC_FLAGS_2022),
    )
    found = by_id(doctor.checks(facts))
    assert found["runsc.runs"].status == checks.OK
    assert found["runsc.version"].detail == "0.0~20221219.0"
    nvproxy = found["runsc.nvproxy"]
    assert nvproxy.failed and nvproxy.required
    assert "no --nvproxy (0.0~20221219.0)" in nvproxy.detail
    assert nvproxy.fix.startswith("install gVisor release-20260608.0 or later from gVisor's apt repository")
    assert "\n" not in nvproxy.fix
    assert checks.exit_status(list(found.values())) == 1


def test_runsc_flags_that_do_not_answer_fail_nvproxy_rather_than_pass_it() -> None:
    facts = healthy(runsc_flags=runsc_flags("flag provided but not defined: -x\n", 2))
    nvproxy = by_id(doctor.checks(facts))["runsc.nvproxy"]
    assert nvproxy.failed and nvproxy.required
    assert "exit status 2" in nvproxy.detail


@pytest.mark.parametrize(
    ("stdout", "shown"),
    [
        ("runsc version VERSION_MISSING\nspec: 1.2.1\n", "VERSION_MISSING: a source build"),
        ("runsc version \nspec: 1.2.1\n", "version unknown"),
        ("spec: 1.2.1\n", "version unknown"),
    ],
)
def test_a_source_build_is_reported_as_one_and_judged_by_its_flags(stdout: str, shown: str) -> None:
    found = by_id(doctor.checks(healthy(runsc_version=probe("runsc --version", stdout))))
    assert found["runsc.version"].detail == shown
    assert found["runsc.nvproxy"].status == checks.OK


def test_missing_image_flags_are_named_and_optional() -> None:
    facts = healthy(
        runsc_help_checkpoint=probe("runsc help checkpoint", RUNSC_HELP_NATIVE),
        runsc_help_restore=probe("runsc help restore", "restore [flags] <container id>\n  -direct\n"),
    )
    found = by_id(doctor.checks(facts))
    image = found["runsc.image_flags"]
    assert image.failed and not image.required
    assert image.detail == (
        "no checkpoint --compression, checkpoint --exclude-committed-zero-pages, checkpoint --direct, "
        "restore --background: those image options are left out"
    )
    assert "release-20260608.0" in image.fix
    assert checks.exit_status(list(found.values())) == 0


def test_native_engine_required_by_config_but_runsc_is_old() -> None:
    facts = healthy(
        runsc_help_checkpoint=probe("runsc help checkpoint", RUNSC_HELP_OLD),
        config=config.Config(engine="native"),
    )
    native = by_id(doctor.checks(facts))["runsc.native"]
    assert native.failed and native.required
    assert 'engine = "exec"' in native.fix


def test_driver_550_cuda_checkpoint_has_no_action() -> None:
    old_help = probe("cuda-checkpoint --help", CC_HELP_550)
    exec_engine = healthy(cuda_checkpoint_help=old_help, runsc_help_checkpoint=probe("x", RUNSC_HELP_OLD))
    action = by_id(doctor.checks(exec_engine))["cuda_checkpoint.action"]
    assert action.failed and action.required
    assert "555" in action.fix
    # The native engine toggles; --action is not needed there.
    action = by_id(doctor.checks(healthy(cuda_checkpoint_help=old_help)))["cuda_checkpoint.action"]
    assert action.failed and not action.required


@pytest.mark.parametrize(
    ("version", "status", "recommended"),
    [
        ("550.54.15", checks.FAIL, checks.SKIP),
        ("560.35.03", checks.OK, checks.FAIL),
        ("570.86.15", checks.OK, checks.OK),
    ],
)
def test_driver_versions(version: str, status: str, recommended: str) -> None:
    facts = healthy(
        gpu=host.GpuInfo(version, ("NVIDIA A100-SXM4-80GB",)), runsc_help_checkpoint=probe("x", RUNSC_HELP_OLD)
    )
    found = by_id(doctor.checks(facts))
    assert found["driver.version"].status == status
    assert found["driver.recommended"].status == recommended
    assert not found["driver.recommended"].required


def test_no_driver_and_no_gpus() -> None:
    found = by_id(doctor.checks(healthy(gpu=host.GpuInfo())))
    assert found["driver.version"].failed and found["driver.version"].required
    assert found["driver.gpus"].failed and found["driver.gpus"].required


def test_cuda_checkpoint_missing() -> None:
    found = by_id(doctor.checks(healthy(cuda_checkpoint=None, cuda_checkpoint_file=None)))
    assert found["cuda_checkpoint.found"].failed and found["cuda_checkpoint.found"].required
    assert found["cuda_checkpoint.trusted"].status == checks.SKIP


def test_configured_cuda_checkpoint_that_does_not_exist() -> None:
    binary = host.HostBinary("/opt/cc", "config", "/opt/cc (from config cuda_checkpoint) does not exist")
    found = by_id(
        doctor.checks(healthy(cuda_checkpoint=binary, cuda_checkpoint_file=doctor_facts.FileInfo("/opt/cc", False)))
    )
    assert found["cuda_checkpoint.found"].failed
    assert "does not exist" in found["cuda_checkpoint.found"].detail


@pytest.mark.parametrize(
    ("info", "problem"),
    [
        (
            exe("/usr/bin/cuda-checkpoint", mode=0o777),
            "/usr/bin/cuda-checkpoint is writable by group or others (mode 0777)",
        ),
        (exe("/usr/bin/cuda-checkpoint", uid=1000), "/usr/bin/cuda-checkpoint is owned by uid 1000, not root"),
        (exe("/usr/bin/cuda-checkpoint"), "/usr/bin/cuda-checkpoint is in /usr/bin, owned by uid 1000, not root"),
    ],
)
def test_untrusted_cuda_checkpoint(info: doctor_facts.FileInfo, problem: str) -> None:
    """The trust verdict is the one create reaches (cuda.host.trust_problem, a fact doctor gathers)."""
    binary = host.HostBinary("/usr/bin/cuda-checkpoint", "default", problem)
    found = by_id(doctor.checks(healthy(cuda_checkpoint=binary, cuda_checkpoint_file=info, cuda_checkpoint_help=None)))
    trusted = found["cuda_checkpoint.trusted"]
    assert trusted.failed and trusted.required
    assert problem in trusted.detail
    assert trusted.fix.startswith("chown root:root /usr/bin/cuda-checkpoint && chmod 755")
    assert found["cuda_checkpoint.action"].status == checks.SKIP  # never run an untrusted binary


def test_trust_setting_accepts_an_untrusted_cuda_checkpoint() -> None:
    gathered = healthy(
        cuda_checkpoint=host.HostBinary("/usr/bin/cuda-checkpoint", "default", "owned by uid 1000, not root"),
        cuda_checkpoint_file=exe("/usr/bin/cuda-checkpoint", uid=1000),
        config=config.Config(trust_cuda_checkpoint=True),
    )
    trusted = by_id(doctor.checks(gathered))["cuda_checkpoint.trusted"]
    assert trusted.status == checks.OK
    assert "trust_cuda_checkpoint = true" in trusted.detail


def test_cuda_checkpoint_not_executable() -> None:
    info = exe("/usr/bin/cuda-checkpoint", mode=0o644)
    found = by_id(doctor.checks(healthy(cuda_checkpoint_file=info, cuda_checkpoint_help=None)))
    assert found["cuda_checkpoint.executable"].failed
    assert found["cuda_checkpoint.executable"].fix == "chmod 755 /usr/bin/cuda-checkpoint"


def test_bad_config_file() -> None:
    found = by_id(doctor.checks(healthy(config=None, config_error="config file /x: unknown key 'enigne'")))
    assert found["config"].failed and found["config"].required


# --- Docker ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["daemon.json", "daemon-runtimetype.json"])
def test_shipped_docker_configs_pass(name: str) -> None:
    text = (PACKAGING / "docker" / name).read_text()
    found = by_id(doctor.checks(healthy(docker=doctor_facts.TextFile("/etc/docker/daemon.json", text)), ["docker"]))
    assert found["docker.runtime"].status == checks.OK
    assert found["docker.experimental"].status == checks.OK


def test_docker_without_experimental() -> None:
    text = json.dumps({"runtimes": {"gpu": {"path": "/usr/bin/runsc-cuda"}}})
    found = by_id(doctor.checks(healthy(docker=doctor_facts.TextFile("/etc/docker/daemon.json", text))))
    assert found["docker.runtime"].status == checks.OK
    assert "'gpu'" in found["docker.runtime"].detail
    experimental = found["docker.experimental"]
    assert experimental.failed and not experimental.required
    assert '"experimental": true' in experimental.fix


def test_docker_without_our_runtime_is_required_only_when_asked() -> None:
    text = json.dumps({"runtimes": {"runsc": {"path": "/usr/local/bin/runsc"}}, "experimental": True})
    facts = healthy(docker=doctor_facts.TextFile("/etc/docker/daemon.json", text))
    assert not by_id(doctor.checks(facts))["docker.runtime"].required
    runtime = by_id(doctor.checks(facts, ["docker"]))["docker.runtime"]
    assert runtime.failed and runtime.required
    assert checks.exit_status(doctor.checks(facts, ["docker"])) == 1


def test_docker_registered_path_missing() -> None:
    facts = healthy(registered={layout.BIN_PATH: doctor_facts.FileInfo(layout.BIN_PATH, False)})
    runtime = by_id(doctor.checks(facts))["docker.runtime"]
    assert runtime.failed
    assert "does not exist" in runtime.detail


def test_no_docker_is_skipped_unless_required() -> None:
    facts = healthy(docker=doctor_facts.TextFile("/etc/docker/daemon.json"))
    assert by_id(doctor.checks(facts))["docker.runtime"].status == checks.SKIP
    assert by_id(doctor.checks(facts, ["docker"]))["docker.runtime"].failed


def test_docker_invalid_json() -> None:
    facts = healthy(docker=doctor_facts.TextFile("/etc/docker/daemon.json", '{"runtimes": '))
    runtime = by_id(doctor.checks(facts))["docker.runtime"]
    assert runtime.failed and "invalid JSON" in runtime.detail


# --- containerd -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["config-v2.toml", "config-v3.toml"])
def test_shipped_containerd_configs_pass(name: str) -> None:
    text = (PACKAGING / "containerd" / name).read_text()
    facts = healthy(containerd=doctor_facts.TextFile("/etc/containerd/config.toml", text))
    handler = by_id(doctor.checks(facts, ["containerd"]))["containerd.handler"]
    assert handler.status == checks.OK
    assert "handler 'runsc-cuda'" in handler.detail


def test_containerd_version_1_config() -> None:
    text = '[plugins.cri.containerd.runtimes.runsc-cuda]\nruntime_type = "io.containerd.runc.v2"\n'
    facts = healthy(containerd=doctor_facts.TextFile("/etc/containerd/config.toml", text))
    handler = by_id(doctor.checks(facts))["containerd.handler"]
    assert handler.failed and "version 1" in handler.detail


def test_containerd_v3_config_with_v2_plugin_name_is_not_ours() -> None:
    text = (PACKAGING / "containerd" / "config-v2.toml").read_text().replace("version = 2", "version = 3")
    facts = healthy(containerd=doctor_facts.TextFile("/etc/containerd/config.toml", text))
    handler = by_id(doctor.checks(facts))["containerd.handler"]
    assert handler.failed and "io.containerd.cri.v1.runtime" in handler.detail


def test_containerd_runsc_shim_with_binary_name() -> None:
    text = (
        "version = 2\n"
        '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.gvisor-gpu]\n'
        '  runtime_type = "io.containerd.runsc.v1"\n'
        '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.gvisor-gpu.options]\n'
        '  TypeUrl = "io.containerd.runsc.v1.options"\n'
        '  ConfigPath = "/etc/containerd/runsc.toml"\n'
    )
    shim_conf = doctor_facts.TextFile("/etc/containerd/runsc.toml", 'binary_name = "/usr/bin/runsc-cuda"\n')
    facts = healthy(
        containerd=doctor_facts.TextFile("/etc/containerd/config.toml", text),
        runsc_shim_configs={"/etc/containerd/runsc.toml": shim_conf},
    )
    handler = by_id(doctor.checks(facts))["containerd.handler"]
    assert handler.status == checks.OK
    assert "'gvisor-gpu'" in handler.detail and "runsc.v1" in handler.detail


def test_criu_missing_matters_for_kubernetes() -> None:
    facts = healthy(criu=None)
    assert not by_id(doctor.checks(facts))["criu"].required
    criu = by_id(doctor.checks(facts, ["kubernetes"]))["criu"]
    assert criu.failed and criu.required
    assert "criu" in criu.fix


# --- output ---------------------------------------------------------------------------


def test_text_output_marks_and_fixes() -> None:
    results = doctor.checks(healthy(criu=None, docker=doctor_facts.TextFile("/etc/docker/daemon.json")))
    text = render.render_text(results, {checks.OK: "\u2713", checks.FAIL: "\u2717", checks.SKIP: "-"})
    assert "\u2713 runsc found: /usr/local/bin/runsc" in text
    assert "\u2717 criu present (Kubernetes checkpoints)" in text
    assert "    fix: install criu" in text
    assert text.rstrip().endswith("All required checks passed; 1 optional check(s) failed.")


def test_ascii_output_when_the_terminal_cannot_show_marks() -> None:
    class Latin1:
        encoding = "ascii"

    assert render.symbols_for(Latin1()) == {checks.OK: "ok", checks.FAIL: "FAIL", checks.SKIP: "-"}


def test_json_output() -> None:
    doc = json.loads(render.render_json(doctor.checks(healthy(gpu=host.GpuInfo()))))
    assert doc["ok"] is False
    gpus = next(c for c in doc["checks"] if c["id"] == "driver.gpus")
    assert gpus == {
        "id": "driver.gpus",
        "title": "GPUs",
        "status": "fail",
        "required": True,
        "detail": "none",
        "fix": "check nvidia-smi; the driver shows no GPU in /proc/driver/nvidia/gpus",
    }


# --- gathering from a fake host ----------------------------------------------------------


def fake_proc(folder: Path, version: str | None = VERSION_580, gpus: int = 2) -> Path:
    folder.mkdir(parents=True)
    if version is not None:
        (folder / "version").write_text(version)
    for i in range(gpus):
        bus = folder / "gpus" / f"0000:{i + 1:02x}:00.0"
        bus.mkdir(parents=True)
        (bus / "information").write_text(H100)
    return folder


@pytest.fixture
def host_files(tmp_path: Path) -> dict[str, Path]:
    """A fake host: runsc and cuda-checkpoint on PATH, /proc/driver/nvidia, Docker and containerd configs."""
    import fakes

    bin_dir = tmp_path / "bin"
    fakes.install(str(bin_dir))
    criu = bin_dir / "criu"
    criu.write_text("#!/bin/sh\necho 'Version: 3.17.1'\n")
    criu.chmod(0o755)
    containerd_bin = bin_dir / "containerd"  # a Kubernetes node: containerd 2.x (commands/doctor/kubernetes.py)
    containerd_bin.write_text("#!/bin/sh\necho 'containerd github.com/containerd/containerd/v2 v2.3.7 abc'\n")
    containerd_bin.chmod(0o755)
    roots = tmp_path / "checkpoints"
    roots.mkdir(mode=0o755)
    docker = tmp_path / "daemon.json"
    docker.write_text(
        json.dumps({"runtimes": {"runsc-cuda": {"path": str(bin_dir / "runsc-cuda")}}, "experimental": True})
    )
    (bin_dir / "runsc-cuda").write_text("#!/bin/sh\n")
    (bin_dir / "runsc-cuda").chmod(0o755)
    containerd = tmp_path / "config.toml"
    containerd.write_text(
        (PACKAGING / "containerd" / "config-v3.toml").read_text().replace(layout.BIN_PATH, str(bin_dir / "runsc-cuda"))
    )
    return {
        "bin": bin_dir,
        "proc": fake_proc(tmp_path / "proc-driver-nvidia"),
        "docker": docker,
        "containerd": containerd,
        "config": tmp_path / "runsc-cuda.toml",
        "roots": roots,
    }


def fake_environ(files: dict[str, Path], **extra: str) -> dict[str, str]:
    env = {
        "PATH": f"{files['bin']}:/usr/bin:/bin",
        "RUNSC_CUDA_CONFIG": str(files["config"]),
        "RUNSC_CUDA_CUDA_CHECKPOINT": str(files["bin"] / "cuda-checkpoint"),
        "RUNSC_CUDA_STATE_DIR": str(files["config"].parent / "state"),  # not made yet: fine
        "RUNSC_CUDA_RESTORE_ROOTS": str(files["roots"]),
    }
    files["config"].write_text("")
    if os.geteuid() != 0:  # the fake is owned by whoever runs the tests
        env["RUNSC_CUDA_TRUST_CUDA_CHECKPOINT"] = "true"
    env.update(extra)
    return env


def gather(files: dict[str, Path], **extra: str) -> list[checks.Check]:
    facts = gather_facts(
        fake_environ(files, **extra),
        docker_config=str(files["docker"]),
        containerd_config=str(files["containerd"]),
        proc_dir=str(files["proc"]),
    )
    return doctor.checks(facts, ["docker", "kubernetes"])


def test_gather_from_a_healthy_fake_host(host_files: dict[str, Path]) -> None:
    results = gather(host_files)
    assert [c for c in results if c.status != checks.OK] == []
    found = by_id(results)
    assert found["runsc.version"].detail == "fake-20260817.0"
    assert "native engine" in found["runsc.native"].detail
    assert found["driver.version"].detail == "580.65.06"
    assert found["driver.gpus"].detail == "driver 580.65.06, 2x NVIDIA H100 80GB HBM3"


# Read on a real host (H200, open kernel module 580.159.04) with `cat`, tabs and trailing spaces kept.
REAL_VERSION = (
    "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.04  Release Build  (nixbld@)  \n"
    "GCC version:  gcc version 15.3.0 (GCC) \n"
)
REAL_INFORMATION = (
    "Model: \t\t NVIDIA H200\nIRQ:   \t\t 41\nGPU UUID: \t GPU-1f738388-46c8-200d-1ae2-5c64bead0750\n"
    "Video BIOS: \t 96.00.a5.00.1a\nBus Type: \t PCIe\nDMA Size: \t 52 bits\nDMA Mask: \t 0xfffffffffffff\n"
    "Bus Location: \t 0000:00:06.0\nDevice Minor: \t 0\nGPU Firmware: \t 580.159.04\nGPU Excluded:\t No\n"
)


def test_gather_from_a_real_h200_proc(tmp_path: Path, host_files: dict[str, Path]) -> None:
    proc = tmp_path / "real-proc"
    (proc / "gpus" / "0000:00:06.0").mkdir(parents=True)
    (proc / "version").write_text(REAL_VERSION)
    (proc / "gpus" / "0000:00:06.0" / "information").write_text(REAL_INFORMATION)
    host_files["proc"] = proc
    found = by_id(gather(host_files))
    assert found["driver.version"].detail == "580.159.04"
    assert found["driver.recommended"].status == checks.OK
    assert found["driver.gpus"].detail == "driver 580.159.04, 1x NVIDIA H200"


def test_gather_old_runsc_and_driver_550(host_files: dict[str, Path]) -> None:
    (host_files["proc"] / "version").write_text(VERSION_580.replace("580.65.06", "550.127.05"))
    found = by_id(gather(host_files, FAKE_RUNSC_OLD="1", FAKE_CUDA_DRIVER="550"))
    assert found["runsc.native"].failed and not found["runsc.native"].required
    assert found["cuda_checkpoint.action"].failed and found["cuda_checkpoint.action"].required
    assert found["driver.version"].failed and found["driver.version"].required
    assert checks.exit_status(list(found.values())) == 1


def test_gather_debian_2022_runsc(host_files: dict[str, Path]) -> None:
    found = by_id(gather(host_files, FAKE_RUNSC_OLD="2022"))
    assert found["runsc.runs"].status == checks.OK
    assert found["runsc.version"].detail == "0.0~20221219.0"
    assert found["runsc.nvproxy"].failed and found["runsc.nvproxy"].required
    assert found["runsc.native"].failed and not found["runsc.native"].required
    assert found["runsc.image_flags"].failed and not found["runsc.image_flags"].required
    assert checks.exit_status(list(found.values())) == 1


def test_gather_without_driver(tmp_path: Path, host_files: dict[str, Path]) -> None:
    host_files["proc"] = tmp_path / "no-such-proc"
    found = by_id(gather(host_files))
    assert found["driver.version"].failed
    assert found["driver.gpus"].failed


def test_gather_world_writable_cuda_checkpoint_is_not_run(host_files: dict[str, Path]) -> None:
    cc = host_files["bin"] / "cuda-checkpoint"
    cc.chmod(0o777)
    env = fake_environ(host_files)
    env.pop("RUNSC_CUDA_TRUST_CUDA_CHECKPOINT", None)
    calls: list[list[str]] = []

    def run(argv: list[str]) -> doctor_facts.Probe:
        calls.append(argv)
        return doctor_facts.Probe(tuple(argv), 0, RUNSC_HELP_NATIVE if "help" in argv else "runsc version x\n", "")

    gathered = gather_facts(env, docker_config="/nonexistent", containerd_config="/nonexistent", run=run)
    assert all(argv[0] != str(cc) for argv in calls)
    found = by_id(doctor.checks(gathered))
    assert found["cuda_checkpoint.trusted"].failed
    assert found["cuda_checkpoint.action"].status == checks.SKIP


def test_gather_applies_creates_trust_rule_and_never_runs_a_refused_cuda_checkpoint(
    host_files: dict[str, Path],
) -> None:
    """A root-owned 0755 file in a folder others may write to: create will not mount it (they could swap
    it), so doctor fails the trust check and, running as root, never executes it."""
    cc = host_files["bin"] / "cuda-checkpoint"
    cc.chmod(0o755)
    host_files["bin"].chmod(0o777)  # not sticky
    env = fake_environ(host_files)
    env.pop("RUNSC_CUDA_TRUST_CUDA_CHECKPOINT", None)
    calls: list[list[str]] = []

    def run(argv: list[str]) -> doctor_facts.Probe:
        calls.append(argv)
        return doctor_facts.Probe(tuple(argv), 0, RUNSC_HELP_NATIVE if "help" in argv else "runsc version x\n", "")

    gathered = gather_facts(env, docker_config="/nonexistent", containerd_config="/nonexistent", run=run)
    assert gathered.cuda_checkpoint is not None
    assert gathered.cuda_checkpoint.problem == host.trust_problem(str(cc))  # the very rule create applies
    assert all(argv[0] != str(cc) for argv in calls)
    trusted = by_id(doctor.checks(gathered))["cuda_checkpoint.trusted"]
    assert trusted.failed and "writable by group or others" in trusted.detail


def test_gather_passes_global_flags_to_runsc(host_files: dict[str, Path]) -> None:
    calls: list[list[str]] = []

    def run(argv: list[str]) -> doctor_facts.Probe:
        calls.append(argv)
        return doctor_facts.Probe(tuple(argv), 0, "", "")

    gather_facts(fake_environ(host_files), ["--root", "/x"], "/nonexistent", "/nonexistent", run=run)
    runsc_calls = [argv for argv in calls if argv[0].endswith("/runsc")]
    assert [argv[1:] for argv in runsc_calls] == [
        ["--root", "/x", "--version"],
        ["--root", "/x", "flags"],
        ["--root", "/x", "help", "checkpoint"],
        ["--root", "/x", "help", "restore"],
    ]


def test_gather_unreadable_config(host_files: dict[str, Path]) -> None:
    env = fake_environ(host_files)
    host_files["config"].write_text("engine = 'warp'\n")
    facts = gather_facts(env, docker_config="/nonexistent", containerd_config="/nonexistent")
    found = by_id(doctor.checks(facts))
    assert found["config"].failed
    assert "engine" in found["config"].detail
    assert found["runsc.found"].status == checks.OK  # the rest is still checked


# --- the verb ---------------------------------------------------------------------------


def doctor_args(files: dict[str, Path], *more: str) -> list[str]:
    return [
        "doctor",
        "--docker-config",
        str(files["docker"]),
        "--containerd-config",
        str(files["containerd"]),
        "--proc-driver-nvidia",
        str(files["proc"]),
        *more,
    ]


def test_verb_json_on_a_healthy_host(shim: Shim, host_files: dict[str, Path]) -> None:
    shim.env.update(fake_environ(host_files))
    out = shim.run(*doctor_args(host_files, "--json", "--require", "docker,kubernetes"))
    assert out.returncode == 0, out.stdout.decode() + out.stderr.decode()
    doc = json.loads(out.stdout)
    assert doc["ok"] is True
    assert {c["status"] for c in doc["checks"]} == {"ok"}
    assert shim.runsc_argvs() == [
        ["--root", str(shim.root), "--version"],
        ["--root", str(shim.root), "flags"],
        ["--root", str(shim.root), "help", "checkpoint"],
        ["--root", str(shim.root), "help", "restore"],
    ]


def test_verb_text_exits_1_when_a_required_check_fails(shim: Shim, host_files: dict[str, Path]) -> None:
    shim.env.update(fake_environ(host_files))
    (host_files["proc"] / "version").unlink()
    out = shim.run(*doctor_args(host_files))
    assert out.returncode == 1
    text = out.stdout.decode()
    assert "\u2717 NVIDIA driver: no driver version in" in text
    assert "    fix: install the NVIDIA driver" in text
    assert "required check(s) failed" in text


def test_verb_works_without_runsc(shim: Shim, host_files: dict[str, Path]) -> None:
    shim.env.update(fake_environ(host_files))
    (host_files["bin"] / "runsc").unlink()
    out = shim.run(*doctor_args(host_files, "--json"))
    assert out.returncode == 1
    found = {c["id"]: c for c in json.loads(out.stdout)["checks"]}
    assert found["runsc.found"]["status"] == "fail"
    assert found["cuda_checkpoint.found"]["status"] == "ok"


def test_verb_help_and_usage_errors(shim: Shim) -> None:
    assert shim.run("doctor", "--help").returncode == 0
    bad = shim.run("doctor", "--require", "podman")
    assert bad.returncode == 2
    assert b"unknown podman" in bad.stderr
