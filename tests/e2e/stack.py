"""The real stack for end-to-end tests: a private containerd and dockerd, gVisor's runsc, runsc-cuda.

Everything lives under one temporary folder (short, because unix socket paths
are limited to 107 bytes): containerd's root, state and socket, dockerd's
data-root, exec-root, socket and pidfile, the runsc-cuda wrapper, its config
and logs, the fake host cuda-checkpoint, containerd's TMPDIR, dockerd's trust
key, containerd's "opt" folder.  Nothing is installed on the host and nothing
of the host's own Docker or containerd (if any) is used; only empty folders
appear outside: dockerd's /run/docker/plugins and the shims'
/run/containerd/{s,fifo} (fixed paths).

``Stack.start`` raises ``Unavailable`` with a reason when the machine cannot
run the stack (the tests then skip with that reason); ``Stack.stop`` removes
the containers, deletes every sandbox left under the stack's runsc roots
(``runsc delete --force``), kills what the stack started, by PID, and any
process still naming the folder, unmounts what is left under the folder and
removes it.  ``running`` stops the stack whatever happens (a failed assertion,
Ctrl-C, SIGTERM through tests/hygiene.py).  Every docker/ctr call has a timeout.

Usable by hand for experiments (as root)::

    python tests/e2e/stack.py up /tmp/rce      # prints the env to talk to it
    python tests/e2e/stack.py down /tmp/rce
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

import sandboxes  # noqa: E402 - scripts/sandboxes.py

BUILD_RUNSC = REPO / "scripts" / "build-runsc.sh"
IMAGE = "runsc-cuda-e2e/busybox:1"
CTR_NAMESPACE = "runsc-cuda-e2e"
FAKE_CUDA_CHECKPOINT = """#!/bin/sh
# A stand-in for the host's cuda-checkpoint (this machine has no GPU).
echo "fake-cuda-checkpoint $*"
"""
START_TIMEOUT = 60.0
# What the last Stack.stop had to clean up by force (the e2e conftest prints it at the end).
STOP_NOTES: list[str] = []
STOP_TIMEOUT = 30.0


class Unavailable(Exception):
    """This machine cannot run the real stack; the message says why."""


@dataclass(frozen=True)
class Tools:
    """The host programs the stack needs."""

    containerd: str
    ctr: str
    dockerd: str
    docker: str
    busybox: str
    runsc: str

    @staticmethod
    def find(runsc: str) -> Tools:
        """The binaries on PATH (plus the usual sbin folders); Unavailable names the missing ones."""
        path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin", "/sbin", "/bin"])
        found: dict[str, str] = {}
        missing = []
        for name in ("containerd", "ctr", "dockerd", "busybox"):
            hit = shutil.which(name, path=path)
            if hit is None:
                missing.append(name)
            else:
                found[name] = hit
        # The docker client that came with dockerd (Debian: /usr/sbin/dockerd, /usr/bin/docker):
        # a newer client earlier on PATH talks a newer API, and its new options are ignored.
        if "dockerd" in found:
            sbin = Path(found["dockerd"]).resolve().parent
            packaged = [p for p in (sbin / "docker", sbin.parent / "bin" / "docker") if os.access(p, os.X_OK)]
            hit = str(packaged[0]) if packaged else shutil.which("docker", path=path)
            if hit is None:
                missing.append("docker")
            else:
                found["docker"] = hit
        if missing:
            raise Unavailable(
                f"not installed: {', '.join(missing)} (scripts/ci-install.sh installs docker.io, busybox-static)"
            )
        if not is_static(found["busybox"]):
            raise Unavailable(f"{found['busybox']} is not statically linked (install busybox-static)")
        return Tools(runsc=runsc, **found)


def is_static(path: str) -> bool:
    """An ELF file without a program interpreter (PT_INTERP)."""
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2:  # 64-bit only
            return False
        phoff = int.from_bytes(head[32:40], "little")
        phentsize = int.from_bytes(head[54:56], "little")
        phnum = int.from_bytes(head[56:58], "little")
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    return all(int.from_bytes(table[i : i + 4], "little") != 3 for i in range(0, len(table), phentsize))


def build_runsc(timeout: float = 1200) -> str:
    """The pinned runsc (``RUNSC_CUDA_E2E_RUNSC`` names a ready one), built once by scripts/build-runsc.sh."""
    given = os.environ.get("RUNSC_CUDA_E2E_RUNSC")
    if given:
        if not os.access(given, os.X_OK):
            raise Unavailable(f"RUNSC_CUDA_E2E_RUNSC={given} is not an executable file")
        return given
    try:
        done = subprocess.run(
            ["bash", str(BUILD_RUNSC)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise Unavailable(f"scripts/build-runsc.sh did not finish in {timeout:.0f}s") from None
    if done.returncode != 0:
        raise Unavailable(f"scripts/build-runsc.sh failed (exit {done.returncode}): {tail(done.stderr, 1500)}")
    return done.stdout.strip().splitlines()[-1]


def tail(text: str, limit: int = 2000) -> str:
    text = text.strip()
    return text if len(text) <= limit else "..." + text[-limit:]


def file_tail(path: Path, limit: int = 2000) -> str:
    try:
        return tail(path.read_text(errors="replace"), limit)
    except OSError as e:
        return f"({path}: {e.strerror})"


class CallFailed(AssertionError):
    """A docker/ctr call that was expected to succeed did not."""


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    def check(self) -> Result:
        if self.returncode != 0:
            raise CallFailed(self.describe())
        return self

    def describe(self) -> str:
        cmd = shlex.join(self.argv)
        return f"`{cmd}` exited {self.returncode}\nstdout: {tail(self.stdout)}\nstderr: {tail(self.stderr)}"


def run(
    argv: Sequence[str],
    timeout: float,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
    cwd: str | None = None,
) -> Result:
    """Run a program to completion; a timeout is a test failure that says which call hung."""
    try:
        done = subprocess.run(
            list(argv),
            cwd=cwd,
            input=stdin,
            stdin=None if stdin is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        raise CallFailed(f"`{shlex.join(argv)}` did not finish in {timeout:.0f}s; stdout so far: {tail(out)}") from None
    return Result(tuple(argv), done.returncode, done.stdout, done.stderr)


T = TypeVar("T")


@contextlib.contextmanager
def started_or_skip(
    what: str, prefix: str, start: Callable[[Path], contextlib.AbstractContextManager[T]]
) -> Iterator[T]:
    """A stack started in a new folder /tmp/PREFIX* (short: unix socket paths are limited) and stopped
    after; the test is skipped, saying why, where ``what`` cannot start (Unavailable)."""
    import pytest  # the benchmarks use this module without pytest's fixtures

    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        with start(root) as started:
            yield started
    except Unavailable as e:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"{what} unavailable: {e}")


def wait_for(what: str, probe: Callable[[], bool], timeout: float, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f}s")
        time.sleep(interval)


@dataclass
class Stack:
    """A private containerd + dockerd under ``root``.

    dockerd's runtimes: ``runsc`` (the real one, for comparison), ``runsc-cuda``
    (bin/runsc-cuda: the project's program with its own config), ``runsc-rec``
    (records every call in recorded_calls, then runs the real runsc).
    """

    root: Path
    tools: Tools
    runsc_cuda: str  # the runsc-cuda program (the venv's console script)
    pids: dict[str, int] = field(default_factory=dict)
    # More runtimes for dockerd, name -> program (written before start, e.g. by write_recorder).
    extra_runtimes: dict[str, str] = field(default_factory=dict)
    runtime_args: dict[str, list[str]] = field(default_factory=dict)  # runtime name -> its runtimeArgs
    # containerd's TMPDIR inside root: it makes /tmp/ctd-checkpoint* for checkpoints and
    # never removes the /tmp/ctrd-checkpoint* of a restore. False: the host's /tmp, as in production.
    private_tmp: bool = True

    # --- layout -----------------------------------------------------------------------

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    @property
    def containerd_sock(self) -> Path:
        return self.root / "containerd.sock"

    @property
    def docker_sock(self) -> Path:
        return self.root / "docker.sock"

    @property
    def exec_root(self) -> Path:
        return self.root / "exec"

    @property
    def containerd_state(self) -> Path:
        return self.root / "containerd" / "state"

    @property
    def ctr_runc_root(self) -> Path:
        """runsc's --root for containers that ctr starts (the shim's default is under /run)."""
        return self.root / "ctr-runc-root"

    @property
    def runsc_cuda_log(self) -> Path:
        return self.root / "runsc-cuda.log"

    @property
    def recorded_calls(self) -> Path:
        return self.root / "recorded-calls.jsonl"

    @property
    def runsc_cuda_config(self) -> Path:
        return self.root / "runsc-cuda.toml"

    @property
    def fake_cuda_checkpoint(self) -> Path:
        return self.bin / "cuda-checkpoint"

    @property
    def docker_runtime_root(self) -> Path:
        """The --root that Docker 20.10 gives every runtime (runc's, whatever the runtime's name)."""
        return self.exec_root / "runtime-runc" / "moby"

    def docker_bundle(self, container_id: str) -> Path:
        """Where containerd's runc.v2 shim keeps a Docker container's bundle."""
        return self.containerd_state / "io.containerd.runtime.v2.task" / "moby" / container_id

    def ctr_bundle(self, container_id: str) -> Path:
        return self.containerd_state / "io.containerd.runtime.v2.task" / CTR_NAMESPACE / container_id

    # --- talking to it ------------------------------------------------------------------

    def docker_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        env["DOCKER_HOST"] = f"unix://{self.docker_sock}"
        env["DOCKER_CONFIG"] = str(self.root / "docker-config")
        return env

    def docker(self, *args: str, timeout: float = 60, check: bool = True, stdin: str | None = None) -> Result:
        result = run([self.tools.docker, *args], timeout, self.docker_env(), stdin)
        return result.check() if check else result

    def ctr(self, *args: str, timeout: float = 60, check: bool = True, namespace: str = CTR_NAMESPACE) -> Result:
        argv = [self.tools.ctr, "--address", str(self.containerd_sock), "--namespace", namespace, *args]
        result = run(argv, timeout)
        return result.check() if check else result

    def runsc(self, root: Path, *args: str, timeout: float = 30) -> Result:
        """The real runsc, on the containers under ``root``."""
        return run([self.tools.runsc, "--root", str(root), *args], timeout)

    def runsc_cuda_records(self) -> list[dict[str, Any]]:
        """runsc-cuda's detail log (JSON lines)."""
        if not self.runsc_cuda_log.exists():
            return []
        out = []
        for line in self.runsc_cuda_log.read_text().splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    # --- start ------------------------------------------------------------------------

    def start(self) -> None:
        """Write the files, start containerd and dockerd, import the image. Unavailable on failure."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._write_files()
        self._save()
        self._start_containerd()
        self._start_dockerd()
        self._import_image()

    def _write_files(self) -> None:
        self.bin.mkdir(exist_ok=True)
        (self.root / "docker-config").mkdir(exist_ok=True)
        self.ctr_runc_root.mkdir(exist_ok=True)
        write_exec(self.fake_cuda_checkpoint, FAKE_CUDA_CHECKPOINT)
        config = self.runsc_cuda_config
        config.write_text(
            "\n".join(
                [
                    f"runsc = {json.dumps(self.tools.runsc)}",
                    f"cuda_checkpoint = {json.dumps(str(self.fake_cuda_checkpoint))}",
                    "nvproxy = false",
                    f"log_file = {json.dumps(str(self.runsc_cuda_log))}",
                    'log_level = "debug"',
                    f"state_dir = {json.dumps(str(self.root / 'runsc-cuda-state'))}",
                    "",
                ]
            )
        )
        write_exec(
            self.bin / "runsc-cuda",
            f"#!/bin/sh\nRUNSC_CUDA_CONFIG={shlex.quote(str(config))}\nexport RUNSC_CUDA_CONFIG\n"
            f'exec {shlex.quote(self.runsc_cuda)} "$@"\n',
        )
        self.write_recorder("runsc-rec", "runsc", self.tools.runsc)
        paths = {
            "runsc": self.tools.runsc,
            "runsc-cuda": str(self.bin / "runsc-cuda"),
            "runsc-rec": str(self.bin / "runsc-rec"),
            **self.extra_runtimes,
        }
        common = shlex.split(os.environ.get("RUNSC_CUDA_E2E_RUNSC_ARGS", ""))
        runtimes: dict[str, dict[str, Any]] = {}
        for name, path in paths.items():
            args = [*common, *self.runtime_args.get(name, [])]
            runtimes[name] = {"path": path, **({"runtimeArgs": args} if args else {})}
        # deprecated-key-path: else dockerd 20.10 writes its trust key to /etc/docker/key.json
        daemon = {"runtimes": runtimes, "deprecated-key-path": str(self.root / "key.json")}
        (self.root / "daemon.json").write_text(json.dumps(daemon, indent=2))
        (self.root / "containerd.toml").write_text(
            "\n".join(
                [
                    "version = 2",
                    f"root = {json.dumps(str(self.root / 'containerd' / 'root'))}",
                    f"state = {json.dumps(str(self.containerd_state))}",
                    'disabled_plugins = ["io.containerd.grpc.v1.cri"]',
                    "[grpc]",
                    f"  address = {json.dumps(str(self.containerd_sock))}",
                    "[ttrpc]",
                    f"  address = {json.dumps(str(self.containerd_sock) + '.ttrpc')}",
                    "[debug]",
                    '  level = "info"',
                    # The "opt" plugin's folder, else containerd makes /opt/containerd/{bin,lib} on the host.
                    '[plugins."io.containerd.internal.v1.opt"]',
                    f"  path = {json.dumps(str(self.root / 'containerd' / 'opt'))}",
                    "",
                ]
            )
        )

    def write_recorder(self, name: str, tag: str, program: str) -> Path:
        """bin/NAME: a runtime that records each call (tagged TAG) in recorded_calls, then runs PROGRAM."""
        recorder = Path(__file__).with_name("recorder.py")
        path = self.bin / name
        write_exec(
            path,
            f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -S {shlex.quote(str(recorder))} "
            f'{shlex.quote(str(self.recorded_calls))} {shlex.quote(tag)} {shlex.quote(program)} "$@"\n',
        )
        return path

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 - the daemon owns it
        try:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env
            )
        finally:
            log.close()
        self.pids[name] = proc.pid
        self._save()
        return proc

    def _wait_up(self, name: str, proc: subprocess.Popen[bytes], probe: Callable[[], bool]) -> None:
        def up() -> bool:
            if proc.poll() is not None:
                raise Unavailable(
                    f"{name} exited with status {proc.returncode} while starting; "
                    f"its log ends: {file_tail(self.root / f'{name}.log')}"
                )
            return probe()

        try:
            wait_for(name, up, START_TIMEOUT, 0.3)
        except TimeoutError:
            raise Unavailable(
                f"{name} did not come up in {START_TIMEOUT:.0f}s; its log ends: {file_tail(self.root / f'{name}.log')}"
            ) from None

    def _start_containerd(self) -> None:
        env = dict(os.environ)
        if self.private_tmp:
            (self.root / "tmp").mkdir(exist_ok=True)
            env["TMPDIR"] = str(self.root / "tmp")
            env.pop("XDG_RUNTIME_DIR", None)  # containerd prefers it for checkpoint images
        proc = self._spawn("containerd", [self.tools.containerd, "--config", str(self.root / "containerd.toml")], env)

        def probe() -> bool:
            return self.containerd_sock.exists() and self.ctr("version", check=False, timeout=10).returncode == 0

        self._wait_up("containerd", proc, probe)

    def _start_dockerd(self) -> None:
        argv = [
            self.tools.dockerd,
            "--config-file", str(self.root / "daemon.json"),
            "--containerd", str(self.containerd_sock),
            "--data-root", str(self.root / "data"),
            "--exec-root", str(self.exec_root),
            "--pidfile", str(self.root / "dockerd.pid"),
            "--host", f"unix://{self.docker_sock}",
            "--experimental",
            "--iptables=false",
            "--ip6tables=false",
            "--ip-forward=false",
            "--ip-masq=false",
            "--bridge=none",
            "--storage-driver=vfs",
            "--log-level=info",
        ]  # fmt: skip
        proc = self._spawn("dockerd", argv)

        def probe() -> bool:
            return self.docker_sock.exists() and self.docker("version", check=False, timeout=10).returncode == 0

        self._wait_up("dockerd", proc, probe)

    def _import_image(self) -> None:
        tar = self.root / "busybox-rootfs.tar"
        tar.write_bytes(busybox_rootfs(self.tools.busybox))
        result = self.docker("import", "--change", 'CMD ["/bin/sh"]', str(tar), IMAGE, check=False, timeout=120)
        if result.returncode != 0:
            raise Unavailable(f"cannot build the busybox image offline: {result.describe()}")

    def ctr_image(self) -> str:
        """The busybox image in containerd's own namespace (imported once, from `docker save`)."""
        name = f"docker.io/{IMAGE}"  # ctr's name for it
        if name not in self.ctr("images", "list", "--quiet", timeout=30).stdout.split():
            archive = self.root / "busybox-image.tar"
            self.docker("save", "--output", str(archive), IMAGE, timeout=120)
            self.ctr("images", "import", str(archive), timeout=120)
        return name

    # --- stop -------------------------------------------------------------------------

    def stop(self) -> list[str]:
        """Stop everything under root, leave no process or mount behind, remove root.

        Returns what had to be cleaned up by force (for the report).
        """
        notes: list[str] = []
        if "dockerd" in self.pids and pid_alive(self.pids["dockerd"]):
            with contextlib.suppress(CallFailed):
                ids = self.docker("ps", "--all", "--quiet", check=False, timeout=20).stdout.split()
                if ids:
                    self.docker("rm", "--force", *ids, check=False, timeout=60)
        if "containerd" in self.pids and pid_alive(self.pids["containerd"]):
            with contextlib.suppress(CallFailed):
                self._remove_ctr_containers()
        for runsc_root in self.runsc_roots():  # what Docker and ctr did not remove (or could not: a daemon died)
            notes.extend(sandboxes.remove_sandboxes(self.tools.runsc, runsc_root))
        for name in ("dockerd", "containerd"):
            pid = self.pids.get(name)
            if pid and not terminate(pid, STOP_TIMEOUT):
                notes.append(f"{name} ({pid}) needed SIGKILL")
        for pid, cmdline in self.leftover_processes():
            notes.append(f"killed leftover process {pid}: {cmdline[:200]}")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            socket = shim_socket(cmdline.split())
            if socket is not None and socket.is_socket():
                socket.unlink()
        with contextlib.suppress(TimeoutError):
            wait_for("leftovers", lambda: not self.leftover_processes(), 10)
        for mount in self.mounts():
            notes.append(f"unmounted leftover {mount}")
            subprocess.run(["umount", "--lazy", mount], capture_output=True, timeout=30, check=False)
        if os.environ.get("RUNSC_CUDA_E2E_KEEP"):
            notes.append(f"kept {self.root} (RUNSC_CUDA_E2E_KEEP)")
        else:
            shutil.rmtree(self.root, ignore_errors=True)
        return notes

    def runsc_roots(self) -> list[Path]:
        """The --root folders runsc runs its sandboxes under: Docker's (every runtime's) and ctr's."""
        return [root for root in (self.docker_runtime_root, self.ctr_runc_root) if root.is_dir()]

    def _remove_ctr_containers(self) -> None:
        """What the ctr tests left in the e2e namespace (``tasks delete --force`` kills a running task)."""
        for task in self.ctr("tasks", "list", "--quiet", check=False, timeout=20).stdout.split():
            self.ctr("tasks", "delete", "--force", task, check=False, timeout=30)
        for container in self.ctr("containers", "list", "--quiet", check=False, timeout=20).stdout.split():
            self.ctr("containers", "delete", container, check=False, timeout=30)

    def leftover_processes(self) -> list[tuple[int, str]]:
        """Processes (not this one) whose command line names the stack's folder: shims, sandboxes, gofers."""
        marker = str(self.root).encode()
        mine = sandboxes.ancestors()
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) in mine:
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmdline = f.read()
            except OSError:
                continue
            if marker in cmdline:
                found.append((int(entry), cmdline.replace(b"\0", b" ").decode(errors="replace").strip()))
        return found

    def mounts(self) -> list[str]:
        """Mount points under root, deepest first."""
        prefix = str(self.root).rstrip("/") + "/"
        points = []
        with open("/proc/self/mountinfo") as f:
            for line in f:
                point = line.split()[4].replace("\\040", " ")
                if point.startswith(prefix) or point == str(self.root):
                    points.append(point)
        return sorted(set(points), key=len, reverse=True)

    # --- persistence (for `stack.py up/down`) ----------------------------------------

    def _save(self) -> None:
        state = {"tools": asdict(self.tools), "runsc_cuda": self.runsc_cuda, "pids": self.pids}  # for load()
        (self.root / "stack.json").write_text(json.dumps(state, indent=2))

    @classmethod
    def load(cls, root: Path) -> Stack:
        state = json.loads((root / "stack.json").read_text())
        return cls(root, Tools(**state["tools"]), state["runsc_cuda"], state["pids"])


def shim_socket(argv: list[str]) -> Path | None:
    """The socket a containerd 1.6 shim listens on (it removes it itself unless it is killed).

    ``/run/containerd/s/<sha256 of "<containerd address>/<namespace>/<id>">``.
    """
    if not argv or "containerd-shim" not in argv[0]:
        return None
    values = {argv[i]: argv[i + 1] for i in range(1, len(argv) - 1) if argv[i].startswith("-")}
    try:
        key = f"{values['-address']}/{values['-namespace']}/{values['-id']}"
    except KeyError:
        return None
    return Path("/run/containerd/s") / hashlib.sha256(key.encode()).hexdigest()


def write_exec(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def terminate(pid: int, timeout: float) -> bool:
    """SIGTERM, wait, then SIGKILL. True when SIGTERM was enough."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        if not pid_alive(pid):
            return True
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
    return False


def busybox_rootfs(busybox: str) -> bytes:
    """A root filesystem tar: static busybox, its applets as symlinks, /etc/passwd."""
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, timeout=10, check=True).stdout.split()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:

        def add(name: str, kind: bytes, mode: int, data: bytes = b"", link: str = "") -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.size, info.linkname, info.mtime = kind, mode, len(data), link, 0
            tar.addfile(info, io.BytesIO(data) if data else None)

        for folder, mode in (("bin", 0o755), ("dev", 0o755), ("etc", 0o755), ("proc", 0o555), ("sys", 0o555),
                             ("root", 0o700), ("tmp", 0o1777)):  # fmt: skip
            add(folder, tarfile.DIRTYPE, mode)
        with open(busybox, "rb") as f:
            add("bin/busybox", tarfile.REGTYPE, 0o755, f.read())
        for applet in sorted(set(applets) - {"busybox"}):
            add(f"bin/{applet}", tarfile.SYMTYPE, 0o777, link="busybox")
        passwd = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n"
        add("etc/passwd", tarfile.REGTYPE, 0o644, passwd)
        add("etc/group", tarfile.REGTYPE, 0o644, b"root:x:0:\nnogroup:x:65534:\n")
    return buf.getvalue()


def runsc_cuda_program() -> str:
    """The runsc-cuda console script of the interpreter running the tests (the project's venv)."""
    candidate = Path(sys.executable).with_name("runsc-cuda")
    if not os.access(candidate, os.X_OK):
        raise Unavailable(f"{candidate} does not exist: install the project into this venv (pip install -e '.[dev]')")
    return str(candidate)


def unavailable_reason_from_install() -> str | None:
    """What scripts/ci-install.sh could not install on this machine, if it said so."""
    path = REPO / ".cache" / "e2e-unavailable"
    with contextlib.suppress(OSError):
        lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if lines:
            return "; ".join(lines)
    return None


def check_machine() -> None:
    """Unavailable unless this process can run the stack at all."""
    reason = unavailable_reason_from_install()
    if reason:
        raise Unavailable(f"scripts/ci-install.sh: {reason}")
    if os.geteuid() != 0:
        raise Unavailable("needs root (dockerd, containerd and runsc run as root)")


@contextlib.contextmanager
def running(root: Path) -> Iterator[Stack]:
    """A started stack, stopped at the end whatever happens."""
    check_machine()
    runsc = build_runsc()
    tools = Tools.find(runsc)
    stack = Stack(root, tools, runsc_cuda_program())
    try:
        stack.start()
        yield stack
    finally:
        STOP_NOTES.extend(stack.stop())


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in ("up", "down"):
        print(__doc__, file=sys.stderr)
        return 2
    root = Path(argv[2]).resolve()
    if argv[1] == "up":
        check_machine()
        stack = Stack(root, Tools.find(build_runsc()), runsc_cuda_program())
        try:
            stack.start()
        except Unavailable as e:
            print(f"unavailable: {e}", file=sys.stderr)
            stack.stop()
            return 1
        print(f"export DOCKER_HOST=unix://{stack.docker_sock} DOCKER_CONFIG={stack.root / 'docker-config'}")
        print(f"alias ctr='{stack.tools.ctr} --address {stack.containerd_sock} --namespace {CTR_NAMESPACE}'")
        return 0
    for note in Stack.load(root).stop():
        print(note)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
