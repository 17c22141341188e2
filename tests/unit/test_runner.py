"""The runner reads a call's output from pipes: no disk space needed, bounded, never blocking a program.

A save can fill the file system that holds $TMPDIR (containerd writes the image
there); the rollback's queries must still be read.  A program abandoned after
its timeout keeps running and writing: its pipes are drained, during the call
and, once runsc-cuda exits, by a detached drainer.
"""

from __future__ import annotations

import errno
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from runsc_cuda.runner import Runner, wait_exit

PY = sys.executable


def test_output_needs_no_disk_space(monkeypatch: pytest.MonkeyPatch) -> None:
    def full(*args: object, **kw: object) -> object:
        raise OSError(errno.ENOSPC, "No space left on device")

    for name in ("TemporaryFile", "NamedTemporaryFile", "mkstemp", "SpooledTemporaryFile"):
        monkeypatch.setattr(tempfile, name, full)
    result = Runner({}).run([PY, "-c", "import sys; print('checkpointed'); sys.stderr.write('e')"], 30)
    assert result.ok and result.stdout == b"checkpointed\n" and result.stderr == b"e"


def test_output_is_bounded_and_marked_truncated() -> None:
    script = "import os\nfor _ in range(8):\n    os.write(1, b'x' * 65536)\n    os.write(2, b'y' * 10)\n"
    result = Runner({}, max_output=1000).run([PY, "-c", script], 30)
    assert result.ok and result.truncated
    assert result.stdout == b"x" * 1000 and result.stderr == b"y" * 80


def test_a_timed_out_call_is_killed_or_abandoned_as_asked(tmp_path: Path) -> None:
    runner = Runner({})
    killed = runner.run([PY, "-c", "import time; time.sleep(30)"], 0.2)
    assert killed.timed_out and killed.returncode is not None and killed.returncode < 0
    marker = tmp_path / "done"
    script = f"import time, pathlib; time.sleep(0.5); pathlib.Path({str(marker)!r}).touch()"
    left = runner.run([PY, "-c", script], 0.1, kill_on_timeout=False)
    assert left.timed_out and left.returncode is None
    assert runner.reap(20) == 0 and marker.exists()  # it ran to its end: abandoned, never killed


def test_an_abandoned_program_never_blocks_on_a_full_pipe(tmp_path: Path) -> None:
    """It writes 4 MiB (far more than a pipe holds) after its call was abandoned, then finishes."""
    marker = tmp_path / "done"
    script = (
        "import os, time, pathlib\ntime.sleep(0.3)\nfor _ in range(64):\n    os.write(1, b'x' * 65536)\n"
        f"pathlib.Path({str(marker)!r}).touch()\n"
    )
    runner = Runner({}, max_output=100)
    assert runner.run([PY, "-c", script], 0.1, kill_on_timeout=False).returncode is None
    assert runner.reap(20) == 0 and marker.exists()


def test_pipes_of_an_abandoned_program_outlive_runsc_cuda(tmp_path: Path) -> None:
    """runsc-cuda exits while an abandoned call still runs: a drainer keeps reading its output,
    so it neither blocks on a full pipe nor dies writing to a closed one."""
    marker = tmp_path / "done"
    child = (
        "import os, time, pathlib\ntime.sleep(1.0)\nfor _ in range(64):\n    os.write(1, b'x' * 65536)\n"
        f"    os.write(2, b'y' * 65536)\npathlib.Path({str(marker)!r}).write_text('finished')\n"
    )
    parent = textwrap.dedent(
        f"""
        import sys
        from runsc_cuda.runner import Runner
        result = Runner({{}}).run([sys.executable, "-c", {child!r}], 0.2, kill_on_timeout=False)
        sys.exit(0 if result.returncode is None else 1)
        """
    )
    subprocess.run([PY, "-c", parent], check=True, timeout=30)
    deadline = time.monotonic() + 20
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists() and marker.read_text() == "finished"


def test_wait_exit_reaps_an_exited_program_and_gives_up_on_a_running_one() -> None:
    done = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    assert wait_exit(done, 30)
    assert done.returncode == 3  # reaped: its status is known

    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        assert not wait_exit(sleeper, 0.1)
        assert sleeper.returncode is None  # still running, left as it was
    finally:
        sleeper.kill()
        sleeper.wait()
    assert wait_exit(sleeper, 0)  # already reaped: nothing to wait for


def test_wait_exit_falls_back_to_popen_polling_without_pidfds(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    def no_pidfd(pid: int) -> int:
        raise OSError(errno.ENOSYS, "pidfd_open")

    monkeypatch.setattr(os, "pidfd_open", no_pidfd)
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    assert wait_exit(done, 30) and done.returncode == 0
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        assert not wait_exit(sleeper, 0.1)
    finally:
        sleeper.kill()
        sleeper.wait()


def test_wait_exit_takes_a_timeout_of_any_size() -> None:
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    assert wait_exit(done, 1e12)  # longer than poll() can wait at once
