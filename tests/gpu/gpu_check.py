#!/usr/bin/env python3
"""Real-GPU check: runsc-cuda checkpoint/restore of a PyTorch process under gVisor with nvproxy.

Run as root on a Linux machine with an NVIDIA GPU and a runsc binary:

    python3 tests/gpu/gpu_check.py --runsc /path/to/runsc [--gib 4] [--out DIR]

It creates a container through runsc-cuda (its root file system shows this
machine's system folders read-only, so the container has the same Python and
PyTorch; /dev/nvidia* as linux.devices, which makes it a GPU container), in
which tests/gpu/app.py holds GIB of random data on the GPU and counts. Then,
for each engine (exec, native):
  checkpoint --leave-running: the process keeps counting and its tensor is intact;
then checkpoint (the container stops) and restore from the image into a new
container: the counter resumes from where it was saved and the tensor is intact.
It prints per-phase times and GiB/s and writes them to OUT/gpu-results.json.

Without a GPU it exits 0 after printing why it skipped (``SKIP: ...``);
``--cpu-smoke`` runs the same plumbing with a CPU-only app (GIB of random host
memory, default 0.25) and a cuda-checkpoint that knows no CUDA process, to
check everything but the GPU part anywhere.

``--tuning`` compares checkpoint/restore image options instead (docs/image-options.md):
for each of "runsc's defaults" (runsc-cuda with ``tuning = "off"``: runsc's
default image flags, CUDA still frozen by runsc-cuda) and "runsc-cuda's
defaults" (``tuning = "gpu"``), a fresh container is started, asked for its
stats once (as docker stats and the kubelet do), checkpointed (it stops) and
restored into a new container after the page cache is dropped (``--warm``: not
dropped), and it reports: checkpoint time, image size, restore call time,
restore until the app runs again (it writes a heartbeat before each GPU pass),
and restore until the tensor is read back intact on the GPU.  With ``--gib 4``
it is meant to finish within 5 minutes.

It leaves the machine as it found it: every sandbox under its runsc --root is
removed at the end, also when a step fails or the check is interrupted
(SIGINT, SIGTERM, SIGHUP; after a SIGKILL the next run removes what the last one
left under --work), and no mount point is ever created in a host folder (see
``rootfs``).  Anything that appears in the system folders meanwhile is an error.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO / "scripts"))

import sandboxes  # noqa: E402 - scripts/sandboxes.py: remove sandboxes, watch the system folders

DEADLINE_S = 6.5 * 60
TUNING_DEADLINE_S = 4.5 * 60
TUNING_VARIANTS = (
    ("runsc defaults", {"RUNSC_CUDA_TUNING": "off"}),
    ("runsc-cuda defaults", {"RUNSC_CUDA_TUNING": "gpu"}),
)
# Where runsc-cuda bind-mounts the host's cuda-checkpoint in a GPU container (runsc_cuda's CUDA_CHECKPOINT_DEST).
# runsc creates a bind mount's mount point before it makes any mount read-only: inside a bound host folder it
# would create it in the host's folder (an empty executable /usr/local/bin/cuda-checkpoint).
RUNSC_CUDA_MOUNT_POINTS = ("/usr/local/bin/cuda-checkpoint",)
HOST_FOLDERS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32", "usr", "etc", "opt", "root")
CUDA_CHECKPOINT_PLACES = (
    "/usr/bin/cuda-checkpoint",
    "/usr/local/bin/cuda-checkpoint",
    "/usr/local/cuda/bin/cuda-checkpoint",
    "/usr/local/nvidia/bin/cuda-checkpoint",
)


class Check:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.start = time.monotonic()
        self.work = Path(args.work)
        self.out = Path(args.out)
        self.results: dict[str, Any] = {"gib": args.gib, "phases": {}, "checks": {}, "errors": []}
        self.log_lines: list[str] = []
        self.binds: list[str] = []  # host paths shown read-only at the same place in the container
        self.host_before = sandboxes.snapshot()

    # --- plumbing ---------------------------------------------------------------------

    def say(self, text: str) -> None:
        line = f"[{time.monotonic() - self.start:7.1f}s] {text}"
        print(line, flush=True)
        self.log_lines.append(line)

    def left(self) -> float:
        limit = TUNING_DEADLINE_S if self.args.tuning else DEADLINE_S
        return limit - (time.monotonic() - self.start)

    def shim(
        self,
        *args: str,
        engine: str,
        timeout: float = 300,
        check: bool = True,
        env_extra: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ)
        env.update(
            PYTHONPATH=os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p),
            RUNSC_CUDA_CONFIG=str(self.work / "config.toml"),
            RUNSC_CUDA_ENGINE=engine,
            **(env_extra or {}),
        )
        cmd = [sys.executable, "-m", "runsc_cuda", *self.global_flags(), *args]
        started = time.monotonic()
        # Files, not pipes: runsc create/restore leave the sandbox running with our stdio.
        with tempfile.TemporaryFile("w+") as so, tempfile.TemporaryFile("w+") as se:
            code = subprocess.run(cmd, env=env, stdout=so, stderr=se, timeout=timeout, check=False).returncode
            so.seek(0)
            se.seek(0)
            out = subprocess.CompletedProcess(cmd, code, so.read(), se.read())
        self.say(f"runsc-cuda {' '.join(args[:1])} ({engine}) -> {out.returncode} in {time.monotonic() - started:.2f}s")
        if out.returncode != 0:
            self.say(f"  stderr: {out.stderr.strip()[-2000:]}")
            if check:
                raise RuntimeError(f"runsc-cuda {' '.join(args)} failed: {out.stderr.strip()[-500:]}")
        return out

    def global_flags(self) -> list[str]:
        flags = [
            "--root",
            str(self.work / "runsc-root"),
            "--network=none",
            "--overlay2=root:memory",
            "--log",
            str(self.work / "log.json"),
            "--log-format",
            "json",
            "--debug-log",
            str(self.work / "runsc-debug") + "/",
        ]
        if self.args.cpu_smoke:
            flags.append("--nvproxy=false")
        return flags

    def status(self, cid: str = "") -> dict[str, Any]:
        """The app's last status (one app, carried from container to container by restore)."""
        try:
            return dict(json.loads((self.work / "app" / "status.json").read_text()))
        except (OSError, ValueError):
            return {}

    def wait_counter(self, cid: str, above: int, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: dict[str, Any] = {}
        checked = time.monotonic()
        while time.monotonic() < deadline:
            last = self.status(cid)
            if last.get("counter", -1) > above:
                return last
            if time.monotonic() - checked > 2:
                checked = time.monotonic()
                state = subprocess.run(
                    [self.args.runsc, "--root", str(self.work / "runsc-root"), "state", cid],
                    capture_output=True,
                    text=True,
                    check=False,
                ).stdout
                if '"stopped"' in state or not state:
                    break
            time.sleep(0.1)
        app_out = self.read(str(self.work / "app" / "app.out"))[-1500:]
        raise RuntimeError(f"{cid}: counter did not pass {above} (last status {last}); app output: {app_out}")

    # --- setup ---------------------------------------------------------------------------

    def find_cuda_checkpoint(self) -> str | None:
        if self.args.cuda_checkpoint:
            return self.args.cuda_checkpoint
        for place in CUDA_CHECKPOINT_PLACES:
            if os.path.exists(place):
                return place
        return shutil.which("cuda-checkpoint")

    def devices(self) -> list[dict[str, Any]]:
        out = []
        for name in sorted(os.listdir("/dev")):
            if not name.startswith("nvidia"):
                continue
            path = f"/dev/{name}"
            st = os.stat(path)
            if stat.S_ISCHR(st.st_mode):
                out.append(
                    {
                        "path": path,
                        "type": "c",
                        "major": os.major(st.st_rdev),
                        "minor": os.minor(st.st_rdev),
                        "fileMode": 0o666,
                        "uid": 0,
                        "gid": 0,
                    }
                )
        return out

    def bundle(self, cid: str) -> Path:
        """A bundle whose app writes to work/app/status.json (the same folder across restores)."""
        folder = self.work / "bundles" / cid
        folder.mkdir(parents=True, exist_ok=True)
        (self.work / "app").mkdir(exist_ok=True)
        app = [sys.executable, "/gpucheck/app.py", str(self.args.gib), "/gpuwork/status.json"]
        if self.args.cpu_smoke:
            app.append("--cpu")
        args = ["/bin/sh", "-c", 'exec "$@" >>/gpuwork/app.out 2>&1', "sh", *app]
        env = [
            f"PATH={os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME=/root",
            "PYTHONUNBUFFERED=1",
            "NVIDIA_VISIBLE_DEVICES=all",
            "NVIDIA_DRIVER_CAPABILITIES=compute,utility",
        ]
        if os.environ.get("LD_LIBRARY_PATH"):
            env.append(f"LD_LIBRARY_PATH={os.environ['LD_LIBRARY_PATH']}")
        spec = {
            "ociVersion": "1.0.2",
            "process": {
                "terminal": False,
                "user": {"uid": 0, "gid": 0},
                "args": args,
                "env": env,
                "cwd": "/",
                "capabilities": {
                    k: ["CAP_SYS_ADMIN", "CAP_SYS_PTRACE", "CAP_KILL"] for k in ("bounding", "effective", "permitted")
                },
                "noNewPrivileges": True,
            },
            "root": {"path": str(self.rootfs()), "readonly": False},
            "hostname": cid,
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]},
                {
                    "destination": "/sys",
                    "type": "sysfs",
                    "source": "sysfs",
                    "options": ["nosuid", "noexec", "nodev", "ro"],
                },
                {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev"]},
                *({"destination": d, "type": "bind", "source": d, "options": ["rbind", "ro"]} for d in self.binds),
                *self.own_mounts(),
            ],
            "linux": {
                "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount")],
                "devices": [] if self.args.cpu_smoke else self.devices(),
            },
        }
        if self.args.cpu_smoke:
            spec["annotations"] = {"dev.runsc-cuda.gpu": "true"}
        (folder / "config.json").write_text(json.dumps(spec))
        return folder

    def own_mounts(self) -> list[dict[str, Any]]:
        """The check's own bind mounts (their mount points are in the root folder, which is ours)."""
        return [
            {"destination": "/gpucheck", "type": "bind", "source": str(HERE), "options": ["rbind", "ro"]},
            {"destination": "/gpuwork", "type": "bind", "source": str(self.work / "app"), "options": ["rbind", "rw"]},
        ]

    def mount_points(self) -> list[str]:
        """Every place something is mounted in the container besides the host's folders."""
        own = [str(m["destination"]) for m in self.own_mounts()]
        return ["/proc", "/dev", "/sys", "/tmp", *own, *RUNSC_CUDA_MOUNT_POINTS]

    def rootfs(self) -> Path:
        """A root folder of our own that shows this machine's system folders read-only (a root of "/"
        itself makes gVisor's gofer serve every bind mount read-only).

        runsc creates the mount point of each bind mount before it makes any mount read-only, so no
        mount point may lie inside a bound host folder: a host folder that holds one (/usr, for
        runsc-cuda's /usr/local/bin/cuda-checkpoint) is rebuilt here as a folder of our own, down to
        the mount point, whose entries are bound one by one (symbolic links copied)."""
        root = self.work / "rootfs"
        if root.exists():
            return root
        self.binds = []
        points = self.mount_points()
        shown: list[str] = []
        for name in HOST_FOLDERS:
            shown.append("/" + name)
        extras = sorted({os.path.realpath(sys.prefix), os.path.realpath(sys.base_prefix), str(REPO)})
        for extra in extras:  # the interpreter and runsc_cuda, where they are not in a system folder already
            if not any(extra == d or extra.startswith(d + "/") for d in shown):
                parent = root / os.path.dirname(extra).lstrip("/")
                parent.mkdir(parents=True, exist_ok=True)
                shown.append(extra)
        for path in shown:
            self.show(root, path, points)
        for point in points:
            if not any(point == b or point.startswith(b + "/") for b in self.binds):
                (root / os.path.dirname(point).lstrip("/")).mkdir(parents=True, exist_ok=True)
        for name in ("proc", "dev", "sys", "tmp", "gpucheck", "gpuwork"):
            (root / name).mkdir(parents=True, exist_ok=True)
        return root

    def show(self, root: Path, path: str, points: list[str]) -> None:
        """Show the host's ``path`` at the same place under ``root``: bound read-only, or (when a mount
        point lies inside it) as a folder of ours whose entries are shown one by one."""
        if any(point == path for point in points):
            return  # mounted over: nothing of the host's to show
        mine = root / path.lstrip("/")
        holds_a_point = any(point.startswith(path.rstrip("/") + "/") for point in points)
        if os.path.islink(path) and not holds_a_point:
            mine.parent.mkdir(parents=True, exist_ok=True)
            mine.symlink_to(os.readlink(path))
        elif os.path.isdir(path) and holds_a_point:  # a symbolic link too: the mount point must not go through it
            mine.mkdir(parents=True, exist_ok=True)
            mine.chmod(stat.S_IMODE(os.stat(path).st_mode))
            for name in sorted(os.listdir(path)):
                self.show(root, os.path.join(path, name), points)
        elif os.path.isdir(path):
            mine.mkdir(parents=True, exist_ok=True)
            self.binds.append(path)
        elif os.path.isfile(path):  # sockets, FIFOs and devices are left out
            mine.parent.mkdir(parents=True, exist_ok=True)
            mine.touch()
            self.binds.append(path)

    def check_mount_points(self, bundle: Path) -> None:
        inside = self.host_folders_with_mount_points(bundle)
        if inside:  # runsc-cuda mounts something new: add it to RUNSC_CUDA_MOUNT_POINTS
            raise RuntimeError(f"mount points inside bound host folders (runsc creates them there): {inside}")

    def host_folders_with_mount_points(self, bundle: Path) -> list[str]:
        """Mount points of the final config.json (runsc-cuda's mounts included) inside a bound host folder."""
        try:
            mounts = json.loads((bundle / "config.json").read_text()).get("mounts", [])
        except (OSError, ValueError):
            return []
        out = []
        for mount in mounts:
            dest = os.path.normpath("/" + str(mount.get("destination", "")).lstrip("/"))
            out += [f"{dest} (in the host's {b})" for b in self.binds if dest.startswith(b.rstrip("/") + "/")]
        return out

    def write_config(self, cuda_checkpoint: str) -> None:
        (self.work / "config.toml").write_text(
            f'runsc = "{self.args.runsc}"\n'
            f'cuda_checkpoint = "{cuda_checkpoint}"\n'
            f"nvproxy = {'false' if self.args.cpu_smoke else 'true'}\n"
            f'log_file = "{self.work / "runsc-cuda.log"}"\n'
            'log_level = "debug"\n'
            f'state_dir = "{self.work / "state"}"\n'
            "lock_timeout_ms = 60000\n"
            "trust_cuda_checkpoint = true\n"
        )

    # --- the run --------------------------------------------------------------------------

    def sidecar(self, image: Path) -> dict[str, Any]:
        try:
            return dict(json.loads((image / "runsc-cuda.json").read_text()))
        except (OSError, ValueError):
            return {}

    def image_bytes(self, image: Path) -> int:
        return sum(p.stat().st_size for p in image.rglob("*") if p.is_file())

    def record(self, name: str, wall: float, image: Path | None = None) -> None:
        entry: dict[str, Any] = {"wall_s": round(wall, 3)}
        if image is not None:
            side = self.sidecar(image)
            entry["timings"] = side.get("timings", {})
            entry["image_bytes"] = self.image_bytes(image)
            entry["cuda_processes"] = side.get("cuda_processes", [])
            gib = self.args.gib
            for phase in ("checkpoint", "restore", "save", "toggle"):
                seconds = entry["timings"].get(phase)
                if seconds:
                    entry[f"{phase}_gib_per_s"] = round(gib / seconds, 2)
            if entry["timings"].get("save"):
                entry["save_image_gib_per_s"] = round(entry["image_bytes"] / (1 << 30) / entry["timings"]["save"], 2)
        self.results["phases"][name] = entry

    def verify(self, name: str, cid: str, before: int, timeout: float = 60) -> None:
        status = self.wait_counter(cid, before, timeout)
        ok = bool(status.get("checksum_ok"))
        self.results["checks"][name] = {"counter_before": before, "counter_after": status["counter"], "checksum_ok": ok}
        self.say(f"{name}: counter {before} -> {status['counter']}, tensor intact: {ok}")
        if not ok:
            raise RuntimeError(f"{name}: the tensor changed: {status}")

    def leave_running(self, cid: str, engine: str) -> None:
        image = self.work / f"image-{engine}-leave"
        before = self.status(cid).get("counter", 0)
        t0 = time.monotonic()
        self.shim("checkpoint", "--image-path", str(image), "--leave-running", cid, engine=engine)
        self.record(f"{engine}: checkpoint --leave-running", time.monotonic() - t0, image)
        self.verify(f"{engine}: keeps running after checkpoint --leave-running", cid, before)
        shutil.rmtree(image, ignore_errors=True)

    def stop_and_restore(self, cid: str, engine: str, new_cid: str) -> str:
        image = self.work / f"image-{engine}-stop"
        t0 = time.monotonic()
        self.shim("checkpoint", "--image-path", str(image), cid, engine=engine)
        self.record(f"{engine}: checkpoint (stop)", time.monotonic() - t0, image)
        saved = self.status(cid).get("counter", 0)
        self.shim("delete", "--force", cid, engine=engine, check=False)
        bundle = self.bundle(new_cid)
        t0 = time.monotonic()
        self.shim(
            "restore",
            "--image-path",
            str(image),
            "--bundle",
            str(bundle),
            "--detach",
            new_cid,
            engine=engine,
            timeout=600,
        )
        self.record(f"{engine}: restore into a new container", time.monotonic() - t0, None)
        self.results["phases"][f"{engine}: restore into a new container"]["image_bytes"] = self.image_bytes(image)
        self.verify(f"{engine}: resumes after restore", new_cid, saved)
        shutil.rmtree(image, ignore_errors=True)
        return new_cid

    def run(self) -> int:
        self.work.mkdir(parents=True, exist_ok=True)
        self.out.mkdir(parents=True, exist_ok=True)
        if not self.args.cpu_smoke:
            if os.geteuid() != 0:
                return self.skip("not root")
            if not shutil.which("nvidia-smi") and not os.path.exists("/proc/driver/nvidia/version"):
                return self.skip("no NVIDIA GPU on this machine (no nvidia-smi, no /proc/driver/nvidia)")
            if not self.devices():
                return self.skip("no /dev/nvidia* device nodes")
        cuda_checkpoint = self.find_cuda_checkpoint() if not self.args.cpu_smoke else str(self.fake_no_cuda())
        if cuda_checkpoint is None:
            return self.skip("no cuda-checkpoint binary (pass --cuda-checkpoint)")
        self.results["cuda_checkpoint"] = cuda_checkpoint
        self.results["driver"] = self.read("/proc/driver/nvidia/version").splitlines()[:1]
        self.results["runsc_version"] = subprocess.run(
            [self.args.runsc, "--version"], capture_output=True, text=True, check=False
        ).stdout.strip()
        self.write_config(cuda_checkpoint)
        self.say(f"cuda-checkpoint {cuda_checkpoint}; {self.results['runsc_version'].splitlines()[:1]}")
        if self.args.tuning:
            try:
                self.tuning_run()
            finally:
                self.cleanup()
                self.save()
            self.tuning_table()
            return 1 if self.results["errors"] else 0
        try:
            cid = "gpu-a"
            bundle = self.bundle(cid)
            t0 = time.monotonic()
            self.shim("create", "--bundle", str(bundle), cid, engine="exec")
            self.check_mount_points(bundle)
            self.shim("start", cid, engine="exec")
            self.wait_counter(cid, 0, 240)
            self.results["phases"]["start until the app counts"] = {"wall_s": round(time.monotonic() - t0, 3)}
            for engine in self.args.engines.split(","):
                if self.left() < 60:
                    self.results["errors"].append(f"out of time before {engine} --leave-running")
                    break
                try:
                    self.leave_running(cid, engine)
                except Exception as e:  # keep going: every figure counts
                    self.results["errors"].append(f"{engine} leave-running: {e}")
                    self.say(f"ERROR {engine} leave-running: {e}")
            for n, engine in enumerate(self.args.engines.split(","), start=1):
                if self.left() < 120:
                    self.results["errors"].append(f"out of time before {engine} stop/restore")
                    break
                try:
                    cid = self.stop_and_restore(cid, engine, f"gpu-{chr(ord('a') + n)}")
                except Exception as e:
                    self.results["errors"].append(f"{engine} stop/restore: {e}")
                    self.say(f"ERROR {engine} stop/restore: {e}")
                    break
        finally:
            self.cleanup()
            self.save()
        self.table()
        return 1 if self.results["errors"] else 0

    # --- --tuning ---------------------------------------------------------------------------

    def alive(self) -> int:
        try:
            return int((self.work / "app" / "status.json.alive").read_text().strip() or 0)
        except (OSError, ValueError):
            return 0

    def drop_caches(self) -> bool:
        os.sync()
        try:
            Path("/proc/sys/vm/drop_caches").write_text("3\n")
        except OSError:
            return False
        return True

    def tuning_run(self) -> None:
        engine = "auto"
        for n, (name, env) in enumerate(TUNING_VARIANTS):
            if self.left() < 90:
                self.results["errors"].append(f"out of time before {name}")
                break
            try:
                self.tuning_variant(n, name, env, engine)
            except Exception as e:  # keep going: the other variant still counts
                self.results["errors"].append(f"{name}: {e}")
                self.say(f"ERROR {name}: {e}")

    def tuning_variant(self, n: int, name: str, env: dict[str, str], engine: str) -> None:
        app = self.work / "app"
        for stale in ("status.json", "status.json.alive"):
            (app / stale).unlink(missing_ok=True)
        cid, new_cid = f"tune{n}-a", f"tune{n}-b"
        bundle = self.bundle(cid)
        t0 = time.monotonic()
        self.shim("create", "--bundle", str(bundle), cid, engine=engine, env_extra=env)
        self.check_mount_points(bundle)
        self.shim("start", cid, engine=engine, env_extra=env)
        self.wait_counter(cid, 0, 240)
        started = time.monotonic() - t0
        root = str(self.work / "runsc-root")
        subprocess.run([self.args.runsc, "--root", root, "events", "--stats", cid], capture_output=True, check=False)
        image = self.work / f"image-tune{n}"
        t0 = time.monotonic()
        self.shim("checkpoint", "--image-path", str(image), cid, engine=engine, env_extra=env)
        ckpt_s = time.monotonic() - t0
        side = self.sidecar(image)
        saved, saved_alive = self.status(cid).get("counter", 0), self.alive()
        self.shim("delete", "--force", cid, engine=engine, check=False, env_extra=env)
        cold = not self.args.warm and self.drop_caches()
        new_bundle = self.bundle(new_cid)
        t0 = time.monotonic()
        self.shim(
            "restore", "--image-path", str(image), "--bundle", str(new_bundle), "--detach", new_cid,
            engine=engine, timeout=600, env_extra=env,
        )  # fmt: skip
        restore_s = time.monotonic() - t0
        running_s = intact_s = None
        deadline = t0 + 240
        while time.monotonic() < deadline and (running_s is None or intact_s is None):
            if running_s is None and self.alive() > saved_alive:
                running_s = time.monotonic() - t0
            status = self.status(new_cid)
            if intact_s is None and status.get("counter", 0) > saved:
                if not status.get("checksum_ok"):
                    raise RuntimeError(f"{name}: the tensor changed across checkpoint/restore: {status}")
                intact_s = time.monotonic() - t0
                running_s = running_s if running_s is not None else intact_s
            time.sleep(0.01)
        if running_s is None or intact_s is None:
            raise RuntimeError(f"{name}: the app did not resume within 240s (running {running_s}, intact {intact_s})")
        entry = {
            "start_s": round(started, 3),
            "checkpoint_s": round(ckpt_s, 3),
            "image_bytes": self.image_bytes(image),
            "restore_call_s": round(restore_s, 3),
            "restore_until_running_s": round(running_s, 3),
            "restore_until_tensor_intact_s": round(intact_s, 3),
            "cache": "cold" if cold else "warm",
            "engine": side.get("engine"),
            "tuning": side.get("tuning", {}),
            "timings": side.get("timings", {}),
        }
        self.results["phases"][name] = entry
        self.say(
            f"{name}: checkpoint {ckpt_s:.2f}s, image {entry['image_bytes'] / (1 << 30):.2f} GiB, restore call "
            f"{restore_s:.2f}s, running after {running_s:.2f}s, tensor intact after {intact_s:.2f}s ({entry['cache']})"
        )
        self.shim("kill", new_cid, "KILL", engine=engine, check=False, env_extra=env)
        self.shim("delete", "--force", new_cid, engine=engine, check=False, env_extra=env)
        shutil.rmtree(image, ignore_errors=True)

    def tuning_table(self) -> None:
        print(
            f"\n{'variant':<22} {'ckpt s':>7} {'image GiB':>9} {'restore s':>9} {'running s':>9} {'intact s':>8}  cache"
        )
        for name, p in self.results["phases"].items():
            print(
                f"{name:<22} {p['checkpoint_s']:>7.2f} {p['image_bytes'] / (1 << 30):>9.2f} "
                f"{p['restore_call_s']:>9.2f} {p['restore_until_running_s']:>9.2f} "
                f"{p['restore_until_tensor_intact_s']:>8.2f}  {p['cache']}"
            )
        base, tuned = (self.results["phases"].get(name) for name, _ in TUNING_VARIANTS)
        if base and tuned:
            for key in ("restore_until_running_s", "restore_until_tensor_intact_s"):
                print(f"{key}: {base[key] / max(tuned[key], 1e-6):.2f}x faster with runsc-cuda's defaults")
        for error in self.results["errors"]:
            print(f"ERROR: {error}")
        print(f"elapsed {self.results['elapsed_s']}s")

    def fake_no_cuda(self) -> Path:
        path = self.work / "cuda-checkpoint-none"
        path.write_text(
            "#!/bin/sh\n[ \"$1\" = --help ] && { echo '--get-state --action --toggle'; exit 0; }\n"
            "echo 'no CUDA here' >&2; exit 3\n"
        )
        path.chmod(0o755)
        return path

    def read(self, path: str) -> str:
        try:
            return Path(path).read_text()
        except OSError:
            return ""

    def skip(self, why: str) -> int:
        print(f"SKIP: {why}")
        self.results["skipped"] = why
        self.save()
        return 0

    def cleanup(self) -> None:
        """Remove every sandbox under the runsc root (kill, delete --force, leftover processes, mounts),
        then say what appeared in the system folders meanwhile (an error: the check must not change the host)."""
        for note in sandboxes.remove_sandboxes(self.args.runsc, self.work / "runsc-root", [self.work]):
            self.say(f"cleanup: {note}")
        changed = sandboxes.appeared(self.host_before)
        if changed:
            self.results["host_changes"] = changed
            self.results["errors"].append(f"appeared in the host's system folders during the check: {changed}")
            self.say(f"ERROR: appeared in the host's system folders: {changed}")

    def save(self) -> None:
        self.results["elapsed_s"] = round(time.monotonic() - self.start, 1)
        (self.out / "gpu-results.json").write_text(json.dumps(self.results, indent=2))
        (self.out / "gpu-check.log").write_text("\n".join(self.log_lines) + "\n")
        for name in ("runsc-cuda.log", "log.json", "app/app.out"):
            src = self.work / name
            if src.exists():
                shutil.copy(src, self.out / Path(name).name)
        tails = []
        debug = self.work / "runsc-debug"
        if debug.is_dir():
            for path in sorted(debug.iterdir()):
                lines = path.read_text(errors="replace").splitlines()
                tails.append(f"==> {path.name} ({len(lines)} lines)")
                tails.extend(line[:400] for line in lines[-60:] if not line.startswith(("\t", "goroutine", " ")))
        (self.out / "runsc-debug-tails.txt").write_text("\n".join(tails) + "\n")

    def table(self) -> None:
        print(
            f"\n{'phase':<42} {'wall s':>7} {'freeze s':>8} {'save s':>7} {'thaw s':>7} {'image GiB':>9} "
            f"{'GPU GiB/s':>9}"
        )
        for name, p in self.results["phases"].items():
            t = p.get("timings", {})
            freeze = t.get("lock", 0) + t.get("checkpoint", 0) + (t.get("toggle", 0) if "leave" not in name else 0)
            thaw = t.get("restore", 0) + t.get("unlock", 0)
            gibs = p.get("checkpoint_gib_per_s", "")
            print(
                f"{name:<42} {p['wall_s']:>7.2f} {freeze:>8.2f} {t.get('save', 0):>7.2f} {thaw:>7.2f} "
                f"{p.get('image_bytes', 0) / (1 << 30):>9.2f} {gibs!s:>9}"
            )
        for name, c in self.results["checks"].items():
            print(f"check: {name}: {c}")
        for error in self.results["errors"]:
            print(f"ERROR: {error}")
        print(f"elapsed {self.results['elapsed_s']}s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runsc", required=True)
    parser.add_argument("--cuda-checkpoint")
    parser.add_argument("--gib", type=float, default=None, help="GiB on the GPU (default 4; --cpu-smoke: 0.25)")
    parser.add_argument("--engines", default="exec,native")
    parser.add_argument("--work", default="/tmp/runsc-cuda-gpu")
    parser.add_argument("--out", default=os.environ.get("OUT", "/tmp/runsc-cuda-gpu-out"))
    parser.add_argument("--cpu-smoke", action="store_true")
    parser.add_argument("--tuning", action="store_true", help="compare runsc's and runsc-cuda's image options")
    parser.add_argument("--warm", action="store_true", help="--tuning: keep the page cache before restore")
    args = parser.parse_args()
    if args.gib is None:
        args.gib = 0.25 if args.cpu_smoke else 4.0
    sandboxes.interrupt_on_termination()  # SIGTERM/SIGHUP: the clean-up in Check.run still runs
    # A run that was killed (SIGKILL) left its sandboxes under --work: they may hold the GPU.
    for note in sandboxes.remove_sandboxes(args.runsc, Path(args.work) / "runsc-root", [args.work]):
        print(f"left by an earlier run: {note}", flush=True)
    shutil.rmtree(args.work, ignore_errors=True)
    return Check(args).run()


if __name__ == "__main__":
    sys.exit(main())
