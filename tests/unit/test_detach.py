"""detach.spawn: the one way runsc-cuda starts a helper that outlives the call (guardian, watchers)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from runsc_cuda import detach

from support import REPO, wait_for


def open_fds() -> list[int]:
    """This process's open descriptors (no new one is opened to find them)."""
    found = []
    for fd in range(256):
        try:
            os.fstat(fd)
        except OSError:
            continue
        found.append(fd)
    return found


def ignored(sig: int) -> bool:
    with open("/proc/self/status") as f:
        mask = next(int(line.split()[1], 16) for line in f if line.startswith("SigIgn:"))
    return bool(mask & (1 << (sig - 1)))


def facts_of_a_helper(tmp_path: Path, ignore_stop: bool) -> tuple[int | None, dict[str, object], int]:
    r, w = os.pipe()
    out = tmp_path / "facts.json"

    def body() -> int:
        fds = open_fds()
        facts = {
            "pid": os.getpid(),
            "sid": os.getsid(0),
            "fds": fds,
            "stdio": [os.readlink(f"/proc/self/fd/{fd}") for fd in (0, 1, 2)],
            "term_ignored": ignored(signal.SIGTERM),
            "pipe_ignored": ignored(signal.SIGPIPE),
            "said": os.read(r, 16).decode(),
        }
        (tmp_path / "facts.tmp").write_text(json.dumps(facts))
        os.rename(tmp_path / "facts.tmp", out)
        return 0

    try:
        pid = detach.spawn(body, keep=r, ignore_stop=ignore_stop)
    finally:
        os.close(r)
    os.write(w, b"go")
    os.close(w)
    wait_for(out.exists, timeout=30)
    return pid, json.loads(out.read_text()), r


@pytest.mark.parametrize("ignore_stop", [False, True])
def test_a_helper_runs_in_a_new_session_with_stdio_on_dev_null_and_only_the_kept_file(
    tmp_path: Path, ignore_stop: bool
) -> None:
    pid, facts, kept = facts_of_a_helper(tmp_path, ignore_stop)
    assert facts["pid"] == pid != os.getpid()  # its PID is told
    # A new session, which it does not lead (no terminal can become its controlling one).
    assert facts["sid"] not in (os.getsid(0), pid)
    assert facts["stdio"] == [os.devnull] * 3
    assert facts["fds"] == [0, 1, 2, kept]  # the pipe's write end and the rest are closed
    assert facts["said"] == "go"
    assert facts["term_ignored"] is ignore_stop and facts["pipe_ignored"] is False


EXIT_STATUSES = """
import ctypes, os, sys
from runsc_cuda import detach
ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: the helpers come back here
def boom():
    raise RuntimeError("boom")
for body in (lambda: 7, boom):
    pid = detach.spawn(body)
    print(os.waitpid(pid, 0)[1] >> 8)
"""


def test_a_helper_exits_with_its_bodys_status_and_1_when_it_raises() -> None:
    out = subprocess.run([sys.executable, "-c", EXIT_STATUSES], capture_output=True, timeout=60, check=False,
                         env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.decode().split() == ["7", "1"]  # the caller's code never runs on in a helper


@pytest.mark.parametrize("failure", ["no pid", "no fork"])
def test_a_checkpoint_whose_guardian_did_not_start_is_refused_and_leaves_no_record(
    failure: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from types import SimpleNamespace

    from runsc_cuda.engines import guard
    from runsc_cuda.errors import ShimError

    def spawn(*_args: object, **_kwargs: object) -> int | None:
        if failure == "no fork":
            raise OSError(11, "Resource temporarily unavailable")
        return None  # the child could not fork the guardian

    monkeypatch.setattr(detach, "spawn", spawn)
    session = SimpleNamespace(config=SimpleNamespace(state_dir=str(tmp_path)), cmd=SimpleNamespace(global_tokens=list))
    before = open_fds()
    watch = guard.Guard(session, "c1", "/run/runsc", "exec")  # type: ignore[arg-type]
    with pytest.raises(ShimError, match="cannot start the guardian"):
        watch.start()
    assert not os.path.exists(watch.path) and watch.fd is None
    assert open_fds() == before  # both ends of the pipe are closed
