"""Pass-through: every other verb becomes runsc with the same argv, stdin, fds and exit status."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from support import REPO, Shim


def test_argv_after_the_program_reaches_runsc_unchanged(shim: Shim) -> None:
    bundle = shim.bundle()
    assert shim.run("create", "--bundle", str(bundle), "c1").returncode == 0
    assert shim.run("start", "c1").returncode == 0
    args = ["--debug", "--log-format", "json", "kill", "c1", "15"]
    out = shim.run(*args)
    assert out.returncode == 0, out.stderr
    assert shim.runsc_argvs()[-1] == ["--root", str(shim.root), *args]


def test_exit_status_of_runsc_is_ours(shim: Shim) -> None:
    out = shim.run("state", "no-such-container")
    assert out.returncode == 128
    assert b"file does not exist" in out.stderr
    assert shim.calls()[-1]["code"] == 128


def test_unknown_global_flags_reach_runsc_which_refuses_them(shim: Shim) -> None:
    out = shim.run("--no-such-flag", "x", "state", "c1")
    assert out.returncode == 2
    assert b"flag provided but not defined: -no-such-flag" in out.stderr


def test_stdin_is_runscs(shim: Shim) -> None:
    bundle = shim.bundle()
    assert shim.run("create", "--bundle", str(bundle), "c1").returncode == 0
    resources = b'{"memory": {"limit": 1024}}'
    out = shim.run("update", "--resources", "-", "c1", stdin=resources)
    assert out.returncode == 0, out.stderr
    assert shim.calls()[-1]["stdin"] == resources.decode()


def test_stdout_is_runscs(shim: Shim) -> None:
    bundle = shim.bundle()
    shim.run("create", "--bundle", str(bundle), "c1")
    shim.run("start", "c1")
    out = shim.run("ps", "--format", "json", "c1")
    assert out.returncode == 0
    assert json.loads(out.stdout) == [1]


def test_an_inherited_file_descriptor_reaches_runsc(shim: Shim) -> None:
    read_end, write_end = os.pipe()
    try:
        out = shim.run("list", pass_fds=(write_end,))
        assert out.returncode == 0, out.stderr
        assert write_end in shim.calls()[-1]["fds"]
    finally:
        os.close(read_end)
        os.close(write_end)


def test_runsc_replaces_runsc_cuda_in_the_same_process(shim: Shim) -> None:
    proc = subprocess.Popen(
        [*shim.command, "--root", str(shim.root), "list"], env=shim.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    proc.communicate(timeout=30)
    assert shim.calls()[-1]["pid"] == proc.pid


def test_version_prints_ours_then_runscs(shim: Shim) -> None:
    out = shim.run("--version")
    assert out.returncode == 0
    from runsc_cuda import __version__

    assert out.stdout.decode().splitlines() == [
        f"runsc-cuda version {__version__}",
        "runsc version fake-20260817.0",
        "spec: 1.2.1",
    ]


def test_the_console_entry_point_module_runs(shim: Shim) -> None:
    out = subprocess.run(
        [sys.executable, "-c", "import runsc_cuda.cli as c; import sys; sys.argv=['x','list']; c.main()"],
        env={**shim.env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("module", ["logging", "jsonschema", "pythonjsonlogger", "tomllib", "dataclasses", "typing"])
def test_the_pass_through_path_imports_nothing_heavy(module: str, tmp_path: object) -> None:
    code = (
        "import sys, os\n"
        "os.execve = lambda *a: (print(' '.join(sorted(sys.modules))), sys.exit(0))\n"
        "from runsc_cuda.cli import main\n"
        "main(['runsc-cuda', '--root', '/r', 'state', 'c1'])\n"
    )
    out = subprocess.run(
        [sys.executable, "-S", "-c", code],
        capture_output=True,
        timeout=30,
        check=False,
        env={
            "PYTHONPATH": str(REPO),
            "RUNSC_CUDA_RUNSC": "/bin/true",
            "PATH": "/usr/bin:/bin",
            "RUNSC_CUDA_CONFIG": os.devnull,
        },
    )
    assert out.returncode == 0, out.stderr
    assert module not in out.stdout.decode().split()


@pytest.mark.parametrize("module", ["logging", "pythonjsonlogger", "tempfile", "tarfile", "traceback"])
def test_a_plain_create_without_a_log_file_imports_no_logger_nor_archive_code(module: str, tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"ociVersion": "1.0.2", "process": {"args": ["sh"]}}))
    code = (
        "import sys, os\n"
        "os.execve = lambda *a: (print(' '.join(sorted(sys.modules))), sys.exit(0))\n"
        "from runsc_cuda.cli import main\n"
        f"main(['runsc-cuda', '--root', '/r', 'create', '--bundle', {str(tmp_path)!r}, 'c1'])\n"
    )
    out = subprocess.run(
        [sys.executable, "-S", "-c", code],
        capture_output=True,
        timeout=30,
        check=False,
        env={"PYTHONPATH": str(REPO), "RUNSC_CUDA_RUNSC": "/bin/true", "PATH": "/usr/bin:/bin",
             "RUNSC_CUDA_CONFIG": os.devnull, "RUNSC_CUDA_STATE_DIR": str(tmp_path / "state")},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    loaded = out.stdout.decode().split()
    assert "runsc_cuda.commands.create" in loaded and module not in loaded


def test_a_config_file_with_runsc_is_read_on_the_pass_through_path(shim: Shim) -> None:
    shim.write_config(f'# runsc-cuda\nlog_level = "debug"\nrunsc = "{shim.bin / "runsc"}"\n')
    env_path = shim.env.pop("PATH")
    shim.env["PATH"] = "/usr/bin:/bin"
    try:
        out = shim.run("list")
    finally:
        shim.env["PATH"] = env_path
    assert out.returncode == 0, out.stderr
