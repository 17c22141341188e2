"""Checkpoint/restore tuning against the real runsc (no Docker): flags, image, background restore, its failure.

The container is bench/memhog.c (built static), configured through its own
annotations, which is how one container asks runsc-cuda for options.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .stack import REPO, Unavailable, build_runsc, sandboxes

pytestmark = pytest.mark.e2e

_spec = importlib.util.spec_from_file_location("bench_tuning", REPO / "bench" / "tuning.py")
assert _spec is not None and _spec.loader is not None
bench = importlib.util.module_from_spec(_spec)
sys.modules["bench_tuning"] = bench  # dataclasses look their module up
_spec.loader.exec_module(bench)

TUNED = {
    "dev.runsc-cuda.checkpoint.compression": "none",
    "dev.runsc-cuda.checkpoint.exclude-committed-zero-pages": "true",
    "dev.runsc-cuda.restore.background": "true",
    "dev.runsc-cuda.restore.direct": "true",
}


@dataclass
class Real:
    """The pinned runsc, runsc-cuda over it, and containers running memhog."""

    runsc: str
    folder: Path
    rootfs: Path
    config: Path
    made: list[str] = field(default_factory=list)

    @property
    def root(self) -> Path:
        return self.folder / "root"

    def globals(self, log: Path) -> list[str]:
        return ["--root", str(self.root), "--network=none", "--log", str(log), "--log-format", "json"]

    def start(self, cid: str, gib: float, pattern: str, annotations: dict[str, str]) -> tuple[Path, Path]:
        """A running memhog container whose memory is written: its bundle and its /work folder."""
        box = self.folder / cid
        work = box / "work"
        work.mkdir(parents=True)
        bundle = bench.write_bundle(box / "bundle", self.rootfs, work, gib, pattern)
        doc = json.loads((bundle / "config.json").read_text())
        doc["annotations"] = annotations
        (bundle / "config.json").write_text(json.dumps(doc))
        self.made.append(cid)
        argv = [self.runsc, *self.globals(box / "log.json"), "run", "--detach", "--bundle", str(bundle), cid]
        code, err, _ = bench.run_to_files(argv, dict(os.environ), 120)
        assert code == 0, err
        bench.wait_file(work / "ready", 120)
        return bundle, work

    def shim(self, log: Path, *args: str) -> tuple[int, str]:
        env = {**os.environ, "PYTHONPATH": str(REPO), "RUNSC_CUDA_CONFIG": str(self.config)}
        argv = [sys.executable, "-m", "runsc_cuda", *self.globals(log), *args]
        code, err, _ = bench.run_to_files(argv, env, 300)
        return code, err

    def plain(self, *args: str) -> None:
        bench.run_to_files([self.runsc, "--root", str(self.root), *args], dict(os.environ), 60)

    def log(self, bundle: Path) -> list[dict[str, Any]]:
        path = bundle.parent / "log.json"
        text = path.read_text() if path.exists() else ""
        return [json.loads(line) for line in text.replace("}{", "}\n{").splitlines() if line.strip()]

    def background_line(self, bundle: Path, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for entry in self.log(bundle):
                if "background restore of" in entry.get("msg", ""):
                    return entry
            time.sleep(0.05)
        raise AssertionError(f"no background-restore line in {bundle.parent / 'log.json'}")


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Real]:
    if os.geteuid() != 0 or not shutil.which("gcc"):
        pytest.skip("needs root (runsc) and gcc (bench/memhog.c)")
    try:
        runsc = build_runsc()
    except Unavailable as e:
        pytest.skip(f"no runsc: {e}")
    folder = tmp_path_factory.mktemp("tuning-real")
    rootfs = folder / "rootfs"
    bench.build_memhog(rootfs)
    for name in ("work", "proc"):
        (rootfs / name).mkdir()
    config = folder / "runsc-cuda.toml"
    config.write_text(
        f"runsc = {json.dumps(runsc)}\nstate_dir = {json.dumps(str(folder / 'state'))}\n"
        f'log_file = {json.dumps(str(folder / "runsc-cuda.log"))}\nlog_level = "debug"\n'
    )
    made = Real(runsc, folder, rootfs, config)
    with sandboxes.removed_afterwards(runsc, made.root, str(folder)):  # kill, delete --force, unmount
        yield made


def test_tuned_checkpoint_and_background_restore(real: Real) -> None:
    bundle, work = real.start("tuned", 0.25, "random", TUNED)
    log = bundle.parent / "log.json"
    image = bundle.parent / "image"
    code, err = real.shim(log, "checkpoint", "--image-path", str(image), "tuned")
    assert code == 0, err
    record = json.loads((image / "runsc-cuda.json").read_text())
    assert record["engine"] == "none"
    assert record["tuning"]["checkpoint"]["added"] == ["--compression=none", "--exclude-committed-zero-pages"]
    assert record["tuning"]["image"] == {"pages_file": True}
    assert (image / "pages.img").stat().st_size >= 256 << 20
    real.plain("delete", "--force", "tuned")
    (work / "trigger").write_text("1\n")
    code, err = real.shim(log, "restore", "--image-path", str(image), "--bundle", str(bundle), "--detach", "tuned")
    assert code == 0, err
    bench.wait_file(work / "done.1", 60)
    assert (work / "done.1").read_text().split()[1] == "1", "the memory came back intact"
    line = real.background_line(bundle)
    assert line["level"] == "info" and "all memory loaded" in line["msg"]
    said = [e["msg"] for e in real.log(bundle)]
    assert "runsc-cuda: restore of tuned: runsc-cuda adds --background --direct" in said


def test_committed_zero_pages_stay_out_of_the_image(real: Real) -> None:
    """After a stats call (docker stats, the kubelet) runsc saves touched zero pages unless told not to."""
    sizes = {}
    for cid, notes in (("zero-plain", {}), ("zero-tuned", TUNED)):
        bundle, _ = real.start(cid, 0.25, "zero", notes)
        real.plain("events", "--stats", cid)
        image = bundle.parent / "image"
        code, err = real.shim(bundle.parent / "log.json", "checkpoint", "--image-path", str(image), cid)
        assert code == 0, err
        sizes[cid] = bench.image_bytes(image)
        real.plain("delete", "--force", cid)
    assert sizes["zero-plain"] >= 256 << 20, sizes  # runsc's default: the zeros are written out
    assert sizes["zero-tuned"] < 16 << 20, sizes


def test_a_failed_background_load_reaches_log_json(real: Real) -> None:
    """A pages.img cut short: restore returns (background), the load fails later, log.json says so last."""
    bundle, work = real.start("broken", 1, "random", TUNED)
    log = bundle.parent / "log.json"
    image = bundle.parent / "image"
    code, err = real.shim(log, "checkpoint", "--image-path", str(image), "broken")
    assert code == 0, err
    real.plain("delete", "--force", "broken")
    pages = image / "pages.img"
    os.truncate(pages, pages.stat().st_size * 9 // 10)
    for _attempt in range(3):
        log.unlink(missing_ok=True)
        bench.drop_caches()  # the load must outlast restore's own part (reading from the page cache it might not)
        code, err = real.shim(log, "restore", "--image-path", str(image), "--bundle", str(bundle), "--detach", "broken")
        if code == 0:
            break
        # The load reached the cut before restore returned: runsc failed the restore itself.
        assert "I/O error" in err or "EOF" in err, err
        real.plain("delete", "--force", "broken")
    assert code == 0, "restore never returned before the background load failed"
    line = real.background_line(bundle)
    assert line["level"] == "error"
    assert "background restore of broken failed" in line["msg"]
    errors = [e["msg"] for e in real.log(bundle) if e.get("level") == "error"]
    assert errors[-1] == line["msg"], "containerd shows the last error line: runsc-cuda's"
    with contextlib.suppress(OSError):
        assert not (work / "done.1").exists()
