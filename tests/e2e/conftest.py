"""Fixtures for the end-to-end tests: one real stack per session, containers that clean up after themselves."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import hygiene
from .cri_stack import CriStack, Pod
from .cri_stack import running as cri_running
from .stack import IMAGE, STOP_NOTES, CallFailed, Result, Stack, running, started_or_skip, wait_for

# A busybox loop that counts into /tmp/count and onto stdout, and exits 42 on SIGTERM
# (a shell that is PID 1 has no default action for SIGTERM: it needs the trap).
COUNTER = 'trap "exit 42" TERM; i=0; while :; do i=$((i+1)); echo $i > /tmp/count; echo $i; sleep 0.2; done'


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    """containerd + dockerd with runsc, runsc-cuda and the recorder registered; skips when it cannot run."""

    def start(root: Path) -> contextlib.AbstractContextManager[Stack]:
        hygiene.own(root)  # its sandboxes are the suite's: the end-of-session check looks for them too
        return running(root)

    with started_or_skip("e2e stack", "rce-", start) as started:
        yield started


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say what stopping the stack had to clean up by force (leaked shims, runsc's mounts)."""
    if STOP_NOTES:
        terminalreporter.section("e2e stack teardown")
        for note in STOP_NOTES:
            terminalreporter.write_line(note)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class DockerContainers:
    """Docker containers a test made; all removed at its end."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.names: list[str] = []

    def name(self, prefix: str = "e2e") -> str:
        name = unique(prefix)
        self.names.append(name)
        return name

    def run(
        self, *args: str, runtime: str = "runsc-cuda", prefix: str = "e2e", check: bool = True
    ) -> tuple[str, Result]:
        """``docker run --name N --runtime R --network=none ARGS`` (IMAGE and command are in ARGS)."""
        name = self.name(prefix)
        result = self.stack.docker(
            "run", "--name", name, f"--runtime={runtime}", "--network=none", *args, check=check, timeout=120
        )
        return name, result

    def start_counter(self, runtime: str = "runsc-cuda", *extra: str) -> str:
        """A detached container running COUNTER, once it has counted at least once."""
        name, _ = self.run("--detach", *extra, IMAGE, "sh", "-c", COUNTER, runtime=runtime, prefix="counter")
        wait_for(f"{name} to count", lambda: self.count(name) >= 1, 30)
        return name

    def start_from_checkpoint(self, name: str, checkpoint: str) -> None:
        """`docker start --checkpoint`, again when Docker 20.10 trips over its own upload.

        It tars the checkpoint into containerd's content store first, and that fails now
        and then with "commit failed: content sha256:...: already exists" before any
        runtime call (moby/moby#42900).
        """
        for _ in range(3):
            result = self.stack.docker("start", "--checkpoint", checkpoint, name, check=False, timeout=120)
            if result.returncode == 0 or "already exists" not in result.stderr:
                break
            time.sleep(1)
        result.check()

    def count(self, name: str) -> int:
        result = self.stack.docker("exec", name, "cat", "/tmp/count", check=False, timeout=30)
        text = result.stdout.strip()
        return int(text) if result.returncode == 0 and text.isdigit() else 0

    def inspect(self, name: str) -> dict[str, Any]:
        return dict(json.loads(self.stack.docker("inspect", name).stdout)[0])

    def container_id(self, name: str) -> str:
        return str(self.inspect(name)["Id"])

    def logged_lines(self, name: str) -> list[str]:
        return self.stack.docker("logs", name, timeout=30).stdout.split()

    def remove_all(self) -> None:
        if self.names:
            self.stack.docker("rm", "--force", *self.names, check=False, timeout=60)


@pytest.fixture
def docker(stack: Stack) -> Iterator[DockerContainers]:
    made = DockerContainers(stack)
    yield made
    made.remove_all()


class CtrContainers:
    """containerd containers (made with ctr, in the e2e namespace) a test made; removed at its end."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.names: list[str] = []
        self.image = stack.ctr_image()

    def runtime_flags(self, binary: str | None = None) -> list[str]:
        """runc.v2 shim options: runsc-cuda (or ``binary``) as its runc, with a private --root."""
        return [
            "--runtime", "io.containerd.runc.v2",
            "--runc-binary", binary or str(self.stack.bin / "runsc-cuda"),
            "--runc-root", str(self.stack.ctr_runc_root),
        ]  # fmt: skip

    def run(self, *args: str, binary: str | None = None, prefix: str = "e2e", check: bool = True) -> tuple[str, Result]:
        """``ctr run RUNTIME-FLAGS FLAGS IMAGE NAME COMMAND``, ``args`` being FLAGS, "--", COMMAND."""
        split = args.index("--")
        flags, command = args[:split], args[split + 1 :]
        name = unique(prefix)
        self.names.append(name)
        result = self.stack.ctr(
            "run", *self.runtime_flags(binary), *flags, self.image, name, *command, check=check, timeout=120
        )
        return name, result

    def start_counter(self, *flags: str, binary: str | None = None) -> str:
        name, _ = self.run("--detach", *flags, "--", "sh", "-c", COUNTER, binary=binary, prefix="counter")
        wait_for(f"{name} to count", lambda: self.count(name) >= 1, 30)
        return name

    def exec(self, name: str, *command: str, check: bool = False) -> Result:
        return self.stack.ctr("tasks", "exec", "--exec-id", unique("exec"), name, *command, check=check, timeout=60)

    def count(self, name: str) -> int:
        result = self.exec(name, "cat", "/tmp/count")
        text = result.stdout.strip()
        return int(text) if result.returncode == 0 and text.isdigit() else 0

    def status(self, name: str) -> str:
        """RUNNING, PAUSED, STOPPED, ... as `ctr tasks list` shows it ("" when there is no task)."""
        for line in self.stack.ctr("tasks", "list", timeout=30).stdout.splitlines()[1:]:
            fields = line.split()
            if fields and fields[0] == name:
                return fields[-1]
        return ""

    def wait_stopped(self, name: str, timeout: float = 30) -> None:
        wait_for(f"task {name} to stop", lambda: self.status(name) in ("STOPPED", ""), timeout)

    def remove_all(self) -> None:
        for name in self.names:
            if self.status_or_none(name) not in (None, "", "STOPPED"):
                self.stack.ctr("tasks", "kill", "--signal", "SIGKILL", name, check=False, timeout=30)
                deadline = time.monotonic() + 15
                while self.status_or_none(name) not in (None, "", "STOPPED") and time.monotonic() < deadline:
                    time.sleep(0.2)
            self.stack.ctr("tasks", "delete", "--force", name, check=False, timeout=30)
            self.stack.ctr("containers", "delete", name, check=False, timeout=30)

    def status_or_none(self, name: str) -> str | None:
        try:
            return self.status(name)
        except CallFailed:
            return None


@pytest.fixture
def ctr(stack: Stack) -> Iterator[CtrContainers]:
    made = CtrContainers(stack)
    yield made
    made.remove_all()


# --- the CRI stack (containerd 2.x + crictl), one per test module ------------------------------------


@pytest.fixture(scope="module")
def cri() -> Iterator[CriStack]:
    with started_or_skip("CRI stack", "rck-", cri_running) as started:
        yield started


@pytest.fixture
def pods(cri: CriStack) -> Iterator[list[Pod]]:
    made: list[Pod] = []
    yield made
    for pod in made:
        if pod.id in cri.pods:
            cri.crictl("stopp", pod.id, check=False, timeout=120)
            cri.crictl("rmp", "--force", pod.id, check=False, timeout=120)
            cri.pods.pop(pod.id, None)
