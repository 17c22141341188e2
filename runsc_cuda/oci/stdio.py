"""A CRI sub-container's stdio: ``runsc start`` gets the descriptors containerd gave ``create``.

Why.  runc gives a container the stdio of ``runc create``; runsc gives a pod's
sub-container the stdio of ``runsc start`` instead.  containerd's runc.v2 shim
calls ``start`` with a pipe that captures its output and waits for that pipe's
EOF, so under runsc the sandbox keeps the pipe open and StartContainer hangs
forever (holding the container's lock: stop and kill hang too); and the
container's output, which the shim reads from the pipes it gave ``create``,
never reaches ``crictl logs`` (docs: DESIGN.md, "Kubernetes, containerd CRI and
gVisor pods").

How.  ``create`` of a CRI sub-container (annotation
``io.kubernetes.cri.container-type: container``) starts a small detached
*holder* before it becomes ``runsc create``: a process that keeps create's
descriptors 0, 1 and 2 and listens on a unix socket
``<state_dir>/stdio/<key>.sock`` (key: runsc's ``--root`` and the container
id).  ``start`` of that container connects, receives the three descriptors
(SCM_RIGHTS), puts them on its own 0, 1 and 2 and becomes ``runsc start`` as
before: the sandbox gets create's stdio, and the shim's capture pipe is closed
as soon as runsc start exits.  The holder exits once it has handed them over,
when runsc create failed (no pid file), when the container's bundle is gone
(deleted), or after ``HOLD_LIMIT_S``.

``take_create_stdio`` runs on the pass-through path of every ``start``: it
imports nothing; when no holder socket exists (every container that is not a
CRI sub-container) it costs one read of the config file's ``state_dir`` and
one ``stat``.
"""

from __future__ import annotations

import os

from runsc_cuda.runtime import config_path

TYPE_CHECKING = False  # typing itself costs ~4 ms to import; mypy honours this spelling
if TYPE_CHECKING:
    from collections.abc import Mapping
    from socket import socket

    from runsc_cuda.argv import CommandLine
    from runsc_cuda.session import Session

CONTAINER_TYPE = "io.kubernetes.cri.container-type"
SUBCONTAINER = "container"  # "sandbox" is the pod's first (pause) container: it runs with create's stdio
DEFAULT_STATE_DIR = "/run/runsc-cuda"  # config.Config.state_dir
ENV_STATE_DIR = "RUNSC_CUDA_STATE_DIR"
SUBDIR = "stdio"
HOLD_LIMIT_S = 3600.0  # a create that is never started nor deleted: give the descriptors back after this
POLL_S = 2.0  # how often the holder looks for its container's bundle
CONNECT_TIMEOUT_S = 5.0
MAGIC = b"runsc-cuda-stdio/1"
SUN_PATH_MAX = 107


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


def fast_config_value(text: str, name: str) -> tuple[bool, str | None]:
    """A top-level string key of a simple config file, without a TOML parser.

    The same rules as ``runtime.fast_config_runsc`` (which reads ``runsc``):
    ``(True, value)`` when the file is simple enough to be sure, ``(False, None)``
    when the real parser must decide.
    """
    from runsc_cuda.runtime import _simple_toml_string

    if '"""' in text or "'''" in text or "\r" in text:
        return False, None
    found: str | None = None
    for raw in text.split("\n"):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            break
        k, eq, value = line.partition("=")
        k = k.strip()
        if k.strip("\"'") == name or k.startswith((f"{name}.", f'"{name}".', f"'{name}'.")):
            if k != name or not eq or found is not None:
                return False, None
            parsed = _simple_toml_string(value.strip())
            if parsed is None:
                return False, None
            found = parsed
        elif not eq:
            return False, None
    return True, found


def state_dir(environ: Mapping[str, str]) -> str:
    """config ``state_dir`` as ``config.load`` sees it (env, then file, then the default)."""
    if ENV_STATE_DIR in environ:
        return environ[ENV_STATE_DIR]
    path = config_path(environ)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError):
        return DEFAULT_STATE_DIR  # find_runsc reports an unreadable config file
    sure, value = fast_config_value(text, "state_dir")
    if not sure:
        from runsc_cuda import config

        return config.parse_text(text, path).state_dir
    return DEFAULT_STATE_DIR if value is None else value


def take_create_stdio(cmd: CommandLine, environ: Mapping[str, str]) -> None:
    """``start ID``: if a holder keeps create's stdio for ID, make it this process's 0, 1 and 2.

    Never raises and never blocks for long: without a holder nothing changes; with a
    holder that does not answer, 0/1/2 become /dev/null (the container runs, its
    output is lost, the runtime log says so) rather than leaving the shim waiting forever.
    """
    if not cmd.rest:
        return
    cid = cmd.rest[-1]
    try:
        root = runsc_root(cmd)
        path = socket_path(state_dir(environ), root, cid)
        os.stat(path)
    except Exception:  # no holder (the usual case), or a config that find_runsc will report
        return
    problem = _receive(path, root, cid)
    if problem is None:
        return
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


# --- create: the holder ----------------------------------------------------------------


def hold_for_start(session: Session, bundle: str, cid: str | None, pid_file: str | None) -> None:
    """``create`` of a CRI sub-container: leave a holder of this process's 0, 1, 2 for ``start``.

    Called just before this process becomes ``runsc create``.  Failures are warnings:
    the container is still created (its start then behaves as without runsc-cuda).
    """
    import json

    report = session.report
    try:
        with open(os.path.join(bundle, "config.json"), "rb") as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return  # runsc create will say what is wrong with the bundle
    if not isinstance(doc, dict) or not is_subcontainer(doc) or not cid:
        return
    root = runsc_root(session.cmd)
    path = socket_path(session.config.state_dir, root, cid)
    if len(path.encode()) > SUN_PATH_MAX:
        report.warning(f"create {cid}: state_dir is too long for a unix socket ({path}); start will hang")
        return
    try:
        holder = _spawn_holder(session, path, root, cid, bundle, pid_file)
    except OSError as e:
        report.warning(f"create {cid}: cannot keep create's stdio for start ({path}: {e.strerror or e})")
        return
    report.debug("holding create's stdio for start", container=cid, socket=path, holder=holder)


def _spawn_holder(session: Session, path: str, root: str, cid: str, bundle: str, pid_file: str | None) -> int:
    """Bind the socket here (so start can connect as soon as create returns), then fork the holder."""
    import socket

    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    with _suppress():
        os.unlink(path)  # a holder that died without cleaning up
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old = os.umask(0o177)
        try:
            listener.bind(path)
        finally:
            os.umask(old)
        listener.listen(4)
        inode = os.stat(path).st_ino
        create_pid = os.getpid()
        pid_file = os.path.join(session.cwd, pid_file) if pid_file else None
        config_json = os.path.join(bundle, "config.json")
        child = os.fork()
        if child == 0:  # pragma: no cover - the holder's own process (tested end to end)
            code = 0
            try:
                os.setsid()
                if os.fork() == 0:
                    _become_holder(session, listener, path, inode, root, cid, create_pid, pid_file, config_json)
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        _pid, status = os.waitpid(child, 0)
        if status != 0:
            raise OSError(f"the holder's first fork exited with status {status}")
        return child
    finally:
        listener.close()


def _become_holder(
    session: Session,
    listener: socket,
    path: str,
    inode: int,
    root: str,
    cid: str,
    create_pid: int,
    pid_file: str | None,
    config_json: str,
) -> None:
    """The holder's life (a grandchild of create, reparented to the shim); never returns."""
    import signal

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    report = session.report
    report.context = {"verb": "stdio-holder", "container": cid}
    keep = {0, 1, 2, listener.fileno()}
    for handler in getattr(report.logger, "handlers", []):
        stream = getattr(handler, "stream", None)
        if stream is not None:
            with _suppress():
                keep.add(stream.fileno())
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd not in keep:
            with _suppress():
                os.close(fd)
    os.chdir("/")
    why = "?"
    try:
        why = _serve(listener, root, cid, create_pid, pid_file, config_json)
    except BaseException as e:
        why = f"failed: {type(e).__name__}: {e}"
    finally:
        _unlink_if_ours(path, inode)
        report.runtime_log = None
        report.debug(f"stdio holder exits: {why}", socket=path)
        os._exit(0)


def _serve(listener: socket, root: str, cid: str, create_pid: int, pid_file: str | None, config_json: str) -> str:
    import select
    import time

    deadline = time.monotonic() + HOLD_LIMIT_S
    watched = [listener.fileno()]
    try:  # readable once runsc create (this process's parent, exec'd) has exited
        opened = os.pidfd_open(create_pid)
    except (OSError, AttributeError):
        opened = -1
    pidfd = opened if opened >= 0 else None
    if pidfd is not None:
        watched.append(pidfd)
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return f"not started within {HOLD_LIMIT_S:.0f}s"
        ready, _, _ = select.select(watched, [], [], min(POLL_S, left))
        if pidfd is not None and pidfd in ready:
            watched.remove(pidfd)
            os.close(pidfd)
            pidfd = None
            if pid_file is not None and not os.path.exists(pid_file):
                return "runsc create failed (no pid file)"
        if listener.fileno() in ready:
            conn, _ = listener.accept()
            with conn:
                if _answer(conn, root, cid):
                    return "handed create's stdio to start"
        if not os.path.exists(config_json):
            return "the container's bundle is gone (deleted)"


def _answer(conn: socket, root: str, cid: str) -> bool:
    """Send 0, 1, 2 to a start of this container run by this user (or root)."""
    import socket
    import struct

    conn.settimeout(CONNECT_TIMEOUT_S)
    try:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
        wanted = request(root, cid)
        got = b""
        while not got.endswith(b"\n") and len(got) <= len(wanted):
            chunk = conn.recv(len(wanted) + 1 - len(got))
            if not chunk:
                break
            got += chunk
        if uid not in (0, os.getuid()) or got != wanted:
            conn.sendall(b"no")
            return False
        socket.send_fds(conn, [b"ok"], [0, 1, 2])
        return True
    except OSError:
        return False


def _unlink_if_ours(path: str, inode: int) -> None:
    """Remove the socket file unless another holder has bound the same path since."""
    with _suppress():
        if os.stat(path).st_ino == inode:
            os.unlink(path)
