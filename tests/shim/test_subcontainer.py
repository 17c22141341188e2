"""A CRI sub-container (runsc_cuda/oci/subcontainer.py): start gets create's stdio, the shim the exit.

Over a tiny stand-in runsc that behaves like the real one in the way that matters:
``start`` hands its own stdout/stderr to a long-lived "sandbox" process, so a caller
that captures start's output with a pipe (containerd's runc.v2 shim) waits forever
unless runsc-cuda gives start the stdio of create.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from runsc_cuda.oci import runsc, stdio, subcontainer

from support import Shim

# The stand-in: create refuses --pid-file (runsc-cuda must not pass the shim's: runsc would
# write the sandbox's PID there); start leaves a "sandbox" holding its stdout and stderr (as
# runsc does for a sub-container) and says hello on both; wait blocks until kill.
STAND_IN = r"""#!/bin/sh
root=""
while [ $# -gt 0 ]; do
    case "$1" in --root) root=$2; shift 2;; --log|--log-format) shift 2;; --*=*) shift;; *) break;; esac
done
verb=$1; shift
eval "id=\${$#}"
mkdir -p "$root"
echo "$verb $*" >> "$root/calls"
case "$verb" in
create)
    [ -n "$FAIL_CREATE" ] && exit 1
    bundle=""; pid=""
    while [ $# -gt 1 ]; do case "$1" in --bundle) bundle=$2; shift 2;; --pid-file) pid=$2; shift 2;; *) shift;; esac
    done
    if [ -n "$pid" ] && grep -q '"io.kubernetes.cri.container-type": *"container"' "$bundle/config.json"; then
        echo "--pid-file passed on for a sub-container" >&2; exit 2
    fi
    [ -n "$pid" ] && echo $$ > "$pid"
    echo created > "$root/$id.state";;
start)
    echo "start-out $id"; echo "start-err $id" >&2
    echo running > "$root/$id.state"
    (sleep 5 &);;
state)
    [ -f "$root/$id.state" ] || { echo "container $id does not exist" >&2; exit 1; }
    echo "{\"id\":\"$id\",\"status\":\"$(cat "$root/$id.state")\"}";;
wait)
    [ "$(cat "$root/$id.state" 2>/dev/null)" = running ] || { echo "unable to find process" >&2; exit 1; }
    while [ ! -f "$root/$id.exit" ]; do sleep 0.05; done
    echo stopped > "$root/$id.state"
    echo "{\"id\":\"$id\",\"exitStatus\":$(cat "$root/$id.exit")}";;
kill) echo 143 > "$root/$1.exit";;
delete) rm -f "$root/$id".*;;
esac
"""

# As the runc.v2 shim: a subreaper that runs create (stdio on a pipe), reads the pid file, runs
# start with a capturing pipe, kills the container and reaps the "init" named in the pid file.
SHIM = r"""
import ctypes, json, os, subprocess, sys, time
command, root, bundle, cid, env = json.loads(sys.argv[1])
ctypes.CDLL(None).prctl(36, 1)  # PR_SET_CHILD_SUBREAPER
out_r, out_w = os.pipe()
argv = [*command, "--root", root]
created = subprocess.run([*argv, "create", "--bundle", bundle, "--pid-file", bundle + "/init.pid", cid],
                         stdin=subprocess.DEVNULL, stdout=out_w, stderr=out_w, env=env, check=False)
os.close(out_w)
report = {"create": created.returncode}
init = int(open(bundle + "/init.pid").read())
report["init_alive"] = os.path.exists(f"/proc/{init}")
t = time.monotonic()
started = subprocess.run([*argv, "start", cid], capture_output=True, env=env, timeout=20, check=False)
report.update(start=started.returncode, start_s=time.monotonic() - t)
report["start_output"] = (started.stdout + started.stderr).decode()
got = b""
while b"start-err" not in got:
    chunk = os.read(out_r, 4096)
    if not chunk:
        break
    got += chunk
report["container_output"] = got.decode()
time.sleep(0.3)
report["running_after_start"] = os.waitpid(init, os.WNOHANG) == (0, 0)
subprocess.run([*argv, "kill", cid, "SIGTERM"], env=env, check=True)
pid, status = os.waitpid(init, 0)
report["init_exit"] = os.waitstatus_to_exitcode(status)
print(json.dumps(report))
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


def wait_gone(path: Path, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return not path.exists()


def test_subcontainer_start_writes_to_creates_stdio_and_its_exit_reaches_the_shim(
    shim: Shim, short_state: Path
) -> None:
    folder = bundle(shim, "app", SUB)
    spec = json.dumps([shim.command, str(shim.root), str(folder), "app1", shim.env])
    done = subprocess.run([sys.executable, "-c", SHIM, spec], capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr.decode()
    report = json.loads(done.stdout)
    assert report["create"] == 0
    assert report["init_alive"]  # the pid file names the holder, not the sandbox
    assert report["start"] == 0
    assert report["start_s"] < 5  # without the holder: until the "sandbox" lets go of the pipe
    assert report["start_output"] == ""
    assert "start-out app1" in report["container_output"]
    assert "start-err app1" in report["container_output"]
    assert report["running_after_start"]
    assert report["init_exit"] == 143  # runsc wait's exit status of the container
    assert not list(short_state.glob("stdio/*.sock"))
    calls = (shim.root / "calls").read_text()
    assert "--pid-file" not in calls


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
    assert wait_gone(sock, subcontainer.POLL_S + 5)


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
    sure, value = runsc.fast_config_value(text, "state_dir")
    if sure:
        assert value == tomllib.loads(text).get("state_dir")


def test_state_dir_env_wins_then_file_then_default(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('state_dir = "/from/file"\n')
    env = {"RUNSC_CUDA_CONFIG": str(config)}
    assert runsc.configured_state_dir(env) == "/from/file"
    assert runsc.configured_state_dir({**env, "RUNSC_CUDA_STATE_DIR": "/from/env"}) == "/from/env"
    config.write_text("")
    assert runsc.configured_state_dir(env) == runsc.DEFAULT_STATE_DIR


@pytest.mark.parametrize(
    ("programs", "shim"),
    [
        (["containerd-shim-runc-v2"], "containerd-shim-runc-v2"),
        (["sh", "python3", "containerd-shim-runsc-v1", "containerd"], "containerd-shim-runsc-v1"),
        (["bash", "pytest"], None),
    ],
)
def test_the_calling_shim_is_the_nearest_containerd_shim(programs: list[str], shim: str | None) -> None:
    assert subcontainer.calling_shim(programs) == shim


RELAY_C = r"""
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
int main(int argc, char **argv) {
    pid_t pid = fork();
    if (pid == 0) { execvp(argv[1], argv + 1); _exit(127); }
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) < 0) return 127;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}
"""


def shim_program(tmp_path: Path, name: str) -> Path:
    """A program whose executable file is called ``name`` (runsc-cuda reads /proc/PID/exe, not argv[0]):
    it runs its arguments as a child and exits with the child's status, as a shim waits for its runtime."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build a stand-in shim program")
    source = tmp_path / "relay.c"
    source.write_text(RELAY_C)
    program = tmp_path / name
    subprocess.run([cc, "-O1", "-o", str(program), str(source)], check=True, timeout=60)
    return program


def test_under_gvisors_own_shim_create_is_left_to_runsc(shim: Shim, short_state: Path, tmp_path: Path) -> None:
    """containerd-shim-runsc-v1 (binary_name = runsc-cuda) handles runsc's stdio and pid file itself."""
    folder = bundle(shim, "v1", SUB)
    relay = shim_program(tmp_path, "containerd-shim-runsc-v1")
    argv = [str(relay), *shim.command, "--root", str(shim.root), "create",
            "--bundle", str(folder), "--pid-file", str(folder / "init.pid"), "v1"]  # fmt: skip
    err = tmp_path / "stderr"
    with err.open("wb") as f:  # not a pipe: a holder would keep it open
        done = subprocess.run(argv, env=shim.env, stdout=f, stderr=f, timeout=30)
    done.stderr = err.read_bytes()
    assert done.returncode == 2  # the stand-in refuses --pid-file for a sub-container: passed on unchanged
    assert b"--pid-file passed on" in done.stderr
    assert not list(short_state.glob("stdio/*.sock"))
