"""A pod's sub-container under containerd's runc.v2 shim: stdio and exit status like runc's.

Two things differ between runc and runsc for a container that joins a pod's
sandbox (a CRI sub-container, annotation ``io.kubernetes.cri.container-type:
container``), and the runc.v2 shim relies on runc's way for both:

- **stdio.**  runc gives a container the stdio of ``runc create``; runsc gives a
  sub-container the stdio of ``runsc start``.  The shim calls ``start`` with a
  pipe that captures its output and waits for that pipe's EOF, so under runsc
  the sandbox keeps the pipe open and StartContainer hangs forever (holding the
  container's lock: stop and kill hang too), and the container's output never
  reaches the pipes the shim gave ``create`` (``crictl logs`` stays empty).
- **exit.**  The shim learns that a container ended when the process named in
  ``create --pid-file`` exits (it reaps it as a subreaper).  runsc writes the
  *sandbox's* PID there for a sub-container, which lives on when the
  sub-container ends: StopContainer waits forever.

So ``create`` of a sub-container starts a small detached *holder* and runs
``runsc create`` as a child (without ``--pid-file``); on success it writes the
holder's PID to the shim's pid file.  The holder keeps create's descriptors 0,
1 and 2 and listens on a unix socket ``<state_dir>/stdio/<key>.sock`` (key:
runsc's ``--root`` and the container id).  ``start`` of that container
connects, receives the three descriptors (SCM_RIGHTS), puts them on its own 0,
1 and 2 and becomes ``runsc start`` as before: the sandbox gets create's stdio
and the shim's capture pipe closes when runsc start exits.  The holder then
runs ``runsc wait`` on the container and exits with the container's exit status
(128+N for a signal, as runsc reports it), which the shim reaps as the
container's init.  A holder whose container is deleted before it starts
(bundle gone) exits with 137, as runc's init would.

The start side (``take_create_stdio``, on the pass-through path) is in
runsc_cuda/oci/stdio.py.
"""

from __future__ import annotations

import os

from runsc_cuda.oci.stdio import (
    CONNECT_TIMEOUT_S,
    RESTORED_REPLY,
    SUN_PATH_MAX,
    _suppress,
    is_subcontainer,
    request,
    runsc_root,
    socket_path,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from socket import socket

    from runsc_cuda.oci.argv import CommandLine, VerbArgs
    from runsc_cuda.session import Session

POLL_S = 1.0  # how often a holder waiting for start looks for its container's bundle


# --- create: the holder ----------------------------------------------------------------


def create(
    session: Session, cmd: CommandLine, bundle: str, args: VerbArgs, restore_image: str | None = None
) -> int | None:
    """``create`` of a CRI sub-container: the holder, then ``runsc create``; its exit status.

    With ``restore_image`` (a pod restored from a checkpoint, commands/pod_restore.py) the
    container is restored instead (``runsc restore --detach``, with create's stdio) and the
    holder tells ``start`` that it runs already.

    ``cmd`` has the global flags for runsc (nvproxy added for GPU containers), ``args`` the
    translated create flags.

    None when this is not a CRI sub-container (or no holder can be made: a warning says
    why): the caller then becomes ``runsc create`` as for any container.
    """
    import json

    report = session.report
    cid = args.args[-1] if args.args else None
    pid_file = args.value("pid-file")
    try:
        with open(os.path.join(bundle, "config.json"), "rb") as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return None  # runsc create will say what is wrong with the bundle
    if not isinstance(doc, dict) or not is_subcontainer(doc) or not cid or not pid_file:
        return None
    shim = calling_shim(ancestor_programs())
    if shim is not None and not shim.startswith(RUNC_SHIMS):
        report.debug(f"sub-container under {shim}: runsc's own stdio and pid file", container=cid)
        return None  # gVisor's runsc.v1 shim knows runsc's ways (and calls runsc wait itself)
    root = runsc_root(session.cmd)
    path = socket_path(session.config.state_dir, root, cid)
    if len(path.encode()) > SUN_PATH_MAX:
        report.warning(f"create {cid}: state_dir is too long for a unix socket ({path}); start will hang")
        return None
    why = session.interrupted()
    if why is not None:
        from runsc_cuda.errors import ShimError

        raise ShimError(f"create: {why} before runsc started; nothing was changed in the sandbox")
    try:
        listener, inode = _listen(path)
    except OSError as e:
        report.warning(f"create {cid}: cannot keep create's stdio for start ({path}: {e.strerror or e})")
        return None
    config_json = os.path.join(bundle, "config.json")
    holder = os.fork()
    if holder == 0:  # pragma: no cover - the holder's own process (tested through the CLI)
        try:
            os.setsid()
            _become_holder(session, listener, path, inode, root, cid, config_json, restore_image is not None)
        finally:
            os._exit(255)
    listener.close()
    pid_path = os.path.join(session.cwd, pid_file)
    return _runsc_create(session, cmd, args, cid, pid_path, holder, path, inode, restore_image)


def answer_start(session: Session, cid: str, bundle: str) -> None:
    """A holder that only tells ``start`` of ``cid`` that it runs already (a pod's sandbox restored at
    create), then exits; it also exits once the bundle is gone. A warning when none can be made."""
    root = runsc_root(session.cmd)
    path = socket_path(session.config.state_dir, root, cid)
    try:
        listener, inode = _listen(path)
    except OSError as e:
        session.report.warning(f"create {cid}: start will run runsc start on a restored sandbox ({e.strerror or e})")
        return
    config_json = os.path.join(bundle, "config.json")
    holder = os.fork()
    if holder == 0:  # pragma: no cover - the holder's own process (tested through the CLI)
        try:
            os.setsid()
            if os.fork() == 0:  # not the shim's child: it would reap it as if it were the container
                _become_holder(session, listener, path, inode, root, cid, config_json, True, wait=False)
        finally:
            os._exit(0)
    listener.close()
    os.waitpid(holder, 0)


RUNC_SHIMS = ("containerd-shim-runc-",)  # the shims that treat the runtime as runc


def ancestor_programs(depth: int = 6) -> list[str]:
    """The programs (executable file names) of this process's parents, nearest first.

    The kernel's link to each executable, not a name a process gives itself
    (argv[0], comm): a process cannot pass for a shim it is not.
    """
    names = []
    pid = os.getppid()
    for _ in range(depth):
        if pid <= 1:
            break
        try:
            exe = os.readlink(f"/proc/{pid}/exe").removesuffix(" (deleted)")
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
        names.append(os.path.basename(exe))
    return names


def calling_shim(programs: list[str]) -> str | None:
    """The nearest containerd shim among the callers (a recorder or wrapper may sit between)."""
    return next((name for name in programs if name.startswith("containerd-shim")), None)


def _listen(path: str) -> tuple[socket, int]:
    """The holder's socket, bound here: start can connect as soon as create returns."""
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
        return listener, os.stat(path).st_ino
    except BaseException:
        listener.close()
        raise


def _runsc_create(
    session: Session,
    cmd: CommandLine,
    args: VerbArgs,
    cid: str,
    pid_file: str,
    holder: int,
    path: str,
    inode: int,
    restore_image: str | None = None,
) -> int:
    """runsc create (or restore) as a child (no --pid-file: it would name the sandbox); then the holder's
    PID for the shim."""
    import signal
    import subprocess

    from runsc_cuda.files import write_atomic
    from runsc_cuda.oci.runsc import child_environ

    verb = ["create"] if restore_image is None else ["restore", "--detach", f"--image-path={restore_image}"]
    argv = [session.runsc, *cmd.global_tokens(), *verb, *args.without("pid-file").tokens()]
    code = subprocess.run(argv, env=child_environ(session.environ), check=False).returncode
    failure = None
    if code == 0:
        try:
            write_atomic(pid_file, str(holder), durable=False)
        except OSError as e:
            failure = f"create {cid}: cannot write the pid file {pid_file}: {e.strerror or e}"
            code = 1
    if code != 0:
        with _suppress():
            os.kill(holder, signal.SIGKILL)
        with _suppress_child():
            os.waitpid(holder, 0)
        _unlink_if_ours(path, inode)
        if failure is not None:
            session.report.error(failure)
        session.report.debug("runsc create failed; holder removed", container=cid, rc=code)
        return code if code > 0 else 128 - code
    session.report.debug(
        "sub-container: holder keeps create's stdio for start and stands in for its init",
        container=cid,
        socket=path,
        holder=holder,
    )
    return 0


class _suppress_child:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, value: object, tb: object) -> bool:
        return isinstance(value, ChildProcessError)


def _become_holder(
    session: Session,
    listener: socket,
    path: str,
    inode: int,
    root: str,
    cid: str,
    config_json: str,
    restored: bool = False,
    wait: bool = True,
) -> None:
    """The holder's life (a child of create, reparented to the shim); never returns."""
    import signal

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    report = session.report
    report.runtime_log = None
    report.context = {"verb": "sub-container holder", "container": cid}
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
    code = 255
    try:
        if not _hand_over(listener, root, cid, config_json, restored):
            code = 137
            report.debug("holder exits: the container's bundle is gone (deleted before start)", socket=path)
            return
        _unlink_if_ours(path, inode)
        listener.close()
        null = os.open(os.devnull, os.O_RDWR)
        for target in (0, 1, 2):
            os.dup2(null, target)
        os.close(null)
        if not wait:
            code = 0
            return
        code = _wait_exit(session, cid)
        report.debug("holder exits with the container's exit status", status=code)
    except BaseException as e:
        report.debug(f"holder failed: {type(e).__name__}: {e}", socket=path)
    finally:
        _unlink_if_ours(path, inode)
        os._exit(code)


def _hand_over(listener: socket, root: str, cid: str, config_json: str, restored: bool = False) -> bool:
    """Wait for start and give it 0, 1, 2 or say it was restored (True), or for the bundle to go (False)."""
    import select

    while True:
        ready, _, _ = select.select([listener.fileno()], [], [], POLL_S)
        if ready:
            conn, _ = listener.accept()
            with conn:
                if _answer(conn, root, cid, restored):
                    return True
        if not os.path.exists(config_json):
            return False


def _wait_exit(session: Session, cid: str) -> int:
    """``runsc wait`` on the container (retried while start has not yet started it): its exit status."""
    import json
    import subprocess
    import time

    from runsc_cuda.oci.runsc import child_environ

    # Not --log: runsc's complaints here (a wait before start got through) would become the
    # last error line of the container's runtime log, which containerd shows for its next failure.
    flags = [t for f in session.cmd.global_flags if f.name not in ("log", "log-format") for t in f.tokens]
    env = child_environ(session.environ)

    def call(*args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [session.runsc, *flags, *args, cid], capture_output=True, env=env, check=False, stdin=subprocess.DEVNULL
        )

    while True:
        waited = call("wait")
        with _suppress_value():
            return int(json.loads(waited.stdout)["exitStatus"]) & 0xFF
        state = call("state")
        try:
            status = json.loads(state.stdout)["status"]
        except (ValueError, KeyError, TypeError):
            return 137  # the container is gone (deleted)
        if status == "stopped":
            return 255  # ended before wait could see how
        time.sleep(0.1)  # created: start has not run it yet (or failed: the shim deletes it)


class _suppress_value:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, value: object, tb: object) -> bool:
        return isinstance(value, (ValueError, KeyError, TypeError))


def _answer(conn: socket, root: str, cid: str, restored: bool = False) -> bool:
    """Send 0, 1, 2 (or "restored") to a start of this container run by this user (or root)."""
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
        if restored:
            conn.sendall(RESTORED_REPLY)
        else:
            socket.send_fds(conn, [b"ok"], [0, 1, 2])
        return True
    except OSError:
        return False


def _unlink_if_ours(path: str, inode: int) -> None:
    """Remove the socket file unless another holder has bound the same path since."""
    with _suppress():
        if os.stat(path).st_ino == inode:
            os.unlink(path)
