"""tests/hygiene.py, the end-of-session check: a session that leaves a runsc process running or a file
in a system folder fails and names it; a clean one passes; SIGTERM still runs the finalizers.

Each case runs a small pytest session of its own (in a subprocess) with the plugin loaded.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent.parent

import sandboxes  # noqa: E402 - scripts/sandboxes.py (pytest's pythonpath)

# A process that looks like a gVisor sandbox: called runsc-sandbox, its --root in the session's tmp folder.
FAKE_SANDBOX = '''
def fake_sandbox(root):
    """A process called runsc-sandbox whose --root is ``root`` (bash's exec -a names it)."""
    root.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        ["bash", "-c", f'exec -a runsc-sandbox {sys.executable} -c "import time; time.sleep(600)" --root={root} boot'],
        start_new_session=True,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with open(f"/proc/{proc.pid}/cmdline", "rb") as f:
            if f.read().startswith(b"runsc-sandbox"):
                break
        time.sleep(0.01)
    with open(os.environ["HYGIENE_PIDS"], "a") as f:
        f.write(f"{proc.pid}\\n")
    return proc
'''


def session(tmp_path: Path, test_source: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``pytest`` on one test file in a folder of its own, the plugin loaded as tests/conftest.py loads it."""
    folder = tmp_path / "inner"
    folder.mkdir()
    paths = [str(TESTS), str(TESTS.parent / "scripts")]  # what pyproject's pythonpath gives the real session
    conftest = f"import sys\nsys.path[:0] = {paths!r}\npytest_plugins = ['hygiene']\n"
    (folder / "conftest.py").write_text(conftest)
    head = "import os, signal, subprocess, sys, time\nfrom pathlib import Path\nimport pytest\n"
    (folder / "test_inner.py").write_text(head + FAKE_SANDBOX + textwrap.dedent(test_source))
    full_env = {**os.environ, "HYGIENE_PIDS": str(tmp_path / "pids"), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp", str(tmp_path / "base")],
        cwd=folder,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def pids(tmp_path: Path) -> list[int]:
    path = tmp_path / "pids"
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def alive(pid: int) -> bool:
    proc = sandboxes.read_process(pid)
    return proc is not None and proc.argv[0] == "runsc-sandbox"


@pytest.fixture
def no_strays(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Whatever the inner session did, its fake sandboxes do not outlive the test."""
    yield
    for pid in pids(tmp_path):
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_a_runsc_process_left_running_fails_the_session_naming_it(tmp_path: Path, no_strays: None) -> None:
    out = session(
        tmp_path,
        """
        def test_starts_a_sandbox_and_forgets_it(tmp_path):
            fake_sandbox(tmp_path / "runsc-root")
        """,
    )
    [pid] = pids(tmp_path)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "1 passed" in out.stdout  # the test itself passed: the session fails for what it left
    assert "host hygiene: FAILED" in out.stdout
    assert f"runsc process still running: {pid} runsc-sandbox" in out.stdout
    assert f"killed {pid} runsc-sandbox" in out.stdout  # and it does not stay: the check removed it
    assert not alive(pid)


def test_a_session_that_removes_what_it_started_passes(tmp_path: Path, no_strays: None) -> None:
    out = session(
        tmp_path,
        """
        def test_starts_a_sandbox_and_removes_it(tmp_path):
            proc = fake_sandbox(tmp_path / "runsc-root")
            proc.kill()
            proc.wait()
        """,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "host hygiene" not in out.stdout


def test_a_file_that_appears_in_a_system_folder_fails_the_session(tmp_path: Path) -> None:
    """As runsc made an empty /usr/local/bin/cuda-checkpoint through a bound /usr (here a stand-in folder)."""
    system = tmp_path / "usr-local-bin"
    system.mkdir()
    (system / "already-there").write_text("#!/bin/sh\n")
    out = session(
        tmp_path,
        f"""
        def test_creates_a_mount_point_on_the_host():
            path = Path({str(system)!r}) / "cuda-checkpoint"
            path.touch()
            path.chmod(0o755)
        """,
        env={sandboxes.ENV_FOLDERS: str(system)},
    )
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"appeared in a system folder: {system}/cuda-checkpoint (empty executable file)" in out.stdout
    assert "already-there" not in out.stdout


def test_sigterm_interrupts_the_session_and_the_finalizers_still_remove_the_sandbox(
    tmp_path: Path, no_strays: None
) -> None:
    out = session(
        tmp_path,
        """
        @pytest.fixture
        def sandbox(tmp_path):
            proc = fake_sandbox(tmp_path / "runsc-root")
            yield proc
            proc.kill()
            proc.wait()

        def test_is_terminated(sandbox):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)
        """,
    )
    [pid] = pids(tmp_path)
    assert out.returncode == pytest.ExitCode.INTERRUPTED, out.stdout + out.stderr
    assert "KeyboardInterrupt" in out.stdout + out.stderr and "SIGTERM" in out.stdout + out.stderr
    assert "host hygiene" not in out.stdout
    assert not alive(pid)


@pytest.mark.e2e
def test_a_real_sandbox_left_running_fails_the_session_and_is_deleted(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: runsc creates sandboxes")
    from e2e.stack import Unavailable, build_runsc, is_static

    try:
        runsc = build_runsc()
    except Unavailable as e:
        pytest.skip(f"no real runsc: {e}")
    busybox = shutil.which("busybox")
    if busybox is None or not is_static(busybox):
        pytest.skip("no static busybox (busybox-static)")
    root_file = tmp_path / "root"
    try:
        out = session(
            tmp_path,
            f"""
            import json, shutil

            def test_runs_a_sandbox_and_forgets_it(tmp_path):
                rootfs = tmp_path / "rootfs"
                (rootfs / "bin").mkdir(parents=True)
                (rootfs / "proc").mkdir()
                shutil.copy({busybox!r}, rootfs / "bin" / "busybox")
                bundle = tmp_path / "bundle"
                bundle.mkdir()
                spec = {{
                    "ociVersion": "1.0.2",
                    "process": {{"args": ["/bin/busybox", "sleep", "600"], "cwd": "/", "env": ["PATH=/bin"],
                                "user": {{"uid": 0, "gid": 0}}}},
                    "root": {{"path": str(rootfs)}},
                    "mounts": [{{"destination": "/proc", "type": "proc", "source": "proc"}}],
                    "linux": {{"namespaces": [{{"type": t}} for t in ("pid", "ipc", "uts", "mount")]}},
                }}
                (bundle / "config.json").write_text(json.dumps(spec))
                root = tmp_path / "runsc-root"
                Path({str(root_file)!r}).write_text(str(root))
                with open(tmp_path / "runsc.out", "w") as log:  # not a pipe: the sandbox keeps it open
                    subprocess.run(
                        [{runsc!r}, "--root", str(root), "--network=none", "run", "--detach", "--bundle", str(bundle),
                         "leaky"],
                        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, timeout=120, check=True,
                    )
            """,
        )
        root = root_file.read_text()
        assert out.returncode == 1, out.stdout + out.stderr
        assert "1 passed" in out.stdout
        said = out.stdout
        assert "runsc process still running:" in said and "runsc-sandbox" in said and "runsc-gofer" in said, said
        assert f"runsc delete --force leaky under {root}" in said
        assert sandboxes.processes_naming([root]) == []
        assert sandboxes.mounts_under(root) == []
    finally:
        if root_file.exists():
            sandboxes.remove_sandboxes(runsc, root_file.read_text())


def test_the_session_check_ignores_what_was_running_before_and_what_is_not_the_sessions(tmp_path: Path) -> None:
    """Other sessions' sandboxes (another pytest-N folder) are not this session's leak."""
    other = tmp_path / "other-session"
    proc = subprocess.Popen(
        ["bash", "-c", f'exec -a runsc-sandbox {sys.executable} -c "import time; time.sleep(600)" --root={other}'],
        start_new_session=True,
    )
    try:
        out = session(tmp_path, "def test_nothing():\n    time.sleep(0.5)\n")
        assert out.returncode == 0, out.stdout + out.stderr
        assert "host hygiene" not in out.stdout
        assert json.dumps(str(proc.pid)) not in out.stdout
    finally:
        proc.kill()
        proc.wait()


# --- scripts/sandboxes.py's pieces ------------------------------------------------------------


def test_a_folder_is_named_by_itself_and_paths_inside_it_not_by_a_longer_name() -> None:
    assert sandboxes.names_folder(["runsc-sandbox", "--root=/tmp/t/root", "boot"], "/tmp/t/root")
    assert sandboxes.names_folder(["runsc", "--root", "/tmp/t/root/"], "/tmp/t/root")
    assert sandboxes.names_folder(["runsc-gofer", "--bundle", "/tmp/t/bundles/c1"], "/tmp/t")
    assert not sandboxes.names_folder(["runsc-sandbox", "--root=/tmp/t/root2"], "/tmp/t/root")
    assert not sandboxes.names_folder(["runsc-sandbox", "--log=/tmp/tt/log.json"], "/tmp/t")


def test_runsc_processes_by_their_names() -> None:
    def proc(*argv: str) -> sandboxes.Process:
        return sandboxes.Process(1, argv, 0)

    assert sandboxes.is_runsc(proc("runsc-sandbox", "--root=/r", "boot"))
    assert sandboxes.is_runsc(proc("/opt/runsc", "--root", "/r", "list"))
    assert sandboxes.is_runsc(proc("/usr/bin/python3", "-S", "/tmp/x/bin/runsc", "--root", "/r", "state", "c"))
    assert not sandboxes.is_runsc(proc("/usr/bin/python3", "-m", "pytest", "--root=/r"))
    assert not sandboxes.is_runsc(proc("containerd-shim-runc-v2", "-namespace", "moby"))
    assert sandboxes.root_of(proc("runsc-gofer", "--log=/l", "--root=/r/x", "gofer")) == "/r/x"
    assert sandboxes.root_of(proc("runsc", "--root", "/r/y", "list")) == "/r/y"


def test_runscs_state_files_name_its_containers(tmp_path: Path) -> None:
    """runsc keeps <sandbox>_sandbox:<container>.state files, not a folder per container."""
    for name in ("c1_sandbox:c1.state", "c1_sandbox:c1.lock", "c1_sandbox:sidecar.state", "runsc-c1.sock"):
        (tmp_path / name).write_text("")
    (tmp_path / "null-netns").write_text("")
    assert sandboxes.container_ids(None, tmp_path) == ["c1", "sidecar"]


def test_removing_sandboxes_kills_what_names_the_root_and_refuses_a_wide_folder(tmp_path: Path) -> None:
    root = tmp_path / "runsc-root"
    root.mkdir()
    proc = subprocess.Popen(
        ["bash", "-c", f'exec -a runsc-gofer {sys.executable} -c "import time; time.sleep(600)" --root={root}'],
    )
    try:
        deadline = time.monotonic() + 10
        while not sandboxes.processes_naming([root]) and time.monotonic() < deadline:
            time.sleep(0.01)
        notes = sandboxes.remove_sandboxes(None, root)
        assert [n for n in notes if n.startswith(f"killed leftover process {proc.pid} runsc-gofer")], notes
        assert sandboxes.processes_naming([root]) == []  # gone (and reaped: it was our child)
        assert sandboxes.remove_sandboxes(None, root) == []  # nothing left: nothing to say
        with pytest.raises(ValueError):
            sandboxes.remove_sandboxes(None, "/tmp")
    finally:
        proc.kill()
        proc.wait()


def test_mountinfo_escapes_are_read_back() -> None:
    assert sandboxes._unescape("/tmp/a\\040b\\134c") == "/tmp/a b\\c"
