"""The vocabulary runsc-cuda reads: its own boolean words, and the phrases it matches in other
programs' output, each with the release it was read from. One place, so that a change in runsc or
cuda-checkpoint is one edit and the tests that pin these words find it."""

from __future__ import annotations

# Booleans in the config file's env overrides and in annotations (Go's flag words are the
# runsc command line's own business: see oci.argv).
TRUE_WORDS = ("true", "1", "yes", "on")
FALSE_WORDS = ("false", "0", "no", "off")


def parse_bool(text: str) -> bool | None:
    """True or False for one of the words above (any case, blanks ignored); None for anything else."""
    word = text.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    return None


# cuda-checkpoint (NVIDIA driver 555-580): a failed --get-state on a process that has exited.
CUDA_PROCESS_GONE = ("does not exist", "no such process")

# cuda-checkpoint --help (driver 555+ has --get-state and --action; 550 has only --toggle).
CUDA_HELP_GET_STATE = "--get-state"
CUDA_HELP_ACTION = "--action"
CUDA_HELP_TOGGLE = "--toggle"

# runsc (release-20260817.0): `runsc wait --restore` when the sandbox was gone before it got there.
RUNSC_SANDBOX_GONE = ("connection refused", "sandbox is not running", "no longer running", "no such file or directory")

# runsc (release-20260817.0): `kill --all` of a container whose sandbox has exited.
RUNSC_KILL_SANDBOX_GONE = ("sandbox is not running",)
# containerd 2.x's runc.v2 shim (checkKillError) takes a kill failure as "already gone" only on runc's words.
RUNC_NOT_RUNNING = "container not running"
# runsc (release-20260817.0, and a 2026-09-05 source build): `runsc state ID` when no such container
# exists in --root, e.g. after `kill` + `delete` ("FetchSpec failed: loading container: file does not exist").
RUNSC_CONTAINER_GONE = ("loading container: file does not exist",)

# runsc (release-20260817.0) help: "  -name value\n    \tdoc (default x)"; compression's doc ends in
# "Values: none|flate-best-speed."
RUNSC_HELP_FLAG_LINE = r"^\s+-{1,2}([A-Za-z0-9][\w-]*)(?:[ \t]+(\S.*))?$"
RUNSC_HELP_DEFAULT = r"\(default ([^)]*)\)\s*$"
RUNSC_HELP_VALUES = r"Values:\s*([\w|-]+)"

# runsc --version (every release): "runsc version <v>" then "spec: <v>"; a source build prints
# "runsc version VERSION_MISSING" or an empty version.
RUNSC_VERSION_WORDS = ("runsc", "version")


def says_gone(text: str, phrases: tuple[str, ...]) -> bool:
    """Whether ``text`` holds one of ``phrases`` (case-insensitive)."""
    lowered = text.lower()
    return any(p in lowered for p in phrases)
