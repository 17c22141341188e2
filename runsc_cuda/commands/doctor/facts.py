"""What ``runsc-cuda doctor`` looks at: facts gathered from the host (``gather``), as plain records."""

from __future__ import annotations

import stat
from collections.abc import Mapping
from dataclasses import dataclass, field

from runsc_cuda import config as config_mod
from runsc_cuda.cuda import host


@dataclass(frozen=True)
class Probe:
    """What one program printed; ``error`` when it could not be run or timed out."""

    argv: tuple[str, ...]
    returncode: int | None
    stdout: str
    stderr: str
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.returncode == 0

    def describe(self) -> str:
        if self.error:
            return self.error
        first = next((line.strip() for line in (self.stderr + "\n" + self.stdout).splitlines() if line.strip()), "")
        return f"exit status {self.returncode}" + (f": {first[:200]}" if first else "")


@dataclass(frozen=True)
class FileInfo:
    """A file's type, owner and mode (after symlinks), or why it could not be read."""

    path: str
    exists: bool
    regular: bool = False
    uid: int = -1
    mode: int = 0
    error: str | None = None

    @property
    def executable(self) -> bool:
        return self.regular and bool(self.mode & stat.S_IXUSR)


@dataclass(frozen=True)
class TextFile:
    """A config file's path and text (None: absent), or why it could not be read."""

    path: str
    text: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class Facts:
    config_path: str
    config_file_exists: bool
    config: config_mod.Config | None
    config_error: str | None
    runsc: str | None
    runsc_error: str | None
    runsc_version: Probe | None
    runsc_help_checkpoint: Probe | None
    cuda_checkpoint: host.HostBinary | None
    cuda_checkpoint_file: FileInfo | None
    cuda_checkpoint_help: Probe | None
    proc_dir: str
    gpu: host.GpuInfo
    docker: TextFile
    containerd: TextFile
    # Files a containerd runsc.v1 runtime names with ConfigPath.
    runsc_shim_configs: Mapping[str, TextFile] = field(default_factory=dict)
    # Registered runtime binaries: path -> FileInfo.
    registered: Mapping[str, FileInfo] = field(default_factory=dict)
    criu: str | None = None
    own: tuple[str, ...] = ()
    # ``runsc flags`` (every global flag: is there --nvproxy?) and ``runsc help restore`` (image flags).
    runsc_flags: Probe | None = None
    runsc_help_restore: Probe | None = None
    # state_dir (locks, the runsc help cache) after links, and the user doctor runs as.
    state_dir: FileInfo | None = None
    euid: int = 0
