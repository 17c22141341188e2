"""``kill --all`` of a container whose sandbox has already exited: say it as runc does.

containerd removes a task with ``kill --all ID 9`` first (client ``WithProcessKill``,
also when the pod's sandbox container has exited), and its runc.v2 shim accepts a
failure only when the runtime's output says the process is gone (``checkKillError``:
"container not running", "no such process", "does not exist").  runsc says
"sandbox is not running" instead, which the shim calls an "unknown error after kill":
the CRI plugin's sandbox-exit handler then retries for ever and StopPodSandbox never
returns.  So for ``kill --all`` only (the plain ``kill`` of a stop stays a pass-through
``execv``), runsc runs as a child and a failure that says the sandbox is not running
gets runc's words added.  The exit status is runsc's.
"""

from __future__ import annotations

from runsc_cuda.oci.argv import VerbFlags, parse_verb_args

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

    from runsc_cuda.oci.argv import CommandLine


KILL_FLAGS = VerbFlags(frozenset({"all", "h", "help"}), frozenset({"pid"}))  # runsc kill (release-20260817)


def wants_all(cmd: CommandLine) -> bool:
    """``kill --all`` (any Go spelling, Go's boolean words), read with the argv model."""
    return parse_verb_args(cmd.rest, KILL_FLAGS).is_set("all")


def kill_all(argv: list[str], environ: Mapping[str, str]) -> int:
    """Run runsc with ``argv[1:]``; pass its output on, with runc's words when the sandbox is gone."""
    import subprocess
    import sys

    from runsc_cuda import words
    from runsc_cuda.oci.runsc import child_environ, find_runsc

    runsc = find_runsc(environ)
    done = subprocess.run([runsc, *argv[1:]], capture_output=True, env=child_environ(environ), check=False)
    sys.stdout.buffer.write(done.stdout)
    sys.stdout.flush()
    sys.stderr.buffer.write(done.stderr)
    said = (done.stdout + done.stderr).decode(errors="replace")
    if done.returncode != 0 and words.says_gone(said, words.RUNSC_KILL_SANDBOX_GONE):
        sys.stderr.write(f"runsc-cuda: {words.RUNC_NOT_RUNNING} (the sandbox has exited)\n")
    sys.stderr.flush()
    return done.returncode if done.returncode >= 0 else 128 - done.returncode
