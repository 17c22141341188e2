"""create / run / restore: GPU bundles get the cuda-checkpoint mount and nvproxy; others are never written."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from runsc_cuda import layout
from runsc_cuda.oci import spec

from support import Shim, fixture_spec

GPU_ANNOTATIONS = {"test.fake-runsc/pids": "1,7", "test.fake-runsc/cuda-pids": "7"}


def gpu_spec() -> dict[str, Any]:
    doc = fixture_spec("gpu-devices")
    doc.setdefault("annotations", {}).update(GPU_ANNOTATIONS)
    return doc


def mounts_at_dest(bundle: Path) -> list[dict[str, Any]]:
    doc = json.loads((bundle / "config.json").read_text())
    return [m for m in doc["mounts"] if m["destination"] == layout.CONTAINER_CUDA_CHECKPOINT]


def runsc_call(shim: Shim, verb: str) -> list[str]:
    calls = [a for a in shim.runsc_argvs() if verb in a]
    assert calls, shim.runsc_argvs()
    return calls[-1]


# --- pure patch ---------------------------------------------------------------------


def test_patch_adds_one_read_only_bind_mount_with_fixed_options() -> None:
    out = spec.patch(gpu_spec(), "/usr/bin/cuda-checkpoint")
    assert out.doc is not None
    assert out.doc["mounts"][-1] == {
        "destination": "/usr/local/bin/cuda-checkpoint",
        "type": "bind",
        "source": "/usr/bin/cuda-checkpoint",
        "options": ["rbind", "ro", "nosuid", "nodev"],
    }


def test_patching_a_patched_spec_changes_nothing() -> None:
    once = spec.patch(gpu_spec(), "/usr/bin/cuda-checkpoint").doc
    assert once is not None
    assert spec.patch(once, "/usr/bin/cuda-checkpoint").doc is None
    assert spec.patch(once, "/other/cuda-checkpoint").doc is None


def test_patch_keeps_unknown_fields_and_their_order() -> None:
    doc = gpu_spec()
    doc = {"zzz-first": {"b": 1, "a": [1.5, None, True]}, **doc, "aaa-last": "x"}
    out = spec.patch(doc, "/usr/bin/cuda-checkpoint").doc
    assert out is not None
    assert list(out) == list(doc)
    assert out["zzz-first"] == {"b": 1, "a": [1.5, None, True]}
    assert out["mounts"][:-1] == doc["mounts"]


def test_a_foreign_mount_at_the_destination_is_not_replaced() -> None:
    doc = gpu_spec()
    doc["mounts"].append(
        {
            "destination": "/usr/local/bin/cuda-checkpoint",
            "type": "bind",
            "source": "/opt/mine",
            "options": ["rbind", "rw"],
        }
    )
    out = spec.patch(doc, "/usr/bin/cuda-checkpoint")
    assert out.doc is None
    assert out.notes[0].level == "warning" and "does not replace" in out.notes[0].text


def test_patch_is_pure() -> None:
    doc = gpu_spec()
    before = json.dumps(doc)
    spec.patch(doc, "/usr/bin/cuda-checkpoint")
    assert json.dumps(doc) == before


# --- through the CLI ----------------------------------------------------------------------


def test_a_gpu_bundle_gets_the_mount_and_runsc_gets_nvproxy(shim: Shim) -> None:
    bundle = shim.bundle("gpu", gpu_spec())
    out = shim.run("create", "--bundle", str(bundle), "c1")
    assert out.returncode == 0, out.stderr
    assert [m["source"] for m in mounts_at_dest(bundle)] == [shim.fakes["cuda-checkpoint"]]
    argv = runsc_call(shim, "create")
    assert "--nvproxy=true" in argv[: argv.index("create")]
    assert argv[argv.index("create") :] == ["create", "--bundle", str(bundle), "c1"]


def test_a_non_gpu_bundle_stays_byte_identical_and_runsc_gets_the_same_argv(shim: Shim) -> None:
    raw = json.dumps(fixture_spec("plain"), indent=3).encode() + b"\n\n"
    bundle = shim.bundle("plain", raw=raw)
    st = os.stat(bundle / "config.json")
    out = shim.run(
        "--log",
        str(bundle / "log.json"),
        "--log-format",
        "json",
        "create",
        "--bundle",
        str(bundle),
        "--pid-file",
        str(bundle / "init.pid"),
        "c1",
    )
    assert out.returncode == 0, out.stderr
    assert (bundle / "config.json").read_bytes() == raw
    assert os.stat(bundle / "config.json").st_mtime_ns == st.st_mtime_ns
    assert os.stat(bundle / "config.json").st_ino == st.st_ino
    assert runsc_call(shim, "create") == [
        "--root",
        str(shim.root),
        "--log",
        str(bundle / "log.json"),
        "--log-format",
        "json",
        "create",
        "--bundle",
        str(bundle),
        "--pid-file",
        str(bundle / "init.pid"),
        "c1",
    ]


def test_env_alone_does_not_make_a_gpu_container(shim: Shim) -> None:
    doc = fixture_spec("plain")
    doc["process"]["env"].append("NVIDIA_VISIBLE_DEVICES=all")
    bundle = shim.bundle("cuda-image", doc)
    raw = (bundle / "config.json").read_bytes()
    assert shim.run("create", "--bundle", str(bundle), "c1").returncode == 0
    assert (bundle / "config.json").read_bytes() == raw
    assert not any("--nvproxy=true" in a for a in shim.runsc_argvs())


def test_create_twice_then_restore_keeps_a_single_mount(shim: Shim) -> None:
    bundle = shim.bundle("gpu", gpu_spec())
    assert shim.run("create", "--bundle", str(bundle), "c1").returncode == 0
    first = (bundle / "config.json").read_bytes()
    assert shim.run("delete", "--force", "c1").returncode == 0
    assert shim.run("create", "--bundle", str(bundle), "c1").returncode == 0
    assert (bundle / "config.json").read_bytes() == first
    assert len(mounts_at_dest(bundle)) == 1


def test_the_bundle_defaults_to_the_current_directory(shim: Shim) -> None:
    bundle = shim.bundle("gpu", gpu_spec())
    out = shim.run("create", "c1", cwd=str(bundle))
    assert out.returncode == 0, out.stderr
    assert len(mounts_at_dest(bundle)) == 1


def test_runc_short_bundle_flag_is_understood(shim: Shim) -> None:
    bundle = shim.bundle("gpu", gpu_spec())
    out = shim.run("create", "-b", str(bundle), "c1")
    assert out.returncode == 0, out.stderr
    assert len(mounts_at_dest(bundle)) == 1
    assert runsc_call(shim, "create")[-3:] == ["create", f"--bundle={bundle}", "c1"]


def test_the_write_keeps_the_file_mode(shim: Shim) -> None:
    bundle = shim.bundle("gpu", gpu_spec())
    os.chmod(bundle / "config.json", 0o600)
    assert shim.run("create", "--bundle", str(bundle), "c1").returncode == 0
    assert stat.S_IMODE(os.stat(bundle / "config.json").st_mode) == 0o600
    assert [p.name for p in bundle.iterdir()] == ["config.json"]  # no temp file left


def test_nvproxy_already_set_by_the_caller_is_left_alone(shim: Shim) -> None:
    bundle = shim.bundle("gpu", gpu_spec())
    assert shim.run("--nvproxy=false", "create", "--bundle", str(bundle), "c1").returncode == 0
    argv = runsc_call(shim, "create")
    assert argv.count("--nvproxy=false") == 1
    assert "--nvproxy=true" not in argv


def test_config_nvproxy_false_adds_no_flag_but_still_mounts(shim: Shim) -> None:
    shim.env["RUNSC_CUDA_NVPROXY"] = "false"
    bundle = shim.bundle("gpu", gpu_spec())
    assert shim.run("create", "--bundle", str(bundle), "c1").returncode == 0
    assert "--nvproxy=true" not in runsc_call(shim, "create")
    assert len(mounts_at_dest(bundle)) == 1


def test_without_a_host_cuda_checkpoint_the_container_still_starts_with_a_warning(shim: Shim) -> None:
    shim.env["RUNSC_CUDA_CUDA_CHECKPOINT"] = str(shim.tmp / "missing" / "cuda-checkpoint")
    bundle = shim.bundle("gpu", gpu_spec())
    raw = (bundle / "config.json").read_bytes()
    log = bundle / "log.json"
    out = shim.run("--log", str(log), "--log-format", "json", "create", "--bundle", str(bundle), "c1")
    assert out.returncode == 0, out.stderr
    assert (bundle / "config.json").read_bytes() == raw
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert any(x["level"] == "warning" and "checkpoint will not work" in x["msg"] for x in lines)
    assert shim.run("start", "c1").returncode == 0


def test_an_untrusted_host_cuda_checkpoint_is_not_mounted(shim: Shim) -> None:
    os.chmod(shim.fakes["cuda-checkpoint"], 0o777)
    bundle = shim.bundle("gpu", gpu_spec())
    log = bundle / "log.json"
    out = shim.run("--log", str(log), "--log-format", "json", "create", "--bundle", str(bundle), "c1")
    assert out.returncode == 0, out.stderr
    assert mounts_at_dest(bundle) == []
    assert "writable by group or others" in log.read_text()


def test_run_is_patched_like_create(shim: Shim) -> None:
    bundle = shim.bundle("gpu", gpu_spec())
    out = shim.run("run", "--detach", "--bundle", str(bundle), "c1")
    assert out.returncode == 0, out.stderr
    assert len(mounts_at_dest(bundle)) == 1
    assert "--nvproxy=true" in runsc_call(shim, "run")


@pytest.mark.parametrize("flag", ["--no-pivot", "--no-new-keyring"])
def test_runc_create_flags_runsc_lacks_are_dropped_not_fatal(shim: Shim, flag: str) -> None:
    bundle = shim.bundle()
    out = shim.run("create", flag, "--bundle", str(bundle), "c1")
    assert out.returncode == 0, out.stderr
    assert flag not in runsc_call(shim, "create")
