"""Bad input: a clear one-line error, a non-zero exit, no traceback, config.json untouched."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from runsc_cuda.errors import ShimError
from runsc_cuda.oci import spec
from runsc_cuda.oci.runsc import resolve_runsc

from support import Shim, fixture_spec


def assert_clean_failure(out: subprocess.CompletedProcess[bytes], *needles: str) -> str:
    assert out.returncode != 0
    err = out.stderr.decode()
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("runsc-cuda: ")
    for needle in needles:
        assert needle in lines[0]
    return lines[0]


def gpu_doc() -> dict:
    return fixture_spec("gpu-devices")


def bad_type_cases() -> list[tuple[str, object, str]]:
    def mounts_dest_int(d: dict) -> None:
        d["mounts"][3]["destination"] = 7

    def env_not_list(d: dict) -> None:
        d["process"]["env"] = "PATH=/bin"

    def env_item_not_string(d: dict) -> None:
        d["process"]["env"].append(5)

    def devices_not_list(d: dict) -> None:
        d["linux"]["devices"] = {"path": "/dev/nvidia0"}

    def device_without_path(d: dict) -> None:
        del d["linux"]["devices"][0]["path"]

    def hook_path_not_string(d: dict) -> None:
        d["hooks"]["prestart"][0]["path"] = ["x"]

    def annotation_not_string(d: dict) -> None:
        d["annotations"] = {"dev.runsc-cuda.gpu": True}

    def mounts_not_list(d: dict) -> None:
        d["mounts"] = {}

    def mount_options_not_strings(d: dict) -> None:
        d["mounts"][0]["options"] = "ro"

    return [
        ("mounts[3].destination", mounts_dest_int, "config.json: mounts[3].destination: expected a string"),
        ("process.env", env_not_list, "config.json: process.env: expected an array"),
        ("process.env[5]", env_item_not_string, "config.json: process.env[5]: expected a string"),
        ("linux.devices", devices_not_list, "config.json: linux.devices: expected an array"),
        ("linux.devices[0]", device_without_path, "config.json: linux.devices[0]: missing required field 'path'"),
        ("hooks.prestart[0].path", hook_path_not_string, "config.json: hooks.prestart[0].path: expected a string"),
        ("annotations", annotation_not_string, "config.json: annotations['dev.runsc-cuda.gpu']: expected a string"),
        ("mounts", mounts_not_list, "config.json: mounts: expected an array"),
        ("mounts[0].options", mount_options_not_strings, "config.json: mounts[0].options: expected an array"),
    ]


@pytest.mark.parametrize("name,mutate,message", bad_type_cases(), ids=[c[0] for c in bad_type_cases()])
def test_a_wrong_type_names_the_exact_field(shim: Shim, name: str, mutate: object, message: str) -> None:
    doc = gpu_doc()
    mutate(doc)  # type: ignore[operator]
    bundle = shim.bundle("bad", doc)
    raw = (bundle / "config.json").read_bytes()
    out = shim.run("create", "--bundle", str(bundle), "c1")
    line = assert_clean_failure(out)
    assert line == f"runsc-cuda: {message}"
    assert (bundle / "config.json").read_bytes() == raw
    assert shim.calls() == []  # runsc never ran


def test_a_missing_bundle_is_one_clear_line(shim: Shim) -> None:
    out = shim.run("create", "--bundle", str(shim.tmp / "nope"), "c1")
    assert_clean_failure(out, "no such directory")
    assert shim.calls() == []


def test_a_bundle_without_config_json(shim: Shim) -> None:
    folder = shim.tmp / "empty"
    folder.mkdir()
    assert_clean_failure(shim.run("create", "--bundle", str(folder), "c1"), "config.json: no such file")


@pytest.mark.parametrize(
    "raw,needle",
    [
        (b"{not json", "invalid JSON at line 1 column 2"),
        (b"", "invalid JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b"[1, 2]", "config.json: expected an object"),
        (b"null", "config.json: expected an object"),
        (b"[" * 100000, "nested too deeply"),
    ],
    ids=["syntax", "empty", "binary", "array", "null", "deep"],
)
def test_unparseable_config_json_is_refused_and_untouched(shim: Shim, raw: bytes, needle: str) -> None:
    bundle = shim.bundle("bad", raw=raw)
    out = shim.run("create", "--bundle", str(bundle), "c1")
    assert_clean_failure(out, needle)
    assert (bundle / "config.json").read_bytes() == raw


def test_an_unreadable_config_json_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # root reads mode-0 files, so the permission error is simulated at the os.open() edge.
    (tmp_path / "config.json").write_text("{}")
    real_open = os.open

    def deny(path: object, *args: object, **kw: object) -> object:
        if str(path).endswith("config.json"):
            raise PermissionError(13, "Permission denied")
        return real_open(path, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", deny)
    with pytest.raises(ShimError, match=r"config\.json: cannot read: Permission denied"):
        spec.read(str(tmp_path))


def test_a_missing_runsc_is_a_clear_error_on_every_path(shim: Shim) -> None:
    shim.env["RUNSC_CUDA_RUNSC"] = str(shim.tmp / "no-such-runsc")
    bundle = shim.bundle()
    assert_clean_failure(shim.run("state", "c1"), "no-such-runsc", "not an executable")
    assert_clean_failure(shim.run("create", "--bundle", str(bundle), "c1"), "not an executable")


def test_no_runsc_on_path(shim: Shim) -> None:
    os.unlink(shim.bin / "runsc")
    assert_clean_failure(shim.run("state", "c1"), "runsc not found on PATH")


def test_runsc_that_is_runsc_cuda_itself_is_refused(shim: Shim, tmp_path: Path) -> None:
    link = tmp_path / "runsc-link"
    script = tmp_path / "runsc-cuda-script"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o755)
    link.symlink_to(script)
    with pytest.raises(ShimError, match="runsc-cuda itself"):
        resolve_runsc(str(link), None, me=os.path.realpath(script))


@pytest.mark.parametrize(
    "text,needle",
    [
        ("engine = 'warp'", "engine: expected one of auto, native, exec"),
        ("nvproxy = 'yes'", "nvproxy: expected true or false"),
        ("lock_timeout_ms = -1", "lock_timeout_ms: must be greater than 0"),
        ("no_such_key = 1", "unknown key 'no_such_key'"),
        ("engine = ", "invalid TOML"),
    ],
    ids=["engine", "bool", "negative", "unknown", "syntax"],
)
def test_an_invalid_config_file_is_a_clear_error(shim: Shim, text: str, needle: str) -> None:
    config = shim.write_config(text)
    bundle = shim.bundle("gpu", gpu_doc())
    raw = (bundle / "config.json").read_bytes()
    line = assert_clean_failure(shim.run("create", "--bundle", str(bundle), "c1"), needle)
    assert str(config) in line
    assert (bundle / "config.json").read_bytes() == raw


def test_an_invalid_environment_override_names_the_variable(shim: Shim) -> None:
    shim.env["RUNSC_CUDA_LOCK_TIMEOUT_MS"] = "soon"
    bundle = shim.bundle()
    assert_clean_failure(shim.run("create", "--bundle", str(bundle), "c1"), "RUNSC_CUDA_LOCK_TIMEOUT_MS")


def test_a_config_file_named_by_env_must_exist(shim: Shim) -> None:
    shim.env["RUNSC_CUDA_CONFIG"] = str(shim.tmp / "absent.toml")
    assert_clean_failure(shim.run("create", "--bundle", str(shim.bundle()), "c1"), "does not exist")
    assert_clean_failure(shim.run("state", "c1"), "does not exist")


def test_an_unreadable_config_file(shim: Shim) -> None:
    folder = shim.tmp / "config-dir"
    folder.mkdir()
    shim.env["RUNSC_CUDA_CONFIG"] = str(folder)
    assert_clean_failure(shim.run("create", "--bundle", str(shim.bundle()), "c1"), "config file")


def test_errors_reach_the_runtime_log_as_the_last_error_line(shim: Shim) -> None:
    bundle = shim.bundle("bad", raw=b"{")
    log = shim.tmp / "log.json"
    log.write_bytes(b'{"msg":"earlier","level":"error","time":"2026-01-01T00:00:00Z"}')  # runsc: no newline
    out = shim.run("--log", str(log), "--log-format", "json", "create", "--bundle", str(bundle), "c1")
    assert out.returncode != 0
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    errors = [x for x in lines if x["level"] == "error"]
    assert errors[-1]["msg"].startswith("runsc-cuda: ")
    assert "invalid JSON" in errors[-1]["msg"]
