"""A CRI sub-container's stdio (runsc_cuda/oci/stdio.py): start gets the descriptors create had.

Over a tiny stand-in runsc that behaves like the real one in the way that matters:
``start`` hands its own stdout/stderr to a long-lived "sandbox" process, so a caller
that captures start's output with a pipe (containerd's runc.v2 shim) waits forever
unless runsc-cuda gives start the stdio of create.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import tempfile
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from runsc_cuda.oci import stdio

from conftest import Shim

# create writes the pid file (as runsc does on success); start leaves a "sandbox" holding
# its stdout and stderr (as runsc does for a sub-container) and says hello on both.
STAND_IN = """#!/bin/sh
while [ $# -gt 0 ]; do case "$1" in --root|--log|--log-format) shift 2;; --*=*) shift;; *) break;; esac; done
verb=$1; shift
case "$verb" in
create)
    pid=""; while [ $# -gt 1 ]; do case "$1" in --pid-file) pid=$2; shift 2;; *) shift;; esac; done
    [ -n "$FAIL_CREATE" ] && exit 1
    [ -n "$pid" ] && echo $$ > "$pid"; exit 0;;
start)
    echo "start-out $1"; echo "start-err $1" >&2
    (sleep 5 &) ; exit 0;;
*) exit 0;;
esac
"""

SUB = {"io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.container-name": "app"}


@pytest.fixture
def short_state(shim: Shim) -> Iterator[Path]:
    """A state_dir short enough for unix socket paths, and the stand-in runsc."""
    folder = Path(tempfile.mkdtemp(prefix="rcs-", dir="/tmp"))
    shim.env["RUNSC_CUDA_STATE_DIR"] = str(folder)
    runsc = shim.bin / "stand-in-runsc"
    runsc.write_text(STAND_IN)
    runsc.chmod(0o755)
    shim.env["RUNSC_CUDA_RUNSC"] = str(runsc)
    yield folder
    for sock in folder.glob("stdio/*.sock"):
        sock.unlink()
    subprocess.run(["rm", "-rf", str(folder)], check=False)


def bundle(shim: Shim, name: str, annotations: dict[str, str]) -> Path:
    doc = {"ociVersion": "1.0.2", "process": {"args": ["sh"]}, "root": {"path": "rootfs"}, "annotations": annotations}
    return shim.bundle(name, doc)


def create(shim: Shim, folder: Path, cid: str, out_w: int, **env: str) -> subprocess.CompletedProcess[bytes]:
    """``create`` with stdout and stderr on the caller's pipe (as the shim gives them)."""
    argv = [*shim.command, "--root", str(shim.root), "create", "--bundle", str(folder),
            "--pid-file", str(folder / "init.pid"), cid]  # fmt: skip
    return subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out_w, stderr=out_w, env={**shim.env, **env},
                          timeout=30, check=False)  # fmt: skip


def read_until(fd: int, wanted: bytes, timeout: float = 10) -> bytes:
    got = b""
    deadline = time.monotonic() + timeout
    while wanted not in got and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            got += chunk
    return got


def wait_gone(path: Path, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return not path.exists()


def test_start_of_a_cri_subcontainer_writes_to_creates_stdio_and_returns(shim: Shim, short_state: Path) -> None:
    folder = bundle(shim, "app", SUB)
    out_r, out_w = os.pipe()
    try:
        assert create(shim, folder, "app1", out_w).returncode == 0
        os.close(out_w)  # the shim closes its copy after create: only the holder keeps it now
        out_w = -1
        sock = Path(stdio.socket_path(str(short_state), str(shim.root), "app1"))
        assert sock.is_socket()
        started = time.monotonic()
        # capture_output: a pipe, as go-runc's cmdOutput; without the holder this waits for the sleep
        result = shim.run("start", "app1", timeout=10)
        assert result.returncode == 0
        assert time.monotonic() - started < 5
        assert result.stdout == b""
        assert result.stderr == b""
        got = read_until(out_r, b"start-err app1")
        assert b"start-out app1" in got
        assert b"start-err app1" in got
        assert wait_gone(sock), "the holder keeps its socket after handing over"
    finally:
        os.close(out_r)
        if out_w >= 0:
            os.close(out_w)


def test_other_containers_start_as_before_and_get_no_holder(shim: Shim, short_state: Path) -> None:
    for name, notes in (("plain", {}), ("pause", {"io.kubernetes.cri.container-type": "sandbox"})):
        folder = bundle(shim, name, notes)
        assert create(shim, folder, name, subprocess.DEVNULL).returncode == 0
        assert not list(short_state.glob("stdio/*.sock"))
        out = short_state / f"{name}.out"
        with out.open("wb") as f:  # a file, not a pipe: start's "sandbox" keeps what it is given
            argv = [*shim.command, "--root", str(shim.root), "start", name]
            assert subprocess.run(argv, stdout=f, env=shim.env, timeout=10, check=False).returncode == 0
        assert out.read_bytes().strip() == f"start-out {name}".encode()


def test_the_holder_exits_when_create_fails(shim: Shim, short_state: Path) -> None:
    folder = bundle(shim, "bad", SUB)
    assert create(shim, folder, "bad", subprocess.DEVNULL, FAIL_CREATE="1").returncode != 0
    sock = Path(stdio.socket_path(str(short_state), str(shim.root), "bad"))
    assert wait_gone(sock, 5), "the holder outlives a failed create"


def test_the_holder_exits_when_the_bundle_is_deleted(shim: Shim, short_state: Path) -> None:
    folder = bundle(shim, "gone", SUB)
    assert create(shim, folder, "gone", subprocess.DEVNULL).returncode == 0
    sock = Path(stdio.socket_path(str(short_state), str(shim.root), "gone"))
    assert sock.is_socket()
    (folder / "config.json").unlink()
    assert wait_gone(sock, stdio.POLL_S + 5)


def test_a_start_whose_holder_is_gone_runs_with_dev_null_and_says_so(shim: Shim, short_state: Path) -> None:
    sock = Path(stdio.socket_path(str(short_state), str(shim.root), "orphan"))
    sock.parent.mkdir(parents=True, exist_ok=True)
    sock.write_text("")  # not a listening socket: connect is refused
    log = short_state / "log.json"
    result = shim.run("--log", str(log), "--log-format", "json", "start", "orphan", timeout=10)
    assert result.returncode == 0
    assert result.stdout == b""  # /dev/null, not the caller's pipe
    assert not sock.exists()
    said = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    assert said[-1]["level"] == "warning"
    assert "could not get create's stdio" in said[-1]["msg"]


def test_a_request_for_another_container_gets_nothing(shim: Shim, short_state: Path) -> None:
    import socket

    folder = bundle(shim, "mine", SUB)
    assert create(shim, folder, "mine", subprocess.DEVNULL).returncode == 0
    path = stdio.socket_path(str(short_state), str(shim.root), "mine")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(5)
        conn.connect(path)
        conn.sendall(stdio.request(str(shim.root), "someone-else"))
        message, fds, _, _ = socket.recv_fds(conn, 16, 3)
    assert (message, fds) == (b"no", [])
    assert Path(path).is_socket()  # still there for the right start
    (folder / "config.json").unlink()


@pytest.mark.parametrize(
    "text",
    [
        "",
        'state_dir = "/a/b"\n',
        "state_dir = '/a/b' # c\n",
        'runsc = "/x"\nstate_dir="/s"\n[t]\nstate_dir = "no"\n',
        'state_dir = "a\\tb"\n',
        'state_dir.x = "y"\n',
        'log_file = """x"""\n',
    ],
)
def test_fast_state_dir_agrees_with_tomllib(text: str) -> None:
    sure, value = stdio.fast_config_value(text, "state_dir")
    if sure:
        assert value == tomllib.loads(text).get("state_dir")


def test_state_dir_env_wins_then_file_then_default(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('state_dir = "/from/file"\n')
    env = {"RUNSC_CUDA_CONFIG": str(config)}
    assert stdio.state_dir(env) == "/from/file"
    assert stdio.state_dir({**env, "RUNSC_CUDA_STATE_DIR": "/from/env"}) == "/from/env"
    config.write_text("")
    assert stdio.state_dir(env) == stdio.DEFAULT_STATE_DIR
