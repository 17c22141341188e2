"""Hostile input, continued: state and image folders others can write, and untrusted text of any size.

The cases of issue 12 (items 6-9) as one figure of the hostile-input suite:
- a ``state_dir`` others can change, or owned by someone else;
- the lock file's name taken by a link to root's file, a FIFO or a folder;
- the image's sidecar (or config.json) replaced by a FIFO, a link to a device,
  a folder or a socket;
- a sidecar listing thousands of PIDs the sandbox does not have, or 20,000 GPU
  names; an annotation of 200 KB.

After each case: no traceback, a non-zero exit within seconds, one short
printable error line that says what is wrong, root's planted file untouched,
every CUDA process running, the pause state as found, no lock held, and no
cuda-checkpoint call naming a PID that is not the container's.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from runsc_cuda import logs
from runsc_cuda.lock import lock_path
from runsc_cuda.oci import spec

from suite import Tally, Template, entry_point, held_locks, in_parallel, last_error, log_problems
from suite import case_shim as make_case_shim
from support import Shim, fixture_spec

CID = "c1"
CUDA = (10, 11)
PIDS = (1, *CUDA)
VICTIM = "root's own file\n"


@dataclass(frozen=True)
class Case:
    name: str
    verb: str  # checkpoint | restore | create
    plant: Callable[[Shim, Path, Path], None]  # (shim, bundle, image) -> None
    needle: str


def _state(shim: Shim) -> Path:
    path = Path(shim.env["RUNSC_CUDA_STATE_DIR"])
    path.mkdir(parents=True, exist_ok=True)
    return path


def state_mode(mode: int) -> Callable[[Shim, Path, Path], None]:
    return lambda shim, bundle, image: os.chmod(_state(shim), mode)


def state_owner(shim: Shim, bundle: Path, image: Path) -> None:
    os.chown(_state(shim), 65534, 65534)


def at_lock(kind: str) -> Callable[[Shim, Path, Path], None]:
    def plant(shim: Shim, bundle: Path, image: Path) -> None:
        path = Path(lock_path(str(_state(shim)), str(shim.root), CID))
        path.parent.mkdir(mode=0o700, exist_ok=True)
        {"link": lambda: path.symlink_to(shim.tmp / "victim"), "fifo": lambda: os.mkfifo(path), "dir": path.mkdir}[
            kind
        ]()

    return plant


def at_file(name: str, kind: str) -> Callable[[Shim, Path, Path], None]:
    def plant(shim: Shim, bundle: Path, image: Path) -> None:
        path = (image if name == "runsc-cuda.json" else bundle) / name
        path.unlink()
        if kind == "fifo":
            os.mkfifo(path)
        elif kind == "dir":
            path.mkdir()
        elif kind == "socket":
            sock = socket.socket(socket.AF_UNIX)
            sock.bind(str(path))
            sock.close()
        else:
            path.symlink_to(kind)

    return plant


def sidecar_change(**change: object) -> Callable[[Shim, Path, Path], None]:
    def plant(shim: Shim, bundle: Path, image: Path) -> None:
        path = image / "runsc-cuda.json"
        doc = json.loads(path.read_text())
        for key, value in change.items():
            doc[key] = doc[key] + value if key == "cuda_processes" else value
        path.write_text(json.dumps(doc))

    return plant


def huge_annotation(shim: Shim, bundle: Path, image: Path) -> None:
    doc = fixture_spec("gpu-devices")
    doc.setdefault("annotations", {})[spec.GPU_OVERRIDE] = "x" * 200_000
    (bundle / "config.json").write_text(json.dumps(doc))


FOREIGN = [{"pid": p, "state_before": "running", "state_saved": "checkpointed"} for p in range(100, 5100)]
CASES = [
    Case("state_dir mode 0777", "checkpoint", state_mode(0o777), "can be written by other users"),
    Case("state_dir mode 1777 (like /tmp)", "checkpoint", state_mode(0o1777), "can be written by other users"),
    Case("state_dir mode 0770", "checkpoint", state_mode(0o770), "can be written by other users"),
    Case("state_dir owned by nobody", "checkpoint", state_owner, "is owned by uid 65534"),
    Case("lock file: a link to root's file", "checkpoint", at_lock("link"), "it is a symbolic link"),
    Case("lock file: a FIFO", "checkpoint", at_lock("fifo"), "it is a FIFO"),
    Case("lock file: a folder", "checkpoint", at_lock("dir"), "lock file"),
    Case("sidecar: a FIFO", "restore", at_file("runsc-cuda.json", "fifo"), "is a FIFO, not a regular file"),
    Case("sidecar: a link to /dev/zero", "restore", at_file("runsc-cuda.json", "/dev/zero"), "symbolic link"),
    Case("sidecar: a link to root's file", "restore", at_file("runsc-cuda.json", "/etc/passwd"), "symbolic link"),
    Case("sidecar: a folder", "restore", at_file("runsc-cuda.json", "dir"), "is a directory"),
    Case("sidecar: a socket", "restore", at_file("runsc-cuda.json", "socket"), "is a socket"),
    Case("config.json: a FIFO", "restore", at_file("config.json", "fifo"), "is a FIFO, not a regular file"),
    Case("config.json: a link to /dev/zero", "restore", at_file("config.json", "/dev/zero"), "symbolic link"),
    Case("sidecar: 5000 PIDs not in the sandbox", "restore", sidecar_change(cuda_processes=FOREIGN), "5000 CUDA"),
    Case(
        "sidecar: 20000 GPU names",
        "restore",
        sidecar_change(gpus=[f"NVIDIA H100 #{i}" for i in range(20_000)]),
        "characters left out",
    ),
    Case("annotation of 200 KB", "create", huge_annotation, spec.GPU_OVERRIDE),
]


def run_case(shim: Shim, bundle: Path, image: Path, case: Case) -> tuple[int, bytes, float]:
    started = time.monotonic()
    if case.verb == "checkpoint":
        out = shim.docker(
            bundle, "checkpoint", "--image-path", str(shim.tmp / "i2"), "--leave-running", CID, timeout=60
        )
    elif case.verb == "restore":
        out = shim.docker_restore(bundle, image, timeout=60)
    else:
        out = shim.docker(bundle, "create", "--bundle", str(bundle), "c2", timeout=60)
    return out.returncode, out.stderr, time.monotonic() - started


def check(shim: Shim, bundle: Path, case: Case, code: int, stderr: bytes, seconds: float) -> list[str]:
    problems = []
    entries, bad = log_problems(shim, bundle)
    problems += bad
    error = last_error(entries)
    text = stderr.decode("utf-8", errors="replace")
    if code == 0:
        problems.append("hostile input did not fail the call")
    if seconds > 20:
        problems.append(f"took {seconds:.0f}s")
    if case.needle not in error:
        problems.append(f"error does not say {case.needle!r}: {error[:200]!r}")
    if len(error) > logs.LINE_MAX or not error.isprintable():
        problems.append(f"error is not one short printable line: {len(error)} characters")
    raw = (bundle / "log.json").read_bytes() if (bundle / "log.json").exists() else b""
    if any(len(line) > logs.LINE_BYTES for line in raw.splitlines()):
        problems.append("a log.json line is longer than LINE_BYTES")
    if "Traceback" in text or "internal error" in text or len(text) > 2 * logs.LINE_MAX:
        problems.append(f"stderr: {text[-200:]!r}")
    if (shim.tmp / "victim").read_text() != VICTIM:
        problems.append("root's file was overwritten")
    if (shim.root / CID).exists():
        states = shim.cuda_states(CID)
        if any(v != "running" for v in states.values()):
            problems.append(f"CUDA processes not running: {states}")
        if case.verb == "checkpoint" and shim.status(CID) != "paused":
            problems.append(f"container is {shim.status(CID)}, was paused")
        for argv in shim.cuda_calls(CID):
            if "--pid" in argv and int(argv[argv.index("--pid") + 1]) not in PIDS:
                problems.append(f"cuda-checkpoint called for a PID that is not the container's: {argv}")
                break
    if not case.name.startswith("lock file") and held_locks(shim):
        problems.append("a lock is still held")
    return problems


def test_hostile_state_and_image_folders(shim: Shim) -> None:
    entry_point(shim)
    shim.env["RUNSC_CUDA_ENGINE"] = "exec"
    template = Template(shim, "folders", CID, PIDS, CUDA, "paused")
    image = template.shim.tmp / "image"
    out = template.shim.docker(template.bundle, "checkpoint", "--image-path", str(image), CID)
    assert out.returncode == 0, out.stderr
    assert template.shim.docker(template.bundle, "delete", CID).returncode == 0
    tally = Tally("hostile input: state and image folders")
    cases = [c for c in CASES if c.name != "state_dir owned by nobody" or os.geteuid() == 0]
    if len(cases) < len(CASES):
        print("state_dir owned by nobody: skipped (needs root to give the folder away)")

    def one(item: tuple[int, Case]) -> None:
        index, case = item
        if case.verb == "checkpoint":
            case_shim, bundle = live.fresh(str(index))
        else:  # the container was checkpointed and deleted: Docker's state before a restore
            case_shim = make_case_shim(shim, f"folders-{index}")
            bundle = case_shim.tmp / "bundles" / CID
            shutil.copytree(template.bundle, bundle, ignore=shutil.ignore_patterns("log.json"))
        (case_shim.tmp / "victim").write_text(VICTIM)
        img = case_shim.tmp / "image"
        shutil.copytree(image, img)
        case.plant(case_shim, bundle, img)
        code, stderr, seconds = run_case(case_shim, bundle, img, case)
        tally.add(case.name, check(case_shim, bundle, case, code, stderr, seconds))

    live = Template(shim, "folders-live", CID, PIDS, CUDA, "paused")
    in_parallel(one, list(enumerate(cases)))
    tally.report()
