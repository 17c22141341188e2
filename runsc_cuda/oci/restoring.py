"""``kill`` of a container whose pod is still being restored from a checkpoint: end the pod's sandbox.

gVisor resumes a restored pod only when every container of the checkpoint has
joined (commands/pod_restore.py).  Until then runsc can neither signal the
containers that joined nor the sandbox (they were never started), so a stop of
a pod that lacks a checkpointed container would hang for ever.  While a pod
waits, pod_restore leaves a marker per container that joined (the sandbox
included) under ``<state_dir>/pod-restore/waiting/``; ``kill`` of one of them
ends the sandbox process instead (the holders and the shim then see every
container of the pod exit, as for a crashed sandbox) and succeeds, also when
it comes again (runsc would answer "sandbox is not running", which the runc.v2
shim calls an unknown error); ``delete`` of the container removes its marker.

On the pass-through path of every ``kill`` and ``delete``: without a marker it
costs one read of the config file's ``state_dir`` and one ``stat``.
"""

from __future__ import annotations

import os

from runsc_cuda.oci.runsc import configured_state_dir
from runsc_cuda.oci.stdio import key, runsc_root

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

    from runsc_cuda.oci.argv import CommandLine

SUBDIR = os.path.join("pod-restore", "waiting")


def marker_path(state_dir: str, root: str, cid: str) -> str:
    return os.path.join(state_dir, SUBDIR, key(root, cid))


def waiting(cmd: CommandLine, environ: Mapping[str, str]) -> str | None:
    """The marker of ``kill [flags] ID [SIGNAL]``'s container when its pod is still restoring, else None."""
    ids = [t for t in cmd.rest if not t.startswith("-")]
    if not ids:
        return None
    try:
        path = marker_path(configured_state_dir(environ), runsc_root(cmd), ids[0])
        os.stat(path)
    except Exception:  # no marker (the usual case), or a config that find_runsc will report
        return None
    return path


def is_runsc_sandbox(pid: int) -> bool:
    """Whether host PID ``pid`` is a gVisor sandbox process (runsc re-executes itself as
    ``runsc-sandbox``): checked before a SIGKILL, so that a reused PID is never signalled.

    The one place runsc-cuda reads a process's command line: a host process runsc started, never a
    process inside a sandbox (those are known only by the PIDs ``runsc ps`` gives).
    """
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return pid > 1 and f.read(64).split(b"\0", 1)[0] == b"runsc-sandbox"
    except OSError:
        return False


def end_restoring_pod(cmd: CommandLine, environ: Mapping[str, str], marker: str) -> int:
    """Kill the sandbox the marker names (a ``runsc-sandbox`` process, checked), then remove the markers."""
    import json
    import signal
    import sys

    try:
        with open(marker, encoding="utf-8") as f:
            record = json.loads(f.read(4096))
        pid = int(record["pid"])
        if is_runsc_sandbox(pid):
            os.kill(pid, signal.SIGKILL)
    except (OSError, ValueError, KeyError, TypeError):
        pass  # gone already
    try:  # the markers stay until each container's delete: a second kill also finds the pod gone
        with open(marker, encoding="utf-8") as f:
            sandbox = json.loads(f.read(4096)).get("sandbox")
        if isinstance(sandbox, str) and sandbox and "/" not in sandbox:
            os.unlink(os.path.join(os.path.dirname(os.path.dirname(marker)), f"{sandbox}.json"))  # pod_restore's
    except (OSError, ValueError, AttributeError):
        pass
    sys.stderr.write("runsc-cuda: the pod was still restoring from a checkpoint: its sandbox was ended\n")
    return 0


def forget(marker: str) -> None:
    """``delete`` of a container that has a marker: remove it (runsc's delete follows)."""
    try:  # noqa: SIM105 - contextlib is not imported on the pass-through path
        os.unlink(marker)
    except OSError:
        pass


def stale_markers(state_dir: str) -> list[str]:
    """Markers whose sandbox process is gone (a pod ended while restoring and never killed): for gc."""
    import json

    folder = os.path.join(state_dir, SUBDIR)
    stale = []
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return []
    for name in names:
        path = os.path.join(folder, name)
        try:
            with open(path, encoding="utf-8") as f:
                alive = is_runsc_sandbox(int(json.loads(f.read(4096))["pid"]))
        except (OSError, ValueError, KeyError, TypeError):
            alive = False
        if not alive:
            stale.append(path)
    return stale
