"""A standalone kubelet (static pods, no API server) on a private containerd 2.x CRI node.

The kubelet is built from k8s.io/kubernetes (scripts/build-k8s-tools.sh kubelet)
and runs against the node's containerd (tests/e2e/cri_stack.py) with everything
under the node's folder: its --root-dir (pods, checkpoints), its pod logs,
certificates and manifests.  Pods are static pods: JSON manifests in
``manifests/``, named ``<name>-<node>`` by the kubelet.  Without an API server
the kubelet looks up no RuntimeClass, so its pods run under containerd's
default runtime, which this node makes ``runsc-cuda``.

The kubelet's server (anonymous, AlwaysAllow: a private test node on
127.0.0.1) serves the checkpoint API, ``POST /checkpoint/{ns}/{pod}/{container}``,
which makes CRI CheckpointContainer and writes the archive to
``<root-dir>/checkpoints``, one of runsc-cuda's restore roots here.

The kubelet writes a few fixed host paths of its own (/var/lib/kubelet/device-plugins,
/var/log/containers): it runs in a mount namespace of its own (unshare) with
tmpfs over /var/lib and /var/log, so the host keeps none of them.  It runs on
this machine's cgroup v1 with ``failCgroupV1: false``, no QoS cgroups and no
node-allocatable enforcement.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .cri_stack import HANDLER, CriStack, build_k8s_tools, running
from .stack import REPO, Unavailable, file_tail, pid_alive, terminate, wait_for

KUBELET_UNAVAILABLE = REPO / ".cache" / "kubelet-unavailable"
NODE = "rcu-node"
START_TIMEOUT = 60.0
# How long a restoring pod waits for a missing container here: the kubelet creates a pod's containers
# one after the other within seconds (its images are present).
POD_RESTORE_WAIT_S = 15
# Hides the kubelet's fixed host paths from the host: a mount namespace of its own, tmpfs over them.
PRIVATE_PATHS = ("/var/lib", "/var/log")


def build_kubelet() -> str:
    return build_k8s_tools("kubelet", names=frozenset({"kubelet"}), unavailable=KUBELET_UNAVAILABLE)["kubelet"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class KubeletNode:
    cri: CriStack
    kubelet: str
    port: int
    pid: int = 0

    @property
    def folder(self) -> Path:
        return self.cri.root / "kubelet"

    @property
    def manifests(self) -> Path:
        return self.folder / "manifests"

    @property
    def root_dir(self) -> Path:
        return self.folder / "root"

    @property
    def checkpoints(self) -> Path:
        """Where the kubelet's checkpoint API writes its archives (a restore root of this node)."""
        return self.root_dir / "checkpoints"

    @property
    def log(self) -> Path:
        return self.folder / "kubelet.log"

    # --- start and stop -------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        return {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "staticPodPath": str(self.manifests),
            "fileCheckFrequency": "1s",
            "syncFrequency": "5s",
            "containerRuntimeEndpoint": f"unix://{self.cri.sock}",
            "imageServiceEndpoint": f"unix://{self.cri.sock}",
            "cgroupDriver": "cgroupfs",
            "cgroupsPerQOS": False,
            "enforceNodeAllocatable": [],
            "failSwapOn": False,
            "failCgroupV1": False,
            "address": "127.0.0.1",
            "port": self.port,
            "readOnlyPort": 0,
            "healthzPort": 0,
            "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
            "authorization": {"mode": "AlwaysAllow"},
            "podLogsDir": str(self.folder / "pod-logs"),
            "volumePluginDir": str(self.folder / "volume-plugins"),
            # Never remove the offline images, never evict on this shared machine's disk or memory.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {k: "0%" for k in ("memory.available", "nodefs.available", "imagefs.available")},
            "resolvConf": "",
        }

    def start(self) -> None:
        for folder in (self.manifests, self.root_dir, self.checkpoints, self.folder / "certs"):
            folder.mkdir(parents=True, exist_ok=True)
        self.checkpoints.chmod(0o700)
        config = self.folder / "config.json"
        config.write_text(json.dumps(self.config(), indent=2))
        mounts = " && ".join(f"mount -t tmpfs -o size=64m,mode=755 kubelet-private {p}" for p in PRIVATE_PATHS)
        argv = [
            "unshare", "--mount", "--propagation", "private", "sh", "-c", f'{mounts} && exec "$0" "$@"',
            self.kubelet, "--config", str(config), "--root-dir", str(self.root_dir),
            "--cert-dir", str(self.folder / "certs"), "--hostname-override", NODE, "--v=2",
        ]  # fmt: skip
        with open(self.log, "ab") as log:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.pid = proc.pid

        def up() -> bool:
            if proc.poll() is not None:
                raise Unavailable(f"the kubelet exited with {proc.returncode}; its log ends: {file_tail(self.log)}")
            status, body = self.request("GET", "/healthz")
            return status == 200 and body.strip() == "ok"

        try:
            wait_for("the kubelet", up, START_TIMEOUT, 0.5)
        except TimeoutError:
            raise Unavailable(f"the kubelet did not come up in {START_TIMEOUT:.0f}s: {file_tail(self.log)}") from None

    def stop(self) -> None:
        """Remove the static pods (the kubelet stops them), then stop the kubelet."""
        names = [p.stem for p in self.manifests.glob("*.json")]
        for name in names:
            self.remove_pod(name, check=False)
        if self.pid and pid_alive(self.pid) and not terminate(self.pid, 30):
            print(f"the kubelet ({self.pid}) needed SIGKILL")

    # --- talking to it --------------------------------------------------------------------

    def request(self, method: str, path: str, timeout: float = 300) -> tuple[int, str]:
        """An HTTPS call to the kubelet's server (its own self-signed certificate): (status, body)."""
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        request = urllib.request.Request(f"https://127.0.0.1:{self.port}{path}", method=method)
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
                return int(response.status), response.read().decode(errors="replace")
        except urllib.error.HTTPError as e:
            return int(e.code), e.read().decode(errors="replace")
        except (urllib.error.URLError, OSError) as e:
            return 0, str(e)

    def checkpoint(self, pod: str, container: str, namespace: str = "default") -> tuple[int, str]:
        """The kubelet's checkpoint API for static pod ``pod`` (its manifest name)."""
        return self.request("POST", f"/checkpoint/{namespace}/{pod}-{NODE}/{container}")

    def add_pod(self, manifest: dict[str, Any]) -> None:
        name = manifest["metadata"]["name"]
        path = self.manifests / f"{name}.json"
        # Written beside the folder, then moved in: the kubelet reads every file of it, whatever its name,
        # and a pod first seen as NAME.tmp would be removed and made again under its final name.
        temporary = self.folder / f"{name}.json.tmp"
        temporary.write_text(json.dumps(manifest, indent=2))
        temporary.rename(path)

    def remove_pod(self, name: str, check: bool = True) -> None:
        """Delete the manifest; the kubelet stops the pod (waited for). Its stopped sandbox is then
        removed as the kubelet's garbage collection would (it runs once a minute)."""
        (self.manifests / f"{name}.json").unlink(missing_ok=True)
        try:
            wait_for(f"the kubelet to stop {name}", lambda: not self.pod_ids(name, ready=True), 120, 0.5)
        except TimeoutError:
            if check:
                raise
        for pod_id in self.pod_ids(name):
            self.cri.crictl("rmp", pod_id, check=check, timeout=120)

    def pod_ids(self, name: str, ready: bool = False) -> list[str]:
        args = ["pods", "--quiet", "--name", f"^{name}-{NODE}$"] + (["--state", "ready"] if ready else [])
        return self.cri.crictl(*args, check=False, timeout=30).stdout.split()

    def running_container(self, pod: str, container: str, timeout: float = 90) -> str:
        """The running container ``container`` of static pod ``pod``, once the kubelet started it."""
        found: list[str] = []

        def started() -> bool:
            ids = self.pod_ids(pod, ready=True)
            if len(ids) != 1:
                return False
            listed = self.cri.crictl(
                "ps", "--quiet", "--pod", ids[0], "--name", f"^{container}$", "--state", "running", check=False
            )
            found[:] = listed.stdout.split()
            return len(found) == 1

        wait_for(f"the kubelet to run {pod}/{container}", started, timeout, 0.5)
        return found[0]


@contextlib.contextmanager
def kubelet_node(root: Path) -> Iterator[KubeletNode]:
    """A CRI node whose default runtime is runsc-cuda, with a kubelet on it; all stopped at the end."""
    kubelet = build_kubelet()
    if shutil.which("unshare") is None:
        raise Unavailable("no unshare (Debian: util-linux): the kubelet runs in a mount namespace of its own")
    checkpoints = root / "kubelet" / "root" / "checkpoints"
    settings = (f"pod_restore_wait_s = {POD_RESTORE_WAIT_S}",)
    with running(root, default_runtime=HANDLER, more_restore_roots=(str(checkpoints),), more_settings=settings) as cri:
        node = KubeletNode(cri, kubelet, free_port())
        try:
            node.start()
            yield node
        finally:
            node.stop()
