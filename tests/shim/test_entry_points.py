"""The same behaviour from every entry point: `python -m runsc_cuda` and the built onedir binary.

Every test here takes the parametrised ``shim`` fixture, so ``make test``
runs them against the binary too (see conftest.ENTRY_POINTS).  They cover what
a frozen build can get wrong: exec in place, the environment runsc sees, the
modules that are imported lazily (jsonschema and its data files,
python-json-logger), and the create/restore paths.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from support import Shim, fixture_spec

CUDA_CHECKPOINT_DEST = "/usr/local/bin/cuda-checkpoint"


def env_printer(shim: Shim) -> Path:
    """A stand-in runsc that prints the environment it was started with, one NAME=value a line."""
    path = shim.bin / "print-env"
    path.write_text("#!/bin/sh\nexec env\n")
    path.chmod(0o755)
    return path


def child_env(shim: Shim, **env: str) -> dict[str, str]:
    out = shim.run("state", "c1", env={"RUNSC_CUDA_RUNSC": str(env_printer(shim)), **env})
    assert out.returncode == 0, out.stderr
    pairs = (line.partition("=") for line in out.stdout.decode().splitlines())
    return {k: v for k, _, v in pairs}


def test_pass_through_execs_runsc_in_place(shim: Shim) -> None:
    """containerd's parent-death signal needs runsc to be the process it started: no fork."""
    bundle = shim.bundle()
    assert shim.run("create", "--bundle", str(bundle), "c1").returncode == 0
    env = dict(shim.env)
    proc = subprocess.Popen([*shim.command, "--root", str(shim.root), "state", "c1"], env=env, stdout=subprocess.PIPE)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    last = shim.calls()[-1]
    assert last["argv"] == ["--root", str(shim.root), "state", "c1"]
    assert last["pid"] == proc.pid
    assert json.loads(out)["status"] == "created"


def test_pass_through_keeps_stdin_and_exit_status(shim: Shim) -> None:
    bundle = shim.bundle()
    assert shim.run("create", "--bundle", str(bundle), "c1").returncode == 0
    resources = b'{"memory": {"limit": 1048576}}'
    assert shim.run("update", "--resources", "-", "c1", stdin=resources).returncode == 0
    assert shim.calls()[-1]["stdin"] == resources.decode()
    missing = shim.run("kill", "nope", "KILL")
    assert missing.returncode == 128
    assert b"loading container" in missing.stderr


def test_runsc_sees_the_callers_ld_library_path(shim: Shim) -> None:
    """The onedir bootloader may point LD_LIBRARY_PATH at its bundle; runsc must get the caller's."""
    seen = child_env(shim, LD_LIBRARY_PATH="/opt/caller/lib")
    assert seen.get("LD_LIBRARY_PATH") == "/opt/caller/lib"
    assert "LD_LIBRARY_PATH_ORIG" not in seen


def test_runsc_gets_no_ld_library_path_when_the_caller_had_none(shim: Shim) -> None:
    shim.env.pop("LD_LIBRARY_PATH", None)
    seen = child_env(shim)
    assert "LD_LIBRARY_PATH" not in seen
    assert "LD_LIBRARY_PATH_ORIG" not in seen


def test_version_flag_names_both(shim: Shim) -> None:
    out = shim.run("--version")
    assert out.returncode == 0
    text = out.stdout.decode()
    assert text.startswith("runsc-cuda version ")
    assert "runsc version fake-20260817.0" in text


def test_create_of_a_gpu_bundle_mounts_cuda_checkpoint_and_turns_on_nvproxy(shim: Shim) -> None:
    bundle = shim.bundle("gpu", fixture_spec("gpu-devices"))
    out = shim.run("create", "--bundle", str(bundle), "--pid-file", str(bundle / "init.pid"), "g1")
    assert out.returncode == 0, out.stderr
    doc = json.loads((bundle / "config.json").read_text())
    mounts = [m for m in doc["mounts"] if m["destination"] == CUDA_CHECKPOINT_DEST]
    assert mounts == [
        {
            "destination": CUDA_CHECKPOINT_DEST,
            "type": "bind",
            "source": shim.fakes["cuda-checkpoint"],
            "options": ["rbind", "ro", "nosuid", "nodev"],
        }
    ]
    argv = shim.runsc_argvs()[-1]
    assert "--nvproxy=true" in argv[: argv.index("create")]


def test_create_of_a_plain_bundle_leaves_it_byte_identical(shim: Shim) -> None:
    bundle = shim.bundle()
    before = (bundle / "config.json").read_bytes()
    assert shim.run("create", "--bundle", str(bundle), "p1").returncode == 0
    assert (bundle / "config.json").read_bytes() == before
    assert shim.runsc_argvs()[-1] == ["--root", str(shim.root), "create", "--bundle", str(bundle), "p1"]


def test_invalid_bundle_is_named_precisely(shim: Shim) -> None:
    """The precise message comes from jsonschema: its data files must be in the binary."""
    bundle = shim.bundle("bad", raw=b'{"ociVersion": "1.2.1", "mounts": 5}')
    log = shim.tmp / "log.json"
    out = shim.run("--log", str(log), "--log-format", "json", "create", "--bundle", str(bundle), "b1")
    assert out.returncode != 0
    assert b"config.json: mounts: expected an array" in out.stderr
    last = json.loads(log.read_text().splitlines()[-1])
    assert last["level"] == "error"
    assert "mounts: expected an array" in last["msg"]
    assert shim.calls() == []


def test_detail_log_is_written_as_json_lines(shim: Shim) -> None:
    """python-json-logger is imported lazily: the binary must carry it."""
    detail = shim.tmp / "detail.log"
    shim.write_config(f'log_file = "{detail}"\nlog_level = "debug"\n')
    bundle = shim.bundle("gpu", fixture_spec("gpu-devices"))
    assert shim.run("create", "--bundle", str(bundle), "g1").returncode == 0
    records = [json.loads(line) for line in detail.read_text().splitlines()]
    assert records
    assert any("mounted" in r["msg"] for r in records)
    assert {"time", "level", "msg"} <= set(records[0])


def test_restore_of_a_checkpoint_image(shim: Shim) -> None:
    """Docker's `start --checkpoint`: no create, restore --bundle patches the bundle the same way."""
    spec = fixture_spec("gpu-devices")
    spec["annotations"] = {"test.fake-runsc/pids": "1,7", "test.fake-runsc/cuda-pids": "7"}
    bundle = shim.bundle("gpu", spec)
    assert shim.run("create", "--bundle", str(bundle), "g1").returncode == 0
    assert shim.run("start", "g1").returncode == 0
    image = shim.tmp / "image"
    runsc = [shim.fakes["runsc"], "--root", str(shim.root)]
    # The image is made by runsc itself here: this test is about the restore path.
    subprocess.run([*runsc, "checkpoint", "--image-path", str(image), "g1"], check=True, env=shim.env)
    subprocess.run([*runsc, "delete", "g1"], check=True, env=shim.env)
    out = shim.run(
        "restore",
        "--image-path",
        str(image),
        "--work-path",
        str(shim.tmp / "work"),
        "--detach",
        "-no-subreaper",
        "--bundle",
        str(bundle),
        "g1",
    )
    assert out.returncode == 0, out.stderr
    state = json.loads(shim.run("state", "g1").stdout)
    assert state["status"] == "running"
    (argv,) = shim.calls_of("restore")
    assert "--nvproxy=true" in argv[: argv.index("restore")]


def test_binary_ignores_pythonpath(shim: Shim, tmp_path: Path) -> None:
    """A PYTHONPATH in the caller's environment must not replace the binary's own modules."""
    decoy = tmp_path / "decoy" / "runsc_cuda"
    decoy.mkdir(parents=True)
    (decoy / "__init__.py").write_text("raise SystemExit('decoy imported')\n")
    if shim.entry == "python":
        return  # the module entry point runs from PYTHONPATH by design
    out = shim.run("--version", env={"PYTHONPATH": str(decoy.parent)})
    assert out.returncode == 0, out.stderr
    assert os.fsdecode(out.stdout).startswith("runsc-cuda version ")
