"""NVIDIA's cuda-checkpoint command line, as data.

States and legal transitions (driver 555+):
  running --lock--> locked --checkpoint--> checkpointed --restore--> locked --unlock--> running
A failure exits non-zero (the CUDA error code, maybe mod 256); the state must then
be queried again: a failed checkpoint does not promise the process is still locked.
"""

from __future__ import annotations

from runsc_cuda import words

RUNNING = "running"
LOCKED = "locked"
CHECKPOINTED = "checkpointed"
FAILED = "failed"
STATES = (RUNNING, LOCKED, CHECKPOINTED, FAILED)

# The actions that bring a process from a state back to running.
THAW_FROM: dict[str, tuple[str, ...]] = {
    RUNNING: (),
    LOCKED: ("unlock",),
    CHECKPOINTED: ("restore", "unlock"),
}
# The actions that bring a process from a state to checkpointed.
FREEZE_FROM: dict[str, tuple[str, ...]] = {
    RUNNING: ("lock", "checkpoint"),
    LOCKED: ("checkpoint",),
    CHECKPOINTED: (),
}
AFTER = {"lock": LOCKED, "checkpoint": CHECKPOINTED, "restore": LOCKED, "unlock": RUNNING}


def get_state(pid: int) -> list[str]:
    return ["--get-state", "--pid", str(pid)]


def action(name: str, pid: int, timeout_ms: int | None = None) -> list[str]:
    if name not in AFTER:
        raise ValueError(f"unknown cuda-checkpoint action {name!r}")
    args = ["--action", name, "--pid", str(pid)]
    if name == "lock" and timeout_ms is not None:
        args += ["--timeout", str(timeout_ms)]
    return args


def toggle(pid: int) -> list[str]:
    return ["--toggle", "--pid", str(pid)]


def parse_state(output: bytes) -> str | None:
    """The state ``--get-state`` printed, or None for anything else (output is untrusted)."""
    if len(output) > 64:
        return None
    # Only ASCII blanks around the word (bytes.strip): str.strip would also drop control codes
    # such as \x1c that no cuda-checkpoint prints.
    text = output.strip().decode("ascii", errors="replace")
    return text if text in STATES else None


class Capabilities:
    """What this cuda-checkpoint (that is, the driver behind it) can do, read from ``--help``."""

    def __init__(self, get_state: bool, actions: bool, toggle: bool) -> None:
        self.get_state = get_state
        self.actions = actions
        self.toggle = toggle

    @classmethod
    def from_help(cls, text: str) -> Capabilities:
        return cls(words.CUDA_HELP_GET_STATE in text, words.CUDA_HELP_ACTION in text, words.CUDA_HELP_TOGGLE in text)

    def __repr__(self) -> str:
        return f"Capabilities(get_state={self.get_state}, actions={self.actions}, toggle={self.toggle})"
