"""One container as runsc shows it: state, processes, exec, pause, resume.

Everything runsc prints about the inside of a sandbox is treated as untrusted:
PIDs are validated and output is bounded (by the runner).
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from typing import Any

from runsc_cuda import layout, words
from runsc_cuda.errors import ShimError
from runsc_cuda.runner import Result
from runsc_cuda.session import Session

UP = ("running", "paused")  # a container that exists and has processes (runsc's lowercase statuses)
GONE = "gone"  # runsc-cuda's own word: runsc says the container does not exist (killed and deleted)
GONE_NOTE = "the container no longer exists (killed and deleted meanwhile); no CUDA process of it is left frozen"
PID_MAX = 4_194_304  # Linux PID_MAX_LIMIT; gVisor uses the same bound
MAX_PIDS = 65_536


@dataclass(frozen=True)
class ContainerState:
    id: str
    status: str
    bundle: str
    pid: int


def parse_state(output: bytes, cid: str) -> ContainerState:
    try:
        doc: Any = json.loads(output.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ShimError(f"runsc state {cid}: unreadable output") from None
    if not isinstance(doc, dict):
        raise ShimError(f"runsc state {cid}: unexpected output")
    status, bundle, pid = doc.get("status"), doc.get("bundle"), doc.get("pid", 0)
    if not isinstance(status, str) or not isinstance(bundle, str) or not isinstance(pid, int):
        raise ShimError(f"runsc state {cid}: unexpected output")
    return ContainerState(cid, status, bundle, pid)


def parse_pids(output: bytes) -> list[int]:
    """``runsc ps --format json`` output: a JSON array of sandbox PIDs. Raises ValueError."""
    text = output.decode("utf-8", errors="strict").strip()
    try:
        doc = json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    if not isinstance(doc, list):
        raise ValueError("not a JSON array")
    if len(doc) > MAX_PIDS:
        raise ValueError(f"{len(doc)} PIDs, more than {MAX_PIDS}")
    pids: list[int] = []
    seen: set[int] = set()
    for item in doc:
        if isinstance(item, bool) or not isinstance(item, int) or not 0 < item <= PID_MAX:
            raise ValueError(f"not a PID: {str(item)[:40]!r}")
        if item not in seen:
            seen.add(item)
            pids.append(item)
    return pids


class Sandbox:
    """The runsc calls runsc-cuda makes about one container, with the caller's global flags."""

    def __init__(self, session: Session, cid: str) -> None:
        self.session = session
        self.id = cid

    def state(self) -> ContainerState:
        result = self.session.call_runsc(["state", self.id])
        if not result.ok:
            raise ShimError(f"runsc state {self.id} failed: {result.describe()}")
        if result.truncated:
            raise ShimError(f"runsc state {self.id}: output larger than {self.session.config.max_output_bytes} bytes")
        return parse_state(result.stdout, self.id)

    def try_state(self) -> ContainerState | None:
        """The container's state; status ``GONE`` when runsc says it does not exist, None when
        runsc could not say (a failed look is not a gone container)."""
        result = self.session.call_runsc(["state", self.id])
        if not result.ok and not result.timed_out and words.says_gone(result.error_text(), words.RUNSC_CONTAINER_GONE):
            return ContainerState(self.id, GONE, "", 0)
        if not result.ok or result.truncated:
            return None
        try:
            return parse_state(result.stdout, self.id)
        except ShimError:
            return None

    def pids(self) -> list[int]:
        result = self.session.call_runsc(["ps", "--format", "json", self.id])
        if not result.ok:
            raise ShimError(f"runsc ps {self.id} failed: {result.describe()}")
        if result.truncated:  # what was cut may have held PIDs: never act on part of the list
            limit = self.session.config.max_output_bytes
            raise ShimError(f"runsc ps {self.id}: unusable output: larger than {limit} bytes")
        try:
            return parse_pids(result.stdout)
        except (UnicodeDecodeError, ValueError) as e:
            raise ShimError(f"runsc ps {self.id}: unusable output: {e}") from None

    def pause(self) -> None:
        result = self.session.call_runsc(["pause", self.id])
        if not result.ok:
            raise ShimError(f"runsc pause {self.id} failed: {result.describe()}")

    def resume(self) -> None:
        result = self.session.call_runsc(["resume", self.id])
        if not result.ok:
            raise ShimError(f"runsc resume {self.id} failed: {result.describe()}")

    def is_up(self) -> bool | None:
        """Whether the container exists with its processes (running or paused); None when runsc
        could not say (twice: a failed look is not a gone container)."""
        state = self.try_state() or self.try_state()
        return None if state is None else state.status in UP

    def wait_up(self, child: subprocess.Popen[bytes], poll_s: float = 0.05) -> bool:
        """A restore that runs as ``child``: True once the container is up, False when ``child``
        ended first or ``checkpoint_timeout_s`` passed."""
        deadline = time.monotonic() + self.session.config.checkpoint_timeout_s
        while time.monotonic() < deadline and child.poll() is None:
            state = self.try_state()
            if state is not None and state.status in UP:
                return True
            time.sleep(poll_s)
        return False

    def cuda(self, args: list[str], timeout: float) -> Result:
        """``runsc exec ID /usr/local/bin/cuda-checkpoint ARGS``; a timed-out call is abandoned, not killed."""
        argv = self.session.runsc_argv(["exec", self.id, layout.CONTAINER_CUDA_CHECKPOINT, *args])
        result = self.session.runner.run(argv, timeout, kill_on_timeout=False)
        self.session.report.debug(
            "cuda-checkpoint call",
            args=args,
            rc=result.returncode,
            seconds=round(result.duration, 4),
            timed_out=result.timed_out,
        )
        return result

    def cuda_help(self, timeout: float) -> str:
        """``cuda-checkpoint --help`` inside the sandbox (what this driver's tool can do)."""
        result = self.cuda(["--help"], timeout)
        return (result.stdout + result.stderr).decode("utf-8", errors="replace")

    def abandoned(self) -> int:
        """How many cuda-checkpoint calls outlived their timeout so far (abandoned, never killed)."""
        return self.session.runner.abandoned_total

    def wait_abandoned(self, timeout: float) -> int:
        """Wait up to ``timeout`` for the abandoned calls to end; how many still run."""
        return self.session.runner.reap(timeout)
