"""A bundle's config.json: reading it, deciding whether it asks for GPUs, patching it, saving it.

The decisions (``gpu_request``, ``patch``) are pure functions of the parsed
document; reading and the atomic write are the only I/O.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import stat
from dataclasses import dataclass
from typing import Any

from runsc_cuda import files, layout, words
from runsc_cuda.errors import ShimError
from runsc_cuda.logs import Note
from runsc_cuda.oci import schema

# runsc compares mount options on restore: these never change.
CUDA_CHECKPOINT_OPTIONS = ("rbind", "ro", "nosuid", "nodev")
GPU_OVERRIDE = "dev.runsc-cuda.gpu"
GVISOR_NVPROXY = "dev.gvisor.internal.nvproxy"
NVIDIA_ENV = "NVIDIA_VISIBLE_DEVICES"
# A config.json is tens of KiB; one past this is refused rather than read into memory.
MAX_BYTES = 16 << 20


@dataclass(frozen=True)
class Bundle:
    """A config.json as read from disk."""

    path: str  # the config.json file
    raw: bytes
    doc: dict[str, Any]
    mode: int
    uid: int
    gid: int


def bundle_dir(value: str | None, cwd: str) -> str:
    """The bundle folder named by ``--bundle`` (runc's default: the current directory)."""
    return os.path.join(cwd, value) if value else cwd


def read(bundle: str) -> Bundle:
    """Load and validate ``<bundle>/config.json``."""
    if not os.path.isdir(bundle):
        raise ShimError(f"bundle {bundle}: no such directory")
    path = os.path.join(bundle, "config.json")
    try:
        raw, st = files.read_regular(path, MAX_BYTES)
    except FileNotFoundError:
        raise ShimError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ShimError(f"{path}: is a directory") from None
    except OSError as e:
        raise ShimError(f"{path}: cannot read: {e.strerror}") from None
    try:
        doc = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ShimError(f"{path}: not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise ShimError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except RecursionError:
        raise ShimError(f"{path}: JSON nested too deeply") from None
    schema.validate(doc, "config.json")
    return Bundle(path, raw, doc, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)


# --- GPU detection ---------------------------------------------------------------


@dataclass(frozen=True)
class GpuRequest:
    wanted: bool
    reason: str


def _env_value(env: list[str] | None, name: str) -> str | None:
    """The last ``name=value`` in an env list (the one a process would see)."""
    found = None
    prefix = name + "="
    for item in env or []:
        if item.startswith(prefix):
            found = item[len(prefix) :]
    return found


def _basename(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def _cdi_names_nvidia(value: str) -> bool:
    """A CDI annotation value (``vendor/class=name,...``) names an NVIDIA device."""
    for device in value.split(","):
        kind = device.strip().partition("=")[0]
        vendor = kind.partition("/")[0]
        if vendor == "nvidia.com" or vendor.endswith(".nvidia.com"):
            return True
    return False


def gpu_request(doc: dict[str, Any]) -> GpuRequest:
    """Whether a (validated) spec asks for GPUs, and why."""
    annotations = doc.get("annotations") or {}
    override = annotations.get(GPU_OVERRIDE)
    if override is not None:
        wanted = words.parse_bool(override)
        if wanted is None:
            raise ShimError(f'config.json: annotations["{GPU_OVERRIDE}"]: expected "true" or "false", got {override!r}')
        return GpuRequest(wanted, f"annotation {GPU_OVERRIDE}={str(wanted).lower()}")
    for device in (doc.get("linux") or {}).get("devices") or []:
        if device["path"].startswith("/dev/nvidia"):
            return GpuRequest(True, f"linux.devices has {device['path']}")
    hooks = doc.get("hooks") or {}
    for hook in hooks.get("createContainer") or []:
        if _basename(hook["path"]) == "nvidia-cdi-hook":
            return GpuRequest(True, f"createContainer hook {hook['path']}")
    env = (doc.get("process") or {}).get("env")
    visible = _env_value(env, NVIDIA_ENV)
    for hook in hooks.get("prestart") or []:
        legacy = _basename(hook["path"]) == "nvidia-container-runtime-hook"
        if legacy and visible and visible.strip().lower() not in ("void", "none"):
            return GpuRequest(True, f"prestart hook {hook['path']} with {NVIDIA_ENV}={visible}")
    for key, value in annotations.items():
        if key.startswith("cdi.k8s.io/") and _cdi_names_nvidia(value):
            return GpuRequest(True, f"CDI annotation {key}={value}")
    if annotations.get(GVISOR_NVPROXY, "").strip().lower() == "true":
        return GpuRequest(True, f"annotation {GVISOR_NVPROXY}=true")
    if visible is not None:
        return GpuRequest(False, f"{NVIDIA_ENV} alone is not a GPU request")
    return GpuRequest(False, "no GPU devices, hooks or annotations")


# --- patching --------------------------------------------------------------------


def cuda_checkpoint_mount(host_path: str) -> dict[str, Any]:
    return {
        "destination": layout.CONTAINER_CUDA_CHECKPOINT,
        "type": "bind",
        "source": host_path,
        "options": list(CUDA_CHECKPOINT_OPTIONS),
    }


def is_our_mount(mount: dict[str, Any]) -> bool:
    """A mount runsc-cuda wrote (or an identical one): same destination, type and options."""
    return (
        mount.get("destination") == layout.CONTAINER_CUDA_CHECKPOINT
        and mount.get("type") == "bind"
        and sorted(mount.get("options") or []) == sorted(CUDA_CHECKPOINT_OPTIONS)
    )


def container_path(destination: str) -> str:
    """Where a mount destination lands in the container: relative ones are taken from the root
    (as runc does), ``..`` stops at the root, and repeated or trailing slashes do not count."""
    return posixpath.normpath("/" + destination.lstrip("/"))


def mount_at(doc: dict[str, Any], destination: str) -> dict[str, Any] | None:
    """The last mount that lands on ``destination`` (however its path is spelled), or None."""
    found = None
    for mount in doc.get("mounts") or []:
        if container_path(mount["destination"]) == destination:
            found = dict(mount)
    return found


@dataclass(frozen=True)
class Patch:
    """The result of patching: the new document (None when nothing changes) and notes."""

    doc: dict[str, Any] | None
    notes: tuple[Note, ...]


def patch(doc: dict[str, Any], host_cuda_checkpoint: str | None) -> Patch:
    """Add the cuda-checkpoint bind mount to a GPU spec; idempotent."""
    existing = mount_at(doc, layout.CONTAINER_CUDA_CHECKPOINT)
    if existing is not None:
        if is_our_mount(existing):
            return Patch(
                None,
                (
                    Note(
                        "debug", f"{layout.CONTAINER_CUDA_CHECKPOINT} is already mounted from {existing.get('source')}"
                    ),
                ),
            )
        return Patch(
            None,
            (
                Note(
                    "warning",
                    f"the bundle already mounts {existing.get('source')!r} at {layout.CONTAINER_CUDA_CHECKPOINT}; "
                    "runsc-cuda does not replace it",
                ),
            ),
        )
    if host_cuda_checkpoint is None:
        return Patch(None, ())
    new = dict(doc)
    new["mounts"] = [*list(doc.get("mounts") or []), cuda_checkpoint_mount(host_cuda_checkpoint)]
    return Patch(
        new, (Note("info", f"mounted {host_cuda_checkpoint} read-only at {layout.CONTAINER_CUDA_CHECKPOINT}"),)
    )


def dumps(doc: dict[str, Any]) -> bytes:
    """Compact JSON, the way Docker and containerd write config.json."""
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def save_atomic(bundle: Bundle, data: bytes) -> None:
    """Replace config.json with ``data``: temp file in the same folder, fsync, rename.

    A crash at any point leaves either the old file or the new one.
    """
    import tempfile  # only when a bundle is patched: create's other paths do without it

    folder = os.path.dirname(bundle.path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=".config.json.", suffix=".runsc-cuda", dir=folder)
    except OSError as e:
        raise ShimError(f"{bundle.path}: cannot write: {e.strerror}") from None
    try:
        try:
            os.fchmod(fd, bundle.mode)
            if os.geteuid() == 0:
                os.fchown(fd, bundle.uid, bundle.gid)
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, bundle.path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise ShimError(f"{bundle.path}: cannot write: {e.strerror}") from None
    try:
        dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
