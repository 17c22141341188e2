"""``kill`` of a container whose pod is still being restored from a checkpoint: end the pod's sandbox.

gVisor resumes a restored pod only when every container of the checkpoint has
joined (commands/pod_restore.py).  Until then runsc can neither signal the
containers that joined nor the sandbox (they were never started), so a stop of
a pod that lacks a checkpointed container would hang for ever.  While a pod
waits, pod_restore leaves a marker per container that joined (the sandbox
included) under ``<state_dir>/pod-restore/waiting/``; ``kill`` of one of them
ends the sandbox process instead (the holders and the shim then see every
container of the pod exit, as for a crashed sandbox).

On the pass-through path of every ``kill``: without a marker it costs one read
of the config file's ``state_dir`` and one ``stat``.
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


def end_restoring_pod(cmd: CommandLine, environ: Mapping[str, str], marker: str) -> int:
    """Kill the sandbox the marker names (a ``runsc-sandbox`` process, checked), then remove the markers."""
    import json
    import signal
    import sys

    try:
        with open(marker, encoding="utf-8") as f:
            record = json.loads(f.read(4096))
        pid = int(record["pid"])
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            program = f.read(64).split(b"\0", 1)[0]
        if pid > 1 and program == b"runsc-sandbox":
            os.kill(pid, signal.SIGKILL)
    except (OSError, ValueError, KeyError, TypeError):
        pass  # gone already
    folder = os.path.dirname(marker)
    try:
        with open(marker, encoding="utf-8") as f:
            sandbox = json.loads(f.read(4096)).get("sandbox")
        for name in os.listdir(folder):
            path = os.path.join(folder, name)
            with open(path, encoding="utf-8") as f:
                if json.loads(f.read(4096)).get("sandbox") == sandbox:
                    os.unlink(path)
        if isinstance(sandbox, str) and sandbox and "/" not in sandbox:
            os.unlink(os.path.join(os.path.dirname(folder), f"{sandbox}.json"))  # pod_restore's record
    except (OSError, ValueError, AttributeError):
        pass
    sys.stderr.write("runsc-cuda: the pod was still restoring from a checkpoint: its sandbox was ended\n")
    return 0
