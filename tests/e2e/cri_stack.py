"""A private Kubernetes node without the kubelet: containerd 2.x's CRI plugin, crictl, runsc-cuda, runsc.

crictl makes the kubelet's CRI calls (RunPodSandbox, CreateContainer,
StartContainer, CheckpointContainer, StopPodSandbox, RemovePodSandbox) against a
containerd 2.x (built by scripts/build-k8s-tools.sh) that runs with its own
root, state, sockets and TMPDIR under one temporary folder, and its runc.v2
shim (the one built with it, first on containerd's PATH) runs runsc-cuda as its
runc through ``BinaryName``, as packaging/containerd/config-v3.toml says.
runsc's --root (the runc.v2 option ``Root``) and runsc-cuda's state_dir are in
the folder too, so two stacks are two nodes.

Pods use the host network (no CNI). The images are built offline from
busybox-static and imported with ``ctr images import --local``: a pause image
(a shell that waits for a signal) and an app image (busybox). GPUs are
simulated as in the Docker e2e: nvproxy off by config, a fake cuda-checkpoint
mounted into GPU-flagged containers (annotation ``dev.runsc-cuda.gpu``); this
fake (a shell script run inside the sandbox) reports every process whose
command line holds ``FAKE_CUDA_APP`` as a CUDA process and keeps its state in
the container's /tmp/.fake-cuda, and runsc-cuda uses its exec engine (runsc's
native engine only finds processes that hold nvproxy device files).

``CriStack.stop`` always cleans up: the pods through CRI, then containerd,
then whatever runsc still has under its root (``runsc kill``, ``delete
--force``), leftover shims, sandboxes, gofers and stdio holders (by PID), and
mounts under the folder.

By hand (as root)::

    python -m tests.e2e.cri_stack up /tmp/rck      # prints how to talk to it
    python -m tests.e2e.cri_stack down /tmp/rck
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
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .stack import (
    REPO,
    Result,
    Unavailable,
    build_runsc,
    busybox_rootfs,
    file_tail,
    is_static,
    pid_alive,
    run,
    runsc_cuda_program,
    sandboxes,
    tail,
    terminate,
    wait_for,
    write_exec,
)

BUILD_K8S_TOOLS = REPO / "scripts" / "build-k8s-tools.sh"
K8S_UNAVAILABLE = REPO / ".cache" / "k8s-unavailable"
NAMESPACE = "k8s.io"  # the CRI plugin's containerd namespace
HANDLER = "runsc-cuda"
PAUSE_IMAGE = "localhost/runsc-cuda-e2e/pause:1"
APP_IMAGE = "localhost/runsc-cuda-e2e/busybox:1"
# The pod's first container: waits for a signal (busybox sleep alone ignores SIGTERM as PID 1).
PAUSE_COMMAND = ["/bin/sh", "-c", "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait; done"]
CONTAINER_TYPE = "io.kubernetes.cri.container-type"
GPU_ANNOTATION = "dev.runsc-cuda.gpu"
CUDA_CHECKPOINT = "/usr/local/bin/cuda-checkpoint"
# A stand-in for cuda-checkpoint, run inside the sandbox (busybox sh): processes whose command
# line holds FAKE_CUDA_APP are CUDA processes; their states live in the container's /tmp.
FAKE_CUDA_CHECKPOINT = r"""#!/bin/sh
# fake cuda-checkpoint (runsc-cuda e2e): FAKE_CUDA_APP processes are CUDA processes.
dir=/tmp/.fake-cuda
mkdir -p $dir
echo "$*" >> $dir/calls
pid=""; action=""; query=""
while [ $# -gt 0 ]; do
    case "$1" in
    --help) echo "usage: cuda-checkpoint --toggle --get-state --action lock|checkpoint|restore|unlock --pid"
            exit 0;;
    --pid) pid=$2; shift;;
    --action) action=$2; shift;;
    --get-state) query=get;;
    --toggle) action=toggle;;
    esac
    shift
done
if [ -z "$pid" ] || ! tr '\0' ' ' < /proc/$pid/cmdline 2>/dev/null | grep -q FAKE_CUDA_APP; then
    echo "error: $pid is not a CUDA process" >&2; exit 1
fi
state=$(cat $dir/$pid 2>/dev/null || echo running)
if [ "$query" = get ]; then echo $state; exit 0; fi
case "$action/$state" in
lock/running) echo locked > $dir/$pid;;
checkpoint/locked) echo checkpointed > $dir/$pid;;
restore/checkpointed) echo locked > $dir/$pid;;
unlock/locked) echo running > $dir/$pid;;
toggle/running) echo checkpointed > $dir/$pid;;
toggle/checkpointed) echo running > $dir/$pid;;
*) echo "error: cannot $action a $state process" >&2; exit 1;;
esac
"""
# Counts into /tmp/count and onto stdout; a CUDA process for the fake above.
COUNTER = 'FAKE_CUDA_APP=1; i=0; while :; do i=$((i+1)); echo $i > /tmp/count; echo "count $i"; sleep 0.2; done'
START_TIMEOUT = 60.0
CALL_TIMEOUT = 90.0
STOP_NOTES: list[str] = []


@dataclass(frozen=True)
class CriTools:
    containerd: str
    shim: str  # containerd-shim-runc-v2 of the same release
    ctr: str
    crictl: str
    runsc: str
    busybox: str
    criu: str

    @staticmethod
    def find(runsc: str) -> CriTools:
        built = build_k8s_tools()
        path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin", "/sbin", "/bin"])
        busybox = shutil.which("busybox", path=path)
        if busybox is None or not is_static(busybox):
            raise Unavailable("no static /bin/busybox (Debian: busybox-static)")
        criu = shutil.which("criu", path=path)
        if criu is None:
            raise Unavailable("no criu on PATH (Debian: criu): containerd refuses CRI checkpoints without it")
        return CriTools(
            containerd=built["containerd"],
            shim=built["containerd-shim-runc-v2"],
            ctr=built["ctr"],
            crictl=built["crictl"],
            runsc=runsc,
            busybox=busybox,
            criu=criu,
        )


def build_k8s_tools(
    *args: str,
    names: frozenset[str] = frozenset({"containerd", "containerd-shim-runc-v2", "ctr", "crictl"}),
    unavailable: Path = K8S_UNAVAILABLE,
    timeout: float = 1800,
) -> dict[str, str]:
    """containerd 2.x, its shim, ctr and crictl, or with ``kubelet`` the kubelet
    (scripts/build-k8s-tools.sh, cached in .cache/k8s-tools)."""
    with contextlib.suppress(OSError):
        reason = unavailable.read_text().strip()
        if reason:
            raise Unavailable(f"scripts/ci-install.sh: {'; '.join(reason.splitlines())}")
    try:
        done = subprocess.run(
            ["bash", str(BUILD_K8S_TOOLS), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise Unavailable(f"scripts/build-k8s-tools.sh did not finish in {timeout:.0f}s") from None
    if done.returncode != 0:
        raise Unavailable(f"scripts/build-k8s-tools.sh failed (exit {done.returncode}): {tail(done.stderr, 1500)}")
    tools = dict(line.split("\t", 1) for line in done.stdout.splitlines() if "\t" in line)
    missing = names - set(tools)
    if missing:
        raise Unavailable(f"scripts/build-k8s-tools.sh did not name {', '.join(sorted(missing))}")
    return tools


# --- offline OCI images -------------------------------------------------------------------


def _blob(blobs: dict[str, bytes], data: bytes) -> dict[str, Any]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blobs[digest] = data
    return {"digest": digest, "size": len(data)}


def oci_archive(busybox: str, images: dict[str, dict[str, Any]]) -> bytes:
    """An OCI image layout tar holding one image per name (one shared busybox layer), for `ctr images import`."""
    blobs: dict[str, bytes] = {}
    layer_tar = busybox_rootfs(busybox)
    layer = {"mediaType": "application/vnd.oci.image.layer.v1.tar", **_blob(blobs, layer_tar)}
    diff_id = layer["digest"]  # uncompressed: the layer's digest is its diff id
    manifests = []
    for name, process in images.items():
        config = {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Env": ["PATH=/bin"], "WorkingDir": "/", **process},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }
        config_desc = {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            **_blob(blobs, json.dumps(config, sort_keys=True).encode()),
        }
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config_desc,
            "layers": [layer],
        }
        manifests.append(
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                **_blob(blobs, json.dumps(manifest, sort_keys=True).encode()),
                "platform": {"architecture": "amd64", "os": "linux"},
                "annotations": {
                    "io.containerd.image.name": name,
                    "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1],
                },
            }
        )
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:

        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))

        add("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        add("index.json", json.dumps(index).encode())
        for digest, data in sorted(blobs.items()):
            add(f"blobs/sha256/{digest.split(':', 1)[1]}", data)
    return buf.getvalue()


# --- the stack ----------------------------------------------------------------------------


@dataclass
class Pod:
    id: str
    name: str
    config: Path  # the pod sandbox config crictl was given (CreateContainer needs it again)
    log_dir: Path


@dataclass
class CriStack:
    """containerd 2.x with its CRI plugin under ``root``; ``runsc-cuda`` is the runtime handler."""

    root: Path
    tools: CriTools
    runsc_cuda: str  # the runsc-cuda program (the venv's console script)
    pids: dict[str, int] = field(default_factory=dict)
    # Record every runtime call (tests/e2e/recorder.py) in recorded_calls: caller->runsc-cuda and
    # runsc-cuda->runsc, as the Docker stack does for its runsc-rec runtime.
    record: bool = False
    pods: dict[str, Pod] = field(default_factory=dict)
    # containerd's runtime for pods that name none. A kubelet without an API server cannot look up
    # RuntimeClasses, so its pods run under the default (tests/e2e/kubelet_node.py makes it runsc-cuda).
    default_runtime: str | None = None
    # More restore roots for runsc-cuda than ``checkpoints`` (the kubelet's <root-dir>/checkpoints).
    more_restore_roots: tuple[str, ...] = ()
    # More lines for runsc-cuda's config file (TOML: ``key = value``).
    more_settings: tuple[str, ...] = ()
    # runsc-cuda's detailed log (runsc_cuda_log, debug level); off: the shipped default, no log file.
    detail_log: bool = True

    # --- layout ---------------------------------------------------------------------------

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    @property
    def sock(self) -> Path:
        return self.root / "containerd.sock"

    @property
    def containerd_state(self) -> Path:
        return self.root / "state"

    @property
    def runsc_root(self) -> Path:
        """runsc's --root for the pods (the runc.v2 option Root, plus the namespace)."""
        return self.root / "runsc" / NAMESPACE

    @property
    def runsc_cuda_config(self) -> Path:
        return self.root / "runsc-cuda.toml"

    @property
    def runsc_cuda_log(self) -> Path:
        return self.root / "runsc-cuda.log"

    @property
    def state_dir(self) -> Path:
        return self.root / "rc-state"

    @property
    def checkpoints(self) -> Path:
        """The node's restore root (runsc-cuda's restore_roots): archives restore-from may name."""
        return self.root / "checkpoints"

    @property
    def fake_cuda_checkpoint(self) -> Path:
        return self.bin / "cuda-checkpoint"

    @property
    def recorded_calls(self) -> Path:
        return self.root / "recorded-calls.jsonl"

    def bundle(self, container_id: str) -> Path:
        """Where the runc.v2 shim keeps a container's bundle."""
        return self.containerd_state / "io.containerd.runtime.v2.task" / NAMESPACE / container_id

    # --- talking to it --------------------------------------------------------------------

    def crictl(self, *args: str, timeout: float = CALL_TIMEOUT, check: bool = True) -> Result:
        endpoint = f"unix://{self.sock}"
        argv = [self.tools.crictl, "--config", str(self.root / "crictl.yaml"),
                "--runtime-endpoint", endpoint, "--image-endpoint", endpoint,
                "--timeout", f"{int(timeout)}s", *args]  # fmt: skip
        result = run(argv, timeout + 10)
        return result.check() if check else result

    def ctr(self, *args: str, timeout: float = 60, check: bool = True) -> Result:
        argv = [self.tools.ctr, "--address", str(self.sock), "--namespace", NAMESPACE, *args]
        result = run(argv, timeout)
        return result.check() if check else result

    def runsc(self, *args: str, timeout: float = 30) -> Result:
        """The real runsc on the pods' containers."""
        return run([self.tools.runsc, "--root", str(self.runsc_root), *args], timeout)

    def runsc_cuda_records(self) -> list[dict[str, Any]]:
        if not self.runsc_cuda_log.exists():
            return []
        out = []
        for line in self.runsc_cuda_log.read_text().splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def run_pod(self, name: str, annotations: dict[str, str] | None = None, handler: str = HANDLER) -> Pod:
        """RunPodSandbox: a host-network pod under ``handler``."""
        uid = f"{name}-{os.urandom(4).hex()}"
        log_dir = self.root / "logs" / uid
        log_dir.mkdir(parents=True)
        config = {
            "metadata": {"name": name, "namespace": "default", "uid": uid, "attempt": 0},
            "hostname": name,
            "log_directory": str(log_dir),
            "annotations": annotations or {},
            "linux": {"security_context": {"namespace_options": {"network": 2}}},  # NODE: host network
        }
        path = self.root / "pods" / f"{uid}.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(config, indent=2))
        pod_id = self.crictl("runp", "--runtime", handler, str(path)).stdout.strip()
        pod = Pod(pod_id, name, path, log_dir)
        self.pods[pod_id] = pod
        return pod

    def create(
        self,
        pod: Pod,
        name: str,
        command: Sequence[str],
        annotations: dict[str, str] | None = None,
        image: str = APP_IMAGE,
    ) -> str:
        """CreateContainer: ``command`` in the app image, logging to <pod log dir>/<name>.log."""
        config = {
            "metadata": {"name": name, "attempt": 0},
            "image": {"image": image},
            "command": list(command),
            "log_path": f"{name}.log",
            "annotations": annotations or {},
            "linux": {},
        }
        path = self.root / "pods" / f"{pod.id[:12]}-{name}.json"
        path.write_text(json.dumps(config, indent=2))
        return self.crictl("create", pod.id, str(path), str(pod.config)).stdout.strip()

    def start_container(self, container_id: str) -> Result:
        return self.crictl("start", container_id)

    def run_container(
        self, pod: Pod, name: str, command: Sequence[str], annotations: dict[str, str] | None = None
    ) -> str:
        cid = self.create(pod, name, command, annotations)
        self.start_container(cid)
        return cid

    def exec(self, container_id: str, *command: str, timeout: float = 60, check: bool = False) -> Result:
        return self.crictl("exec", container_id, *command, timeout=timeout, check=check)

    def logs(self, container_id: str) -> str:
        result = self.crictl("logs", container_id, timeout=30)
        return result.stdout + result.stderr

    def inspect(self, container_id: str) -> dict[str, Any]:
        return dict(json.loads(self.crictl("inspect", container_id, timeout=30).stdout))

    def container_state(self, container_id: str) -> str:
        """CONTAINER_RUNNING, CONTAINER_EXITED, ..."""
        return str(self.inspect(container_id)["status"]["state"])

    def count(self, container_id: str) -> int:
        result = self.exec(container_id, "cat", "/tmp/count", timeout=30)
        text = result.stdout.strip()
        return int(text) if result.returncode == 0 and text.isdigit() else 0

    def remove_pod(self, pod: Pod) -> None:
        """StopPodSandbox, then RemovePodSandbox. containerd marks a sandbox whose process ended by itself
        (a restoring pod ended by runsc-cuda) not ready when it handles the exit event, which can come
        just after StopPodSandbox returned: RemovePodSandbox then says "is running, please stop it first",
        and is tried again, as the kubelet's garbage collection would."""
        self.crictl("stopp", pod.id, timeout=120)
        for _ in range(10):
            result = self.crictl("rmp", pod.id, timeout=120, check=False)
            if result.returncode == 0 or "please stop it first" not in result.stderr:
                break
            time.sleep(0.5)
            self.crictl("stopp", pod.id, timeout=120)
        result.check()
        self.pods.pop(pod.id, None)

    # --- start ----------------------------------------------------------------------------

    def start(self) -> None:
        """Write the files, start containerd, import the images. Unavailable on failure."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._write_files()
        self._save()
        self._start_containerd()
        self._import_images()

    def _write_files(self) -> None:
        for folder in (self.bin, self.root / "tmp", self.root / "pods", self.runsc_root.parent, self.checkpoints):
            folder.mkdir(parents=True, exist_ok=True)
        write_exec(self.fake_cuda_checkpoint, FAKE_CUDA_CHECKPOINT)
        runsc = self.tools.runsc
        if self.record:
            runsc = str(self.write_recorder("rec-runsc", "runsc-cuda->runsc", self.tools.runsc))
        self.runsc_cuda_config.write_text(
            "\n".join(
                [
                    f"runsc = {json.dumps(runsc)}",
                    f"cuda_checkpoint = {json.dumps(str(self.fake_cuda_checkpoint))}",
                    "nvproxy = false",
                    'engine = "exec"',
                    *(
                        [f"log_file = {json.dumps(str(self.runsc_cuda_log))}", 'log_level = "debug"']
                        if self.detail_log
                        else []
                    ),
                    f"state_dir = {json.dumps(str(self.state_dir))}",
                    f"restore_roots = {json.dumps([str(self.checkpoints), *self.more_restore_roots])}",
                    *self.more_settings,
                    "",
                ]
            )
        )
        self.use_program(self.runsc_cuda)
        binary = self.bin / "runsc-cuda"
        if self.record:
            binary = self.write_recorder("rec-runsc-cuda", "caller->runsc-cuda", str(binary))
        (self.root / "containerd.toml").write_text(containerd_config(self, binary))
        (self.root / "crictl.yaml").write_text(
            f"runtime-endpoint: unix://{self.sock}\nimage-endpoint: unix://{self.sock}\n"
        )

    def use_program(self, program: str) -> None:
        """bin/runsc-cuda, what containerd runs, runs ``program`` (with the node's config) from now on."""
        self.runsc_cuda = program
        tmp = self.bin / ".runsc-cuda.tmp"
        write_exec(
            tmp,
            f"#!/bin/sh\nRUNSC_CUDA_CONFIG={shlex.quote(str(self.runsc_cuda_config))}\nexport RUNSC_CUDA_CONFIG\n"
            f'exec {shlex.quote(program)} "$@"\n',
        )
        tmp.rename(self.bin / "runsc-cuda")

    def write_recorder(self, name: str, tag: str, program: str) -> Path:
        recorder = Path(__file__).with_name("recorder.py")
        path = self.bin / name
        write_exec(
            path,
            f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -S {shlex.quote(str(recorder))} "
            f'{shlex.quote(str(self.recorded_calls))} {shlex.quote(tag)} {shlex.quote(program)} "$@"\n',
        )
        return path

    def containerd_env(self) -> dict[str, str]:
        # Not XDG_RUNTIME_DIR (it would hold checkpoint images), nor the caller's RUNSC_CUDA_* settings
        # (runsc-cuda's come from its config file, which bin/runsc-cuda names).
        env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR" and not k.startswith("RUNSC_CUDA_")}
        # The shim built with this containerd first (the host may have Debian's 1.6 one), then criu.
        shim_dir = str(Path(self.tools.shim).parent)
        criu_dir = str(Path(self.tools.criu).parent)
        env["PATH"] = os.pathsep.join([shim_dir, criu_dir, "/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin",
                                       "/sbin", "/bin"])  # fmt: skip
        env["TMPDIR"] = str(self.root / "tmp")
        return env

    def _start_containerd(self) -> None:
        log = open(self.root / "containerd.log", "ab")  # noqa: SIM115 - the daemon owns it
        try:
            proc = subprocess.Popen(
                [self.tools.containerd, "--config", str(self.root / "containerd.toml")],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=self.containerd_env(),
            )
        finally:
            log.close()
        self.pids["containerd"] = proc.pid
        self._save()

        def up() -> bool:
            if proc.poll() is not None:
                raise Unavailable(
                    f"containerd exited with status {proc.returncode} while starting; "
                    f"its log ends: {file_tail(self.root / 'containerd.log')}"
                )
            return self.sock.exists() and self.crictl("version", check=False, timeout=10).returncode == 0

        try:
            wait_for("containerd", up, START_TIMEOUT, 0.3)
        except TimeoutError:
            raise Unavailable(
                f"containerd did not come up in {START_TIMEOUT:.0f}s; its log ends: "
                f"{file_tail(self.root / 'containerd.log')}"
            ) from None

    def _import_images(self) -> None:
        archive = self.root / "images.tar"
        archive.write_bytes(
            oci_archive(self.tools.busybox, {PAUSE_IMAGE: {"Entrypoint": PAUSE_COMMAND}, APP_IMAGE: {"Cmd": ["sh"]}})
        )
        result = self.ctr(
            "images", "import", "--local", "--snapshotter", "overlayfs", str(archive), timeout=120, check=False
        )
        if result.returncode != 0:
            raise Unavailable(f"cannot import the offline images: {result.describe()}")
        listed = self.crictl("images", "--quiet", check=False, timeout=30)
        names = self.crictl("images", check=False, timeout=30).stdout
        if listed.returncode != 0 or "runsc-cuda-e2e/pause" not in names or "runsc-cuda-e2e/busybox" not in names:
            raise Unavailable(f"the CRI plugin does not see the imported images: {names} {listed.describe()}")

    # --- stop -----------------------------------------------------------------------------

    def stop(self) -> list[str]:
        """Remove every pod, stop containerd, leave no sandbox, process or mount behind, remove root."""
        notes: list[str] = []
        containerd = self.pids.get("containerd")
        if containerd and pid_alive(containerd):
            with contextlib.suppress(AssertionError):
                for pod_id in self.crictl("pods", "--quiet", check=False, timeout=30).stdout.split():
                    for verb in ("stopp", "rmp"):
                        result = self.crictl(verb, pod_id, check=False, timeout=60)
                        if result.returncode != 0:
                            notes.append(f"crictl {verb} {pod_id[:12]} failed: {tail(result.stderr, 300)}")
            if not terminate(containerd, 30):
                notes.append(f"containerd ({containerd}) needed SIGKILL")
        if self.runsc_root.is_dir():
            with contextlib.suppress(AssertionError):
                for cid in self.runsc("list", "--quiet", timeout=30).stdout.split():
                    notes.append(f"runsc container {cid[:12]} was left: killed and deleted")
                    self.runsc("kill", cid, "KILL", timeout=30)
                    self.runsc("delete", "--force", cid, timeout=60)
        for pid, cmdline in self.leftover_processes():
            notes.append(f"killed leftover process {pid}: {cmdline[:200]}")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
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

    def leftover_processes(self) -> list[tuple[int, str]]:
        """Processes (not this one) whose command line names the folder: shims, sandboxes, gofers, holders."""
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
        prefix = str(self.root).rstrip("/") + "/"
        points = []
        with open("/proc/self/mountinfo") as f:
            for line in f:
                point = line.split()[4].replace("\\040", " ")
                if point.startswith(prefix) or point == str(self.root):
                    points.append(point)
        return sorted(set(points), key=len, reverse=True)

    def _save(self) -> None:
        state = {"tools": asdict(self.tools), "runsc_cuda": self.runsc_cuda, "pids": self.pids}
        (self.root / "stack.json").write_text(json.dumps(state, indent=2))

    @classmethod
    def load(cls, root: Path) -> CriStack:
        state = json.loads((root / "stack.json").read_text())
        return cls(root, CriTools(**state["tools"]), state["runsc_cuda"], state["pids"])


def containerd_config(stack: CriStack, binary: Path) -> str:
    """containerd 2.x, config version 3: the shipped runtime entry (packaging/containerd/config-v3.toml)
    with a private runsc --root, plus what a private test node needs."""
    q = json.dumps
    runtime = '[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runsc-cuda]'
    return "\n".join(
        [
            "version = 3",
            f"root = {q(str(stack.root / 'root'))}",
            f"state = {q(str(stack.containerd_state))}",
            f"temp = {q(str(stack.root / 'tmp'))}",
            "imports = []",
            "[grpc]",
            f"  address = {q(str(stack.sock))}",
            "[ttrpc]",
            f"  address = {q(str(stack.sock) + '.ttrpc')}",
            "[debug]",
            '  level = "info"',
            '[plugins."io.containerd.cri.v1.images"]',
            '  snapshotter = "overlayfs"',
            '[plugins."io.containerd.cri.v1.images".pinned_images]',
            f"  sandbox = {q(PAUSE_IMAGE)}",
            '[plugins."io.containerd.cri.v1.runtime"]',
            # runsc refuses the pause container's oom_score_adj of -998 otherwise.
            "  restrict_oom_score_adj = true",
            "  enable_cdi = false",
            *(
                ['[plugins."io.containerd.cri.v1.runtime".containerd]', f"  default_runtime_name = {q(default)}"]
                if (default := stack.default_runtime)
                else []
            ),
            '[plugins."io.containerd.cri.v1.runtime".cni]',
            f"  bin_dirs = [{q(str(stack.root / 'cni-bin'))}]",
            f"  conf_dir = {q(str(stack.root / 'cni-conf'))}",
            runtime,
            '  runtime_type = "io.containerd.runc.v2"',
            '  pod_annotations = ["dev.runsc-cuda.*"]',
            '  container_annotations = ["dev.runsc-cuda.*"]',
            runtime[:-1] + ".options]",
            f"  BinaryName = {q(str(binary))}",
            f"  Root = {q(str(stack.runsc_root.parent))}",
            '[plugins."io.containerd.grpc.v1.cri"]',
            '  stream_server_address = "127.0.0.1"',
            '  stream_server_port = "0"',
            # The "opt" plugin's folder, else containerd makes /opt/containerd/{bin,lib} on the host.
            '[plugins."io.containerd.internal.v1.opt"]',
            f"  path = {q(str(stack.root / 'opt'))}",
            "",
        ]
    )


# --- what the Kubernetes tests share ------------------------------------------------------------

SIDECAR = ["sh", "-c", "echo sidecar up; trap 'echo sidecar bye; exit 0' TERM; while :; do sleep 1; done"]
START_LIMIT_S = 15.0  # StartContainer hung for ever before runsc-cuda held create's stdio


def gpu_pod(cri: CriStack, pods: list[Pod], name: str) -> tuple[Pod, str, str]:
    """pause + app (GPU-flagged, counting) + sidecar (plain), all started; each start timed."""
    pod = cri.run_pod(name)
    pods.append(pod)
    app = cri.create(pod, "app", ["sh", "-c", COUNTER], {GPU_ANNOTATION: "true"})
    sidecar = cri.create(pod, "sidecar", SIDECAR)
    for cid in (app, sidecar):
        started = time.monotonic()
        cri.start_container(cid)
        assert time.monotonic() - started < START_LIMIT_S
    wait_for("the app to count", lambda: cri.count(app) >= 3, 30)
    return pod, app, sidecar


def check_machine() -> None:
    if os.geteuid() != 0:
        raise Unavailable("needs root (containerd and runsc run as root)")


@contextlib.contextmanager
def running(root: Path, record: bool = False, program: str | None = None, **options: Any) -> Iterator[CriStack]:
    """A started CRI stack (``options``: CriStack's fields), stopped at the end whatever happens. ``program``:
    the runsc-cuda it runs (default: the venv's console script)."""
    check_machine()
    tools = CriTools.find(build_runsc())
    stack = CriStack(root, tools, program or runsc_cuda_program(), record=record, **options)
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
        stack = CriStack(root, CriTools.find(build_runsc()), runsc_cuda_program())
        try:
            stack.start()
        except Unavailable as e:
            print(f"unavailable: {e}", file=sys.stderr)
            stack.stop()
            return 1
        print(f"alias crictl='{stack.tools.crictl} --config {root / 'crictl.yaml'}'")
        print(f"alias ctr='{stack.tools.ctr} --address {stack.sock} --namespace {NAMESPACE}'")
        print(f"alias runsc='{stack.tools.runsc} --root {stack.runsc_root}'")
        return 0
    for note in CriStack.load(root).stop():
        print(note)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
