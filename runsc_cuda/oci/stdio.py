"""The start side of a CRI sub-container's stdio hand-over (the holder: runsc_cuda/oci/subcontainer.py).

``take_create_stdio`` runs on the pass-through path of every ``start``: it imports
nothing; when no holder socket exists (every container that is not a CRI
sub-container under a runc-style shim) it costs one read of the config file's
``state_dir`` and one ``stat``.  The names shared with the holder (socket path,
request) are here so that ``start`` never loads the holder's module.
"""

from __future__ import annotations

import os

from runsc_cuda.oci.cri import CONTAINER as SUBCONTAINER
from runsc_cuda.oci.cri import CONTAINER_TYPE
from runsc_cuda.oci.runsc import configured_state_dir

TYPE_CHECKING = False  # typing itself costs ~4 ms to import; mypy honours this spelling
if TYPE_CHECKING:
    from collections.abc import Mapping

    from runsc_cuda.oci.argv import CommandLine

SUBDIR = "stdio"
CONNECT_TIMEOUT_S = 5.0
MAGIC = b"runsc-cuda-stdio/1"
SUN_PATH_MAX = 107
RESTORED_REPLY = b"restored"  # the holder of a container that create restored: start has nothing to do
RESTORED = "restored"


def key(root: str, cid: str) -> str:
    """16 hex digits naming (runsc root, container id): FNV-1a, 64 bits (no hashlib on the hot path).

    Not a secret and not collision-proof: the holder checks the full root and id of each request.
    """
    h = 0xCBF29CE484222325
    for byte in f"{root}\0{cid}".encode():
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def runsc_root(cmd: CommandLine) -> str:
    """runsc's --root as an absolute path ("" when runsc's default applies)."""
    root = cmd.global_value("root")
    return os.path.abspath(root) if root else ""


def socket_path(state_dir: str, root: str, cid: str) -> str:
    return os.path.join(state_dir, SUBDIR, key(root, cid) + ".sock")


def request(root: str, cid: str) -> bytes:
    return b"\0".join((MAGIC, root.encode(), cid.encode())) + b"\n"


def is_subcontainer(doc: Mapping[str, object]) -> bool:
    annotations = doc.get("annotations")
    return isinstance(annotations, dict) and annotations.get(CONTAINER_TYPE) == SUBCONTAINER


# --- start: the pass-through side --------------------------------------------------------


def take_create_stdio(cmd: CommandLine, environ: Mapping[str, str]) -> bool:
    """``start ID``: if a holder keeps create's stdio for ID, make it this process's 0, 1 and 2.

    True when the holder says the container was restored at create (a pod restored from
    a checkpoint: runsc restore runs it already), so start has nothing left to do.

    Never raises and never blocks for long: without a holder nothing changes; with a
    holder that does not answer, 0/1/2 become /dev/null (the container runs, its
    output is lost, the runtime log says so) rather than leaving the shim waiting forever.
    """
    if not cmd.rest:
        return False
    cid = cmd.rest[-1]
    try:
        root = runsc_root(cmd)
        path = socket_path(configured_state_dir(environ), root, cid)
        os.stat(path)
    except Exception:  # no holder (the usual case), or a config that find_runsc will report
        return False
    problem = _receive(path, root, cid)
    if problem is None:
        return False
    if problem is RESTORED:
        return True
    with _suppress():
        os.unlink(path)
    null = os.open(os.devnull, os.O_RDWR)
    for target in (0, 1, 2):
        os.dup2(null, target)
    if null > 2:
        os.close(null)
    log = cmd.global_value("log")
    if log:
        from runsc_cuda.logs import RuntimeLog

        RuntimeLog(log, cmd.global_value("log-format") or "text").write(
            "warning",
            f"runsc-cuda: start {cid}: could not get create's stdio from its holder ({problem}); "
            "the container runs with /dev/null as stdio and its output is lost",
        )
    return False


class _suppress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, value: object, tb: object) -> bool:
        return isinstance(value, OSError)


def _receive(path: str, root: str, cid: str) -> str | None:
    """Get the three descriptors and dup2 them onto 0, 1, 2; a problem's description, or None."""
    import socket

    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(CONNECT_TIMEOUT_S)
            conn.connect(path)
            conn.sendall(request(root, cid))
            message, fds, _flags, _addr = socket.recv_fds(conn, 16, 3)
    except OSError as e:
        return f"{path}: {e.strerror or e}"
    if message == RESTORED_REPLY and not fds:
        return RESTORED
    if message != b"ok" or len(fds) != 3:
        for fd in fds:
            os.close(fd)
        return f"{path}: the holder answered {message[:40]!r} with {len(fds)} descriptors"
    for target, fd in enumerate(fds):
        os.dup2(fd, target)  # inheritable: runsc start and the sandbox get them
    for fd in fds:
        if fd > 2:
            os.close(fd)
    return None
