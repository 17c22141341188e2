"""The verbs runsc-cuda intercepts, as data: which flags runsc takes, and what
becomes of the runc flags that Docker, containerd and Kubernetes may pass.

runsc dies with exit 128 on a flag it does not know; runc callers pass CRIU
tuning flags that mean nothing to gVisor's whole-sandbox save.  ``translate``
drops those, refuses the ones whose meaning runsc cannot honour, and renames
runc's short forms.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from runsc_cuda.errors import ShimError
from runsc_cuda.oci.argv import Flag, VerbArgs, VerbFlags

_HELP = frozenset({"h", "help"})


@dataclass(frozen=True)
class Verb:
    """One verb runsc-cuda intercepts, as data: what runsc (release-20260817, ``runsc help VERB``)
    accepts, the runc flags (runc 1.1, ``runc VERB --help``) it lacks, and what becomes of those."""

    name: str
    runsc: VerbFlags
    runc_only: VerbFlags
    dropped: frozenset[str] = frozenset()  # CRIU tuning that gVisor's whole-sandbox save makes meaningless
    refused: Mapping[str, str] = field(default_factory=dict)  # meaning runsc cannot honour, with the reason

    @property
    def known(self) -> VerbFlags:
        """Every flag a runc or runsc caller may pass, with its arity."""
        return VerbFlags(self.runsc.bools | self.runc_only.bools, self.runsc.values | self.runc_only.values)


_CRIU_TUNING = frozenset(
    {"tcp-established", "ext-unix-sk", "shell-job", "file-locks", "empty-ns", "manage-cgroups-mode"}
)
_CREATE_VALUES = frozenset({"bundle", "console-socket", "pid-file", "user-log", "fs-restore-image-path"})

VERBS: dict[str, Verb] = {
    v.name: v
    for v in (
        Verb(
            "create",
            VerbFlags(_HELP | {"fs-restore-direct"}, _CREATE_VALUES),
            VerbFlags(frozenset({"no-pivot", "no-new-keyring"}), frozenset({"b", "preserve-fds"})),
            dropped=frozenset({"no-pivot", "no-new-keyring"}),
        ),
        Verb(
            "run",
            VerbFlags(_HELP | {"detach", "fs-restore-direct"}, _CREATE_VALUES | {"exec-fd", "pass-fd"}),
            VerbFlags(
                frozenset({"d", "keep", "no-subreaper", "no-pivot", "no-new-keyring"}), frozenset({"b", "preserve-fds"})
            ),
            dropped=frozenset({"no-pivot", "no-new-keyring", "no-subreaper"}),
            refused={"keep": "runsc cannot keep a container after it exits"},
        ),
        Verb(
            "restore",
            VerbFlags(
                _HELP | {"background", "detach", "direct", "fs-restore-direct", "no-subreaper"},
                _CREATE_VALUES | {"image-path", "work-path"},
            ),
            VerbFlags(
                frozenset(
                    {"d", "tcp-established", "ext-unix-sk", "shell-job", "file-locks", "no-pivot", "auto-dedup"}
                    | {"lazy-pages"}
                ),
                frozenset({"b", "manage-cgroups-mode", "empty-ns", "lsm-profile", "lsm-mount-context"}),
            ),
            dropped=_CRIU_TUNING | {"no-pivot", "no-new-keyring", "auto-dedup"},
            refused={
                "lazy-pages": "gVisor restores the whole sandbox image; CRIU lazy pages do not exist",
                "lsm-profile": "runsc cannot apply a host LSM profile to a restored sandbox",
                "lsm-mount-context": "runsc cannot apply a host LSM mount context",
            },
        ),
        Verb(
            "checkpoint",
            VerbFlags(
                _HELP | {"leave-running", "exclude-committed-zero-pages", "direct", "cuda-checkpoint-sequential"},
                frozenset(
                    {"image-path", "compression", "cuda-checkpoint-path", "save-restore-exec-argv"}
                    | {"save-restore-exec-timeout", "work-path"}
                ),
            ),
            VerbFlags(
                frozenset(
                    {
                        "tcp-established",
                        "ext-unix-sk",
                        "shell-job",
                        "file-locks",
                        "pre-dump",
                        "lazy-pages",
                        "auto-dedup",
                    }
                ),
                frozenset({"parent-path", "status-fd", "page-server", "manage-cgroups-mode", "empty-ns"}),
            ),
            dropped=_CRIU_TUNING | {"auto-dedup"},
            refused={
                "pre-dump": "gVisor saves the whole sandbox; there are no incremental pre-dumps",
                "lazy-pages": "gVisor saves the whole sandbox image; CRIU lazy pages do not exist",
                "parent-path": "gVisor images are not incremental; there is no parent image",
                "page-server": "runsc writes images to --image-path only; there is no page server",
                "status-fd": "runsc has no CRIU status file descriptor",
            },
        ),
    )
}

# runc's short forms and the runsc flag they mean.
ALIASES: dict[str, str] = {"b": "bundle", "d": "detach"}


def known_flags(verb: str) -> VerbFlags:
    """Every flag a runc or runsc caller may pass to ``verb``, with its arity."""
    return VERBS[verb].known


@dataclass(frozen=True)
class Translation:
    """runsc's flags for a runc-style call, and what was dropped on the way."""

    args: VerbArgs
    dropped: tuple[Flag, ...] = field(default_factory=tuple)
    renamed: tuple[tuple[Flag, Flag], ...] = field(default_factory=tuple)


def translate(verb: str, args: VerbArgs) -> Translation:
    """Make a runc-style verb call acceptable to runsc, or refuse it."""
    table = VERBS[verb]
    kept: list[Flag] = []
    dropped: list[Flag] = []
    renamed: list[tuple[Flag, Flag]] = []
    for flag in args.flags:
        if flag.name in table.refused:
            raise ShimError(f"{verb} --{flag.name} is not supported under gVisor: {table.refused[flag.name]}")
        if flag.name == "preserve-fds":
            if (flag.value or "0").strip() not in ("0", ""):
                raise ShimError(
                    f"{verb} --preserve-fds={flag.value} is not supported: runsc does not pass extra file descriptors"
                )
            dropped.append(flag)
            continue
        if flag.name in table.dropped:
            dropped.append(flag)
            continue
        if flag.name in ALIASES and ALIASES[flag.name] in (table.runsc.bools | table.runsc.values):
            new = Flag.make(ALIASES[flag.name], flag.value)
            renamed.append((flag, new))
            kept.append(new)
            continue
        kept.append(flag)
    return Translation(VerbArgs(tuple(kept), args.args), tuple(dropped), tuple(renamed))


def container_id(args: VerbArgs) -> str | None:
    """The container a create/run/restore/checkpoint call is about: its last positional argument."""
    return args.args[-1] if args.args else None
