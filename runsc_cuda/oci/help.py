"""What the installed runsc can do, read from its own help: one reader, one cache, one parser.

``runsc help VERB``, ``runsc flags`` (the global flags, on stderr) and ``runsc
--version`` are asked once per runsc binary: the answers are kept in
``state_dir`` (a tmpfs under /run by default) keyed by the binary's identity,
since every checkpoint and restore needs two or three of them and each costs a
runsc start (20-40 ms).  The cache is used only when ``state_dir`` is private
to runsc-cuda's user, and never through a link.  Features are found from flags,
never from version strings (a source build has none); the version is only
reported.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from runsc_cuda import files, words

if TYPE_CHECKING:
    from runsc_cuda.session import Session

HELP_FILE = "runsc-help.json"
HELP_FILE_MAX = 1 << 20

# gVisor's own apt repository and release binaries: what runsc-cuda asks for (the .deb's Recommends,
# doctor's fixes, the refusal below).  Debian 12's own runsc package (0.0~20221219.0) has no nvproxy.
GPU_RELEASE = "release-20260608.0"
WHERE_TO_GET = "gVisor's apt repository or release binaries, https://gvisor.dev/docs/user_guide/install/"
NVPROXY_FLAG = "nvproxy"

# Cache keys of the answers that are not ``help VERB`` (a verb never starts with ':').
_FLAGS = ":flags"
_VERSION = ":version"
_ARGV = {_FLAGS: ("flags",), _VERSION: ("--version",)}

_FLAG_LINE = re.compile(words.RUNSC_HELP_FLAG_LINE)
_DEFAULT = re.compile(words.RUNSC_HELP_DEFAULT)
_VALUES = re.compile(words.RUNSC_HELP_VALUES)


@dataclass(frozen=True)
class RunscHelp:
    """``runsc help VERB``: its flags, their documented defaults, the compression names."""

    flags: frozenset[str] = frozenset()
    defaults: Mapping[str, str] = field(default_factory=dict)
    compressions: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> RunscHelp:
        flags: set[str] = set()
        about: dict[str, str] = {}
        current: str | None = None
        for line in text.splitlines():
            match = _FLAG_LINE.match(line)
            if match and not line.startswith(("    \t", "\t")):
                current = match.group(1)
                flags.add(current)
                rest = match.group(2) or ""
                about[current] = rest.split("\t", 1)[1] if "\t" in rest else ""
            elif current is not None and line.strip():
                about[current] = f"{about[current]} {line.strip()}".strip()
        defaults: dict[str, str] = {}
        for name, doc in about.items():
            found = _DEFAULT.search(doc)
            if found:
                defaults[name] = found.group(1).strip().strip('"')
        values = _VALUES.search(about.get("compression", ""))
        compressions = tuple(v for v in values.group(1).split("|") if v) if values else ()
        return cls(frozenset(flags), defaults, compressions)

    def knows(self, flag: str) -> bool:
        return flag in self.flags


def parse_version(text: str) -> str | None:
    """``runsc version X`` -> X (None when no such line: not runsc, or it printed nothing)."""
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and tuple(parts[:2]) == words.RUNSC_VERSION_WORDS:
            return parts[2]
    return None


# --- the cache ----------------------------------------------------------------------------


_MEMORY: dict[tuple[str, str], str] = {}


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
        raw, _ = files.read_regular(path, HELP_FILE_MAX)
        doc = json.loads(raw.decode("utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    if not isinstance(doc, dict) or doc.get("binary") != key or not isinstance(doc.get("help"), dict):
        return {}
    return {str(k): v for k, v in doc["help"].items() if isinstance(v, str)}


def _save_help_file(path: str, key: list[object], texts: dict[str, str]) -> None:
    with contextlib.suppress(OSError):  # only a cache: runsc is asked again next time
        files.write_atomic(path, json.dumps({"binary": key, "help": texts}), durable=False)


def _cache_path(session: Session) -> str | None:
    """The help cache in ``state_dir``, or None when that folder is not private to runsc-cuda's
    user (others could plant answers there): runsc is then asked every time."""
    state_dir = session.config.state_dir
    with contextlib.suppress(OSError):
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
    problem = files.check_private_dir(state_dir)
    if problem is not None:
        session.report.debug(f"runsc help cache not used: state_dir {state_dir} {problem}")
        return None
    return os.path.join(state_dir, HELP_FILE)


def _answer(session: Session, topic: str) -> str:
    """runsc's answer on ``topic`` (a verb for ``help VERB``, or a key of _ARGV), asked once per
    runsc binary; a failed call's answer is kept for this process only."""
    mem_key = (session.runsc, topic)
    if mem_key in _MEMORY:
        return _MEMORY[mem_key]
    binary = _binary_key(session.runsc)
    path = _cache_path(session) if binary is not None else None
    saved = _load_help_file(path, binary) if binary is not None and path is not None else {}
    if topic in saved:
        _MEMORY[mem_key] = saved[topic]
        return saved[topic]
    result = session.ask_runsc(_ARGV[topic]) if topic in _ARGV else session.call_runsc(["help", topic])
    text = (result.stdout + result.stderr).decode("utf-8", errors="replace")
    _MEMORY[mem_key] = text
    if binary is not None and path is not None and result.ok:
        _save_help_file(path, binary, {**saved, topic: text})
    return text


def help_text(session: Session, verb: str) -> str:
    """``runsc help VERB`` (empty when runsc cannot say), asked once per runsc binary."""
    return _answer(session, verb)


def read(session: Session, verb: str) -> RunscHelp:
    """What ``runsc help VERB`` says, parsed."""
    return RunscHelp.parse(help_text(session, verb))


def global_flags(session: Session) -> RunscHelp:
    """What ``runsc flags`` says (every global flag), parsed; no flags when runsc cannot say."""
    return RunscHelp.parse(_answer(session, _FLAGS))


def version(session: Session) -> str:
    """The first line of ``runsc --version`` (bounded), for the image sidecar and messages."""
    first = _answer(session, _VERSION).strip().splitlines()
    return first[0][:200] if first else ""


# --- what a GPU container needs ------------------------------------------------------------


def has_nvproxy(flags: RunscHelp) -> bool | None:
    """Whether runsc's global flags include --nvproxy; None when it listed no flags at all."""
    return flags.knows(NVPROXY_FLAG) if flags.flags else None


def describe_release(version_text: str) -> str:
    """``runsc version X`` -> X, or what a source build (VERSION_MISSING) or silence means."""
    found = parse_version(version_text)
    if found is None:
        return "version unknown"
    if found in ("", "VERSION_MISSING"):
        return f"{found or 'no version'}: a source build"
    return found


def no_nvproxy_problem(session: Session) -> str | None:
    """Why this runsc cannot run GPU containers (it has no --nvproxy), or None when it can or cannot say."""
    if has_nvproxy(global_flags(session)) is not False:
        return None
    release = describe_release(version(session))
    return (
        f"this runsc ({release}, {session.runsc}) cannot run GPU containers: it has no --{NVPROXY_FLAG}; "
        f"install gVisor {GPU_RELEASE} or later ({WHERE_TO_GET})"
    )
