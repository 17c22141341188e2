"""Which checkpoint engine to use, and what the installed runsc can do.

native: runsc >= release-20260608 toggles CUDA processes itself
(``checkpoint --cuda-checkpoint-path``) and thaws them on restore.
exec: runsc-cuda orchestrates cuda-checkpoint through ``runsc exec``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re

from runsc_cuda import files
from runsc_cuda.errors import ShimError
from runsc_cuda.session import Session

NATIVE_FLAG = "cuda-checkpoint-path"


_HELP_CACHE: dict[tuple[str, str], str] = {}
HELP_FILE = "runsc-help.json"
HELP_FILE_MAX = 1 << 20


def _binary_key(path: str) -> list[object] | None:
    """What identifies an installed runsc binary: replacing it changes this."""
    try:
        real = os.path.realpath(path)
        st = os.stat(real)
    except OSError:
        return None
    return [real, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns]


def _load_help_file(path: str, key: list[object]) -> dict[str, str]:
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.loads(f.read(HELP_FILE_MAX))
    except (OSError, ValueError):
        return {}
    if not isinstance(doc, dict) or doc.get("binary") != key or not isinstance(doc.get("help"), dict):
        return {}
    return {str(k): v for k, v in doc["help"].items() if isinstance(v, str)}


def _save_help_file(path: str, key: list[object], texts: dict[str, str]) -> None:
    with contextlib.suppress(OSError):  # only a cache: runsc is asked again next time
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        files.write_atomic(path, json.dumps({"binary": key, "help": texts}), durable=False)


def runsc_help(session: Session, verb: str) -> str:
    """``runsc help VERB`` (empty when runsc cannot say).

    Asked once per runsc binary: the answers are kept in ``state_dir`` (a tmpfs
    under /run by default) keyed by the binary's identity, since every
    checkpoint and restore needs two or three of them and each costs a runsc
    start (20-40 ms).
    """
    mem_key = (session.runsc, verb)
    if mem_key in _HELP_CACHE:
        return _HELP_CACHE[mem_key]
    binary = _binary_key(session.runsc)
    path = os.path.join(session.config.state_dir, HELP_FILE)
    saved = _load_help_file(path, binary) if binary is not None else {}
    if verb in saved:
        _HELP_CACHE[mem_key] = saved[verb]
        return saved[verb]
    result = session.call_runsc(["help", verb])
    text = (result.stdout + result.stderr).decode("utf-8", errors="replace")
    _HELP_CACHE[mem_key] = text
    if binary is not None and result.ok:
        _save_help_file(path, binary, {**saved, verb: text})
    return text


def runsc_flags(session: Session, verb: str) -> set[str]:
    """The flags ``runsc help VERB`` lists (empty when runsc cannot say)."""
    text = runsc_help(session, verb)
    return set(re.findall(r"^\s+-{1,2}([A-Za-z0-9][\w-]*)", text, flags=re.MULTILINE))


def choose(configured: str, runsc_has_native: bool) -> str:
    """The engine to run: a pure function of the config and runsc's abilities."""
    if configured == "auto":
        return "native" if runsc_has_native else "exec"
    if configured == "native" and not runsc_has_native:
        raise ShimError(
            "engine = native, but this runsc's checkpoint has no --cuda-checkpoint-path "
            "(it arrived in release-20260608.0); upgrade runsc or set engine = exec"
        )
    return configured


def runsc_version(session: Session) -> str:
    result = session.call_runsc(["--version"])
    first = result.stdout.decode("utf-8", errors="replace").strip().splitlines()
    return first[0][:200] if first else ""
