"""A lossless model of a runc/runsc command line.

Go's flag package rules apply (runsc is written in Go): ``-x`` and ``--x`` are
the same flag, a value is given as ``--x=v`` or ``--x v``, booleans never take
a separate value, parsing stops at the first non-flag token or after ``--``.

``parse`` splits global flags, the verb and the rest; it is all the
pass-through path needs.  ``parse_verb_args`` splits the rest into the verb's
flags and positional arguments for the few verbs runsc-cuda intercepts.
Rendering a parsed command gives back exactly the tokens it came from.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing itself costs ~4 ms to import; mypy honours this spelling
if TYPE_CHECKING:
    from collections.abc import Callable  # collections.abc pulls in collections: ~3 ms per call

# runsc's boolean global flags (runsc/config/flags.go and `runsc flags` of
# release-20260817+).  Every other global flag takes a value.
GLOBAL_BOOL_FLAGS = frozenset(
    {
        "EXPERIMENTAL-xdp-need-wakeup",
        "TESTONLY-afs-syscall-panic",
        "TESTONLY-autosave-resume",
        "TESTONLY-nftables",
        "TESTONLY-unsafe-nonroot",
        "allow-connected-on-save",
        "allow-flag-override",
        "allow-live-tcp-migration",
        "allow-packet-socket-write",
        "allow-rootfs-tar-annotation",
        "allow-suid",
        "alsologtostderr",
        "app-huge-pages",
        "buffer-pooling",
        "cgroupfs",
        "cpu-num-from-quota",
        "debug",
        "debug-to-user-log",
        "directfs",
        "enable-core-tags",
        "fsgofer-host-uds",
        "fuse",
        "gso",
        "gvisor-gro",
        "gvisor-marker-file",
        "h",
        "help",
        "ignore-cgroups",
        "iouring",
        "kvm-use-cpu-nums",
        "lisafs",
        "log-packets",
        "mount-cgroup-v2",
        "net-disconnect-ok",
        "net-raw",
        "nvproxy",
        "nvproxy-allow-unsupported-driver",
        "nvproxy-docker",
        "oci-seccomp",
        "overlay",
        "pause-external-networking",
        "profile",
        "rdmaproxy",
        "reproduce-nat",
        "reproduce-nftables",
        "rootless",
        "rx-checksum-offload",
        "save-restore-netstack",
        "software-gso",
        "strace",
        "strace-event",
        "systemd-cgroup",
        "systrap-disable-fast-path",
        "systrap-disable-syscall-patching",
        "tpuproxy",
        "tx-checksum-offload",
        "version",
        "vfs2",
    }
)


class ArgvError(ValueError):
    """A command line that cannot be parsed (Go's flag package would refuse it too)."""


class Record:
    """A small immutable record: equality, hashing and repr from ``__slots__``.

    The pass-through path runs for every state/start/kill/delete, so this
    module avoids ``dataclasses`` (which imports ``inspect``, ~7 ms).
    """

    __slots__: tuple[str, ...] = ()

    def _fields(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self._fields() == other._fields()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__)
        return f"{type(self).__name__}({inner})"

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def _init(self, **values: object) -> None:
        for name, value in values.items():
            object.__setattr__(self, name, value)


class Flag(Record):
    """One flag as it was written: ``--root /x``, ``-root=/x``, ``--debug``."""

    __slots__ = ("name", "tokens", "value")
    name: str
    value: str | None
    tokens: tuple[str, ...]

    def __init__(self, name: str, value: str | None, tokens: tuple[str, ...]) -> None:
        self._init(name=name, value=value, tokens=tuple(tokens))

    @classmethod
    def make(cls, name: str, value: str | None = None) -> Flag:
        """A new flag in the canonical ``--name=value`` (or ``--name``) form."""
        token = f"--{name}" if value is None else f"--{name}={value}"
        return cls(name, value, (token,))

    def as_bool(self) -> bool:
        """The value of a boolean flag, Go style (``--x`` means true)."""
        if self.value is None:
            return True
        return self.value.lower() in ("1", "t", "true")


class CommandLine(Record):
    """A runtime command line: program, global flags, verb, everything after the verb."""

    __slots__ = ("global_flags", "program", "rest", "verb")
    program: str
    global_flags: tuple[Flag, ...]
    verb: str | None
    rest: tuple[str, ...]

    def __init__(
        self,
        program: str,
        global_flags: tuple[Flag, ...],
        verb: str | None,
        rest: tuple[str, ...],
    ) -> None:
        self._init(program=program, global_flags=tuple(global_flags), verb=verb, rest=tuple(rest))

    def tokens(self) -> list[str]:
        out = [self.program]
        for flag in self.global_flags:
            out.extend(flag.tokens)
        if self.verb is not None:
            out.append(self.verb)
        out.extend(self.rest)
        return out

    def global_flag(self, name: str) -> Flag | None:
        """The last occurrence of a global flag (Go: the last one wins)."""
        found = None
        for flag in self.global_flags:
            if flag.name == name:
                found = flag
        return found

    def global_value(self, name: str) -> str | None:
        flag = self.global_flag(name)
        return None if flag is None else flag.value

    def with_global(self, flag: Flag) -> CommandLine:
        """A copy with ``flag`` appended to the global flags."""
        return CommandLine(self.program, (*self.global_flags, flag), self.verb, self.rest)

    def with_rest(self, rest: list[str] | tuple[str, ...]) -> CommandLine:
        """A copy with the tokens after the verb replaced."""
        return CommandLine(self.program, self.global_flags, self.verb, tuple(rest))

    def global_tokens(self) -> list[str]:
        """The global flags as tokens, for runsc calls runsc-cuda makes itself."""
        out: list[str] = []
        for flag in self.global_flags:
            out.extend(flag.tokens)
        return out


def _split_flag(token: str) -> tuple[str, str | None] | None:
    """``--name=value`` -> (name, value); None when the token is not a flag."""
    if len(token) < 2 or token[0] != "-":
        return None
    body = token[2:] if token[1] == "-" else token[1:]
    if not body or body[0] in "-=":
        raise ArgvError(f"bad flag syntax: {token}")
    name, eq, value = body.partition("=")
    return name, (value if eq else None)


def _parse_flags(tokens: list[str], start: int, is_bool: Callable[[str, int], bool]) -> tuple[list[Flag], int]:
    """Parse Go-style flags from ``tokens[start:]``; return them and the index after.

    ``is_bool(name, index)`` says whether the flag at ``index`` is a boolean.
    """
    flags: list[Flag] = []
    i = start
    n = len(tokens)
    while i < n:
        token = tokens[i]
        if token == "--":
            # Go consumes "--" and stops; we keep it as a positional for round trips.
            break
        split = _split_flag(token)
        if split is None:
            break
        name, value = split
        if value is not None or is_bool(name, i):
            flags.append(Flag(name, value, (token,)))
            i += 1
            continue
        if i + 1 >= n:
            raise ArgvError(f"flag needs an argument: {token}")
        flags.append(Flag(name, tokens[i + 1], (token, tokens[i + 1])))
        i += 2
    return flags, i


def _is_global_bool(name: str, _index: int) -> bool:
    return name in GLOBAL_BOOL_FLAGS


def parse(argv: list[str]) -> CommandLine:
    """Split a command line into program, global flags, verb and the rest."""
    if not argv:
        raise ArgvError("empty command line")
    flags, i = _parse_flags(argv, 1, _is_global_bool)
    if i < len(argv) and argv[i] == "--":
        # "runsc -- verb" is legal in Go; keep the marker with the verb's tokens.
        return CommandLine(argv[0], tuple(flags), None, tuple(argv[i:]))
    verb = argv[i] if i < len(argv) else None
    rest = tuple(argv[i + 1 :]) if verb is not None else ()
    return CommandLine(argv[0], tuple(flags), verb, rest)


# --- verb flags -------------------------------------------------------------


class VerbFlags(Record):
    """Which flags of a verb are booleans, and which take values."""

    __slots__ = ("bools", "values")
    bools: frozenset[str]
    values: frozenset[str]

    def __init__(self, bools: frozenset[str], values: frozenset[str]) -> None:
        self._init(bools=frozenset(bools), values=frozenset(values))

    def knows(self, name: str) -> bool:
        return name in self.bools or name in self.values


class VerbArgs(Record):
    """A verb's flags and positional arguments, losslessly."""

    __slots__ = ("args", "flags")
    flags: tuple[Flag, ...]
    args: tuple[str, ...]

    def __init__(self, flags: tuple[Flag, ...], args: tuple[str, ...]) -> None:
        self._init(flags=tuple(flags), args=tuple(args))

    def tokens(self) -> list[str]:
        out: list[str] = []
        for flag in self.flags:
            out.extend(flag.tokens)
        out.extend(self.args)
        return out

    def get(self, *names: str) -> Flag | None:
        """The last occurrence of any of ``names``."""
        found = None
        for flag in self.flags:
            if flag.name in names:
                found = flag
        return found

    def value(self, *names: str) -> str | None:
        flag = self.get(*names)
        return None if flag is None else flag.value

    def is_set(self, *names: str) -> bool:
        flag = self.get(*names)
        return flag is not None and flag.as_bool()

    def without(self, *names: str) -> VerbArgs:
        return VerbArgs(tuple(f for f in self.flags if f.name not in names), self.args)

    def with_flag(self, flag: Flag) -> VerbArgs:
        return VerbArgs((*self.flags, flag), self.args)


def parse_verb_args(rest: tuple[str, ...] | list[str], known: VerbFlags) -> VerbArgs:
    """Split a verb's tokens into flags and positionals.

    A flag runsc-cuda does not know is taken to be a boolean unless it is
    followed by a token that is neither a flag nor the last token (runc-style
    verbs end with the container id, so the last token is never a flag value).
    """
    tokens = list(rest)
    last = len(tokens) - 1

    def is_bool(name: str, index: int) -> bool:
        if name in known.bools:
            return True
        if name in known.values:
            return False
        nxt = index + 1
        return nxt >= last or tokens[nxt].startswith("-")

    flags, i = _parse_flags(tokens, 0, is_bool)
    return VerbArgs(tuple(flags), tuple(tokens[i:]))
