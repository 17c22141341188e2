"""``runsc-cuda.json``: what runsc-cuda records in a checkpoint image, and checks on restore.

Only the ``--image-path`` folder travels with a checkpoint (containerd tars it),
so this file comes back on restore.
"""

from __future__ import annotations

import errno
import json
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from runsc_cuda import __version__, files
from runsc_cuda.cuda.host import GpuInfo
from runsc_cuda.cuda.protocol import STATES
from runsc_cuda.errors import ShimError
from runsc_cuda.oci.sandbox import MAX_PIDS, PID_MAX

NAME = "runsc-cuda.json"
# "none": a container without GPUs whose checkpoint runsc-cuda tuned (only the options are recorded).
ENGINES = ("native", "exec", "none")
FORMAT = 1
MAX_BYTES = 1 << 20


@dataclass(frozen=True)
class CudaProcess:
    pid: int
    state_before: str
    state_saved: str


@dataclass(frozen=True)
class Sidecar:
    engine: str
    container: str
    runsc_version: str
    driver_version: str | None
    gpus: tuple[str, ...]
    cuda_processes: tuple[CudaProcess, ...] = ()
    leave_running: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    # The image options runsc-cuda chose (tuning.Plan.record) and what the image holds.
    tuning: dict[str, Any] = field(default_factory=dict)
    runsc_cuda_version: str = __version__
    created: str = ""
    format: int = FORMAT

    @property
    def gpu_count(self) -> int:
        return len(self.gpus)

    @property
    def gpu_info(self) -> GpuInfo:
        return GpuInfo(self.driver_version, self.gpus)

    def to_json(self) -> str:
        doc = asdict(self)
        doc["gpus"] = list(self.gpus)
        doc["gpu_count"] = self.gpu_count
        doc["cuda_processes"] = [asdict(p) for p in self.cuda_processes]
        return json.dumps(doc, indent=2, sort_keys=False) + "\n"


def now_rfc3339() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def write(image_path: str, sidecar: Sidecar) -> str:
    path = os.path.join(image_path, NAME)
    try:
        files.write_atomic(path, sidecar.to_json())
    except OSError as e:
        raise ShimError(f"cannot write {path}: {e.strerror}") from None
    return path


def _expect(doc: dict[str, Any], key: str, kind: type | tuple[type, ...], path: str) -> Any:
    value = doc.get(key)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise ShimError(f"{path}: {key}: unexpected value {str(value)[:40]!r}")
    return value


def _mapping(doc: dict[str, Any], key: str) -> dict[str, Any]:
    """An optional informational object: anything else is ignored (it decides nothing)."""
    value = doc.get(key)
    return dict(value) if isinstance(value, dict) else {}


def parse(text: str, path: str) -> Sidecar:
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise ShimError(f"{path}: invalid JSON: {e}") from None
    except RecursionError:
        raise ShimError(f"{path}: JSON nested too deeply") from None
    if not isinstance(doc, dict):
        raise ShimError(f"{path}: expected a JSON object")
    fmt = _expect(doc, "format", int, path)
    if fmt > FORMAT:
        raise ShimError(f"{path}: written by a newer runsc-cuda (format {fmt}); upgrade runsc-cuda to restore it")
    # The image may come from anywhere: its PIDs and states are checked like runsc's own output.
    items = _expect(doc, "cuda_processes", list, path)
    if len(items) > MAX_PIDS:
        raise ShimError(f"{path}: cuda_processes: {len(items)} entries, more than {MAX_PIDS}")
    procs = []
    for item in items:
        if not isinstance(item, dict):
            raise ShimError(f"{path}: cuda_processes: unexpected value")
        pid = _expect(item, "pid", int, path)
        if not 0 < pid <= PID_MAX:
            raise ShimError(f"{path}: cuda_processes: not a PID: {pid}")
        saved = _expect(item, "state_saved", str, path)
        before = item.get("state_before", "")
        if saved not in STATES or (before and before not in STATES):
            raise ShimError(f"{path}: cuda_processes: PID {pid}: unknown state {str(saved)[:20]!r}")
        procs.append(CudaProcess(pid, str(before), saved))
    driver = doc.get("driver_version")
    if driver is not None and not isinstance(driver, str):
        raise ShimError(f"{path}: driver_version: unexpected value")
    gpus = _expect(doc, "gpus", list, path)
    if not all(isinstance(g, str) for g in gpus):
        raise ShimError(f"{path}: gpus: unexpected value")
    engine = _expect(doc, "engine", str, path)
    if engine not in ENGINES:
        raise ShimError(f"{path}: engine: unexpected value {engine!r}")
    return Sidecar(
        engine=engine,
        container=str(doc.get("container", "")),
        runsc_version=str(doc.get("runsc_version", "")),
        driver_version=driver,
        gpus=tuple(gpus),
        cuda_processes=tuple(procs),
        leave_running=bool(doc.get("leave_running", False)),
        timings={k: float(v) for k, v in _mapping(doc, "timings").items() if isinstance(v, (int, float))},
        options=_mapping(doc, "options"),
        tuning=_mapping(doc, "tuning"),
        runsc_cuda_version=str(doc.get("runsc_cuda_version", "")),
        created=str(doc.get("created", "")),
        format=fmt,
    )


def read(image_path: str) -> Sidecar | None:
    """The image's sidecar, or None when the image has none (a plain runsc image).

    The image folder may come from anywhere: the file is opened without blocking or
    following a link, and must be a regular file of at most ``MAX_BYTES``."""
    path = os.path.join(image_path, NAME)
    try:
        raw, _ = files.read_regular(path, MAX_BYTES)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == errno.EFBIG:
            raise ShimError(f"{path}: {e.strerror}") from None
        raise ShimError(f"cannot read {path}: {e.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ShimError(f"cannot read {path}: not UTF-8 text") from None
    return parse(text, path)


def mismatch(saved: GpuInfo, here: GpuInfo) -> str | None:
    """Why an image from ``saved`` cannot be restored ``here``, or None."""
    if saved.driver_version != here.driver_version or sorted(saved.gpus) != sorted(here.gpus):
        return f"the image was checkpointed with {saved.describe()}; this host has {here.describe()}"
    return None
