"""pytest plugin (tests/conftest.py loads it): the test session leaves the host as it found it.

At the start of the session it notes the runsc processes already running and the entries of the
system folders (``SYSTEM_FOLDERS`` in scripts/sandboxes.py: /usr/local/bin, /usr/bin, /etc, ...).
At the end, after every fixture has been torn down, it FAILS the run and names them when

- a runsc process (runsc, runsc-sandbox, runsc-gofer, the tests' fake runsc) that was not running
  at the start is still alive and names one of the session's folders: pytest's temporary folder,
  or a folder a fixture registered with ``own()`` (the e2e stack's /tmp/rce-*);
- something is still mounted under those folders;
- an entry appeared in a system folder (an empty /usr/local/bin/cuda-checkpoint, say).

It then removes the leaked sandboxes (``runsc delete --force`` under their --root, SIGKILL, unmount),
so that a failed run does not leave them running either; files in system folders are only named.

SIGTERM and SIGHUP interrupt the session as Ctrl-C does, so fixture finalizers and ``finally``
blocks still remove what the tests started.

The system folders are the whole machine's: another program that adds a file there meanwhile
fails the run too.  ``RUNSC_CUDA_HYGIENE_FOLDERS`` names the folders to watch instead
(os.pathsep-separated; set but empty: none).
"""

from __future__ import annotations

import os
import sys
import time

import pytest

import sandboxes  # scripts/sandboxes.py (pytest's pythonpath)

_owned: list[str] = []
_before: dict[str, frozenset[str]] = {}
_running_at_start: set[tuple[int, int]] = set()
_findings: list[str] = []
_removed: list[str] = []


def own(folder: str | os.PathLike[str]) -> None:
    """Count processes and mounts that name ``folder`` as the suite's (for folders outside pytest's tmp)."""
    path = os.path.realpath(os.fspath(folder))
    if path not in _owned:
        _owned.append(path)


def owned() -> list[str]:
    return list(_owned)


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    _findings.clear()
    _removed.clear()
    _before.clear()
    _before.update(sandboxes.snapshot())
    _running_at_start.clear()
    _running_at_start.update(p.key for p in sandboxes.processes() if sandboxes.is_runsc(p))
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is not None:
        own(factory.getbasetemp())
    sandboxes.interrupt_on_termination()


def leaked_processes() -> list[sandboxes.Process]:
    """runsc processes started during the session that still run and name one of its folders."""
    return [p for p in sandboxes.processes_naming(_owned, runsc_only=True) if p.key not in _running_at_start]


def check() -> list[str]:
    """What the session left behind, one line each (empty: nothing)."""
    findings = []
    leaked = wait_gone(leaked_processes(), 5)  # a sandbox being deleted can take a moment to exit
    for proc in leaked:
        findings.append(f"runsc process still running: {proc.describe()}")
    for folder in _owned:
        for point in sandboxes.mounts_under(folder):
            findings.append(f"still mounted: {point}")
    for path in sandboxes.appeared(_before):
        findings.append(f"appeared in a system folder: {path}")
    if leaked:
        _removed.extend(sandboxes.remove_leaked(leaked))
    for folder in _owned:
        _removed.extend(f"unmounted {p}" for p in sandboxes.unmount_under(folder))
    return findings


def wait_gone(procs: list[sandboxes.Process], timeout: float) -> list[sandboxes.Process]:
    """Those of ``procs`` still running after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in procs if (now := sandboxes.read_process(p.pid)) is not None and now.key == p.key]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """After the fixtures' teardown (runner's sessionfinish runs first): fail the run on a leak."""
    _findings.extend(check())
    if _findings and session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    if _findings and session.config.pluginmanager.get_plugin("terminalreporter") is None:
        print(report(), file=sys.stderr)


def report() -> str:
    lines = ["the test session left this behind on the host (tests/hygiene.py):"]
    lines += [f"  {f}" for f in _findings]
    if any(f.startswith("appeared in a system folder") for f in _findings):
        lines.append(f"  (the whole machine's folders: another program may have made it; see {sandboxes.ENV_FOLDERS})")
    if _removed:
        lines.append("removed afterwards:")
        lines += [f"  {r}" for r in _removed]
    return "\n".join(lines)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _findings:
        terminalreporter.section("host hygiene: FAILED", sep="=", red=True, bold=True)
        for line in report().splitlines():
            terminalreporter.write_line(line, red=not line.startswith("removed"))
