"""Facts about the host: its cuda-checkpoint binary and its NVIDIA driver and GPUs.

Every function takes the paths it reads, so tests point them at fakes.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field

from runsc_cuda.oci.runsc import which

CUDA_CHECKPOINT_CANDIDATES = (
    "/usr/bin/cuda-checkpoint",
    "/usr/local/bin/cuda-checkpoint",
    "/usr/local/cuda/bin/cuda-checkpoint",
)


@dataclass(frozen=True)
class HostBinary:
    """The host's cuda-checkpoint, and whether it may be mounted (``problem`` None)."""

    path: str
    source: str  # where the path came from: config, a default location, PATH
    problem: str | None = None


def trust_problem(path: str) -> str | None:
    """Why a host binary must not be mounted into containers, or None.

    It must be a regular file (after symlinks), owned by root, and writable by
    nobody but root, in folders that nobody but root can change (a folder
    others may write to lets them swap the file, unless it is sticky like
    /tmp): a container-reachable tool that others can rewrite would let them
    run code in every GPU container.
    """
    try:
        st = os.stat(path)
    except OSError as e:
        return f"{path}: {e.strerror}"
    folder = os.path.dirname(os.path.realpath(path))
    while True:
        try:
            dst = os.stat(folder)
        except OSError as e:
            return f"{folder}: {e.strerror}"
        if dst.st_uid != 0:
            return f"{path} is in {folder}, owned by uid {dst.st_uid}, not root"
        if dst.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not dst.st_mode & stat.S_ISVTX:
            return f"{path} is in {folder}, writable by group or others (mode {stat.S_IMODE(dst.st_mode):04o})"
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    if not stat.S_ISREG(st.st_mode):
        return f"{path} is not a regular file"
    if st.st_uid != 0:
        return f"{path} is owned by uid {st.st_uid}, not root"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"{path} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    if not st.st_mode & stat.S_IXUSR:
        return f"{path} is not executable"
    return None


def find_cuda_checkpoint(
    configured: str | None,
    environ: Mapping[str, str],
    trust: bool = False,
    candidates: tuple[str, ...] = CUDA_CHECKPOINT_CANDIDATES,
) -> HostBinary | None:
    """The host cuda-checkpoint: config/env, the usual locations, then PATH."""
    # The mount's source is the real path, the file that was checked (not a link that may change).
    if configured:
        path = os.path.realpath(configured)
        if not os.path.exists(path):
            return HostBinary(path, "config", f"{path} (from config cuda_checkpoint) does not exist")
        return HostBinary(path, "config", None if trust else trust_problem(path))
    for candidate in candidates:
        if os.path.exists(candidate):
            path = os.path.realpath(candidate)
            return HostBinary(path, "default", None if trust else trust_problem(path))
    found = which("cuda-checkpoint", environ.get("PATH"))
    if found is None:
        return None
    path = os.path.realpath(found)
    return HostBinary(path, "PATH", None if trust else trust_problem(path))


# --- the NVIDIA driver -------------------------------------------------------------


@dataclass(frozen=True)
class GpuInfo:
    """Driver version and GPU models as /proc/driver/nvidia shows them."""

    driver_version: str | None = None
    gpus: tuple[str, ...] = field(default_factory=tuple)

    @property
    def driver_major(self) -> int | None:
        if not self.driver_version:
            return None
        head = self.driver_version.split(".", 1)[0]
        return int(head) if head.isdigit() else None

    def describe(self) -> str:
        driver = self.driver_version or "no NVIDIA driver"
        if not self.gpus:
            return f"{driver}, no GPUs"
        counts: dict[str, int] = {}
        for model in self.gpus:
            counts[model] = counts.get(model, 0) + 1
        models = ", ".join(f"{n}x {m}" for m, n in sorted(counts.items()))
        return f"driver {driver}, {models}"


_VERSION = re.compile(r"Kernel Module(?:\s+for\s+\S+)?\s+(\d+(?:\.\d+)+)")


def parse_driver_version(text: str) -> str | None:
    """The version from /proc/driver/nvidia/version's NVRM line."""
    for line in text.splitlines():
        if line.startswith("NVRM version:"):
            match = _VERSION.search(line)
            if match:
                return match.group(1)
            for word in line.split():
                if re.fullmatch(r"\d+\.\d+(?:\.\d+)?", word):
                    return word
    return None


def parse_gpu_model(text: str) -> str | None:
    """The ``Model:`` line of /proc/driver/nvidia/gpus/<bus>/information."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Model":
            return value.strip() or None
    return None


def _read_text(path: str, limit: int = 65536) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read(limit)
    except OSError:
        return None


def read_gpu_info(proc_dir: str) -> GpuInfo:
    """Read the driver version and GPU models; an absent driver gives an empty GpuInfo."""
    version_text = _read_text(os.path.join(proc_dir, "version"))
    version = parse_driver_version(version_text) if version_text else None
    models: list[str] = []
    gpus_dir = os.path.join(proc_dir, "gpus")
    try:
        buses = sorted(os.listdir(gpus_dir))
    except OSError:
        buses = []
    for bus in buses:
        text = _read_text(os.path.join(gpus_dir, bus, "information"))
        model = parse_gpu_model(text) if text else None
        models.append(model or "unknown GPU")
    return GpuInfo(version, tuple(models))
