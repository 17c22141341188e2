"""Checkpoint/restore tuning end to end over the fake runsc: flags, annotations, refusals, sidecar, watcher."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from hygiene import sandboxes
from support import Shim, fixture_spec

CUDA = (10, 11)
PIDS = (1, 10, 11)


def checkpoint(shim: Shim, bundle: Path, cid: str, image: Path, *extra: str) -> subprocess.CompletedProcess[bytes]:
    """Docker's checkpoint (the container stops): pause, checkpoint."""
    assert shim.docker(bundle, "pause", cid).returncode == 0
    return shim.docker(bundle, "checkpoint", "--image-path", str(image), "--work-path", str(bundle / "w"), *extra, cid)


def restore(shim: Shim, bundle: Path, cid: str, image: Path, **kw: Any) -> subprocess.CompletedProcess[bytes]:
    """Docker's `start --checkpoint`, after deleting the stopped container."""
    assert shim.docker(bundle, "delete", cid).returncode == 0
    return shim.docker_restore(bundle, image, cid, **kw)


def plain(shim: Shim, cid: str, annotations: dict[str, str] | None = None) -> Path:
    doc = fixture_spec("plain")
    if annotations:
        doc["annotations"] = {**(doc.get("annotations") or {}), **annotations}
    bundle = shim.bundle(cid, doc)
    for args in (["create", "--bundle", str(bundle), cid], ["start", cid]):
        assert shim.docker(bundle, *args).returncode == 0
    return bundle


def gpu(shim: Shim, cid: str, annotations: dict[str, str] | None = None) -> Path:
    doc = fixture_spec("gpu-devices")
    doc["annotations"] = {**(doc.get("annotations") or {}), **(annotations or {})}
    return shim.gpu_container(cid, PIDS, CUDA, doc=doc)


def sidecar(image: Path) -> dict[str, Any]:
    return dict(json.loads((image / "runsc-cuda.json").read_text()))


@pytest.mark.parametrize("engine", ["native", "exec"])
def test_a_gpu_container_gets_the_default_options_and_the_sidecar_says_so(shim: Shim, engine: str) -> None:
    shim.env["RUNSC_CUDA_ENGINE"] = engine
    bundle = gpu(shim, "c1")
    image = shim.tmp / "image"
    before = len(shim.calls())
    out = checkpoint(shim, bundle, "c1", image)
    assert out.returncode == 0, out.stderr
    (call,) = shim.calls_of("checkpoint", before)
    assert "--compression=none" in call and "--exclude-committed-zero-pages" in call
    assert "--direct" not in call
    assert (image / "pages.img").exists(), "an uncompressed image keeps its pages apart"
    record = sidecar(image)
    assert record["tuning"]["checkpoint"]["used"] == {
        "compression": "none",
        "exclude-committed-zero-pages": True,
        "direct": False,
    }
    assert record["tuning"]["checkpoint"]["sources"]["compression"] == "config checkpoint_compression"
    assert record["tuning"]["image"] == {"pages_file": True}
    before = len(shim.calls())
    out = restore(shim, bundle, "c1", image)
    assert out.returncode == 0, out.stderr
    (call,) = shim.calls_of("restore", before)
    assert "--background" in call and "--direct" in call
    assert "all memory loaded" in shim.wait_background(bundle)
    assert shim.cuda_states("c1") == {10: "running", 11: "running"}


def test_a_plain_container_without_settings_is_untouched(shim: Shim) -> None:
    bundle = plain(shim, "p1")
    image = shim.tmp / "image"
    before = len(shim.calls())
    assert checkpoint(shim, bundle, "p1", image).returncode == 0
    (call,) = shim.calls_of("checkpoint", before)
    assert call[call.index("checkpoint") :] == [
        "checkpoint",
        "--image-path",
        str(image),
        "--work-path",
        str(bundle / "w"),
        "p1",
    ]
    assert shim.calls_of("help", before) == []
    assert not (image / "runsc-cuda.json").exists()
    before = len(shim.calls())
    assert restore(shim, bundle, "p1", image).returncode == 0
    (call,) = shim.calls_of("restore", before)
    assert "--background" not in call and "--direct" not in call
    assert [shim.verb_of(a) for a in shim.runsc_argvs()[before:]] == ["delete", "restore"]


def test_tuning_all_applies_the_config_to_every_container(shim: Shim) -> None:
    shim.env["RUNSC_CUDA_TUNING"] = "all"
    bundle = plain(shim, "p1")
    image = shim.tmp / "image"
    before = len(shim.calls())
    assert checkpoint(shim, bundle, "p1", image).returncode == 0
    (call,) = shim.calls_of("checkpoint", before)
    assert "--compression=none" in call and "--exclude-committed-zero-pages" in call
    record = sidecar(image)
    assert record["engine"] == "none"
    assert record["gpus"] == [] and record["driver_version"] is None and record["cuda_processes"] == []
    assert restore(shim, bundle, "p1", image).returncode == 0
    assert "--background" in shim.calls_of("restore", before)[0]
    assert "all memory loaded" in shim.wait_background(bundle)
    assert shim.status("p1") == "running"


def test_annotations_tune_a_plain_container_alone(shim: Shim) -> None:
    bundle = plain(shim, "p1", {"dev.runsc-cuda.checkpoint.direct": "true", "dev.runsc-cuda.restore.direct": "true"})
    image = shim.tmp / "image"
    before = len(shim.calls())
    assert checkpoint(shim, bundle, "p1", image).returncode == 0
    (call,) = shim.calls_of("checkpoint", before)
    assert "--direct" in call
    assert not any(t.startswith("--compression") or t == "--exclude-committed-zero-pages" for t in call)
    assert sidecar(image)["tuning"]["checkpoint"]["sources"]["direct"] == (
        'annotation "dev.runsc-cuda.checkpoint.direct"'
    )
    before = len(shim.calls())
    assert restore(shim, bundle, "p1", image).returncode == 0
    (call,) = shim.calls_of("restore", before)
    assert "--direct" in call and "--background" not in call


def test_annotations_override_the_config_for_a_gpu_container(shim: Shim) -> None:
    bundle = gpu(
        shim,
        "c1",
        {"dev.runsc-cuda.checkpoint.exclude-committed-zero-pages": "false", "dev.runsc-cuda.restore.background": "off"},
    )
    image = shim.tmp / "image"
    before = len(shim.calls())
    assert checkpoint(shim, bundle, "c1", image).returncode == 0
    assert "--exclude-committed-zero-pages" not in shim.calls_of("checkpoint", before)[0]
    before = len(shim.calls())
    assert restore(shim, bundle, "c1", image).returncode == 0
    (call,) = shim.calls_of("restore", before)
    assert "--background" not in call and "--direct" in call
    assert shim.calls_of("wait", before) == []


@pytest.mark.parametrize(
    "annotations,needle",
    [
        ({"dev.runsc-cuda.checkpoint.compression": "flate-best-speed"}, "needs an uncompressed image"),
        ({"dev.runsc-cuda.checkpoint.compression": "zstd"}, "compression 'zstd'"),
        ({"dev.runsc-cuda.restore.background": "sometimes"}, 'expected "true" or "false"'),
        ({"dev.runsc-cuda.checkpoint.compresion": "none"}, "unknown; runsc-cuda knows"),
    ],
    ids=["background-of-compressed", "unknown-compression", "bad-bool", "misspelt"],
)
@pytest.mark.parametrize("engine", ["native", "exec"])
def test_impossible_settings_are_refused_before_anything_is_frozen(
    shim: Shim, annotations: dict[str, str], needle: str, engine: str
) -> None:
    shim.env["RUNSC_CUDA_ENGINE"] = engine
    bundle = gpu(shim, "c1", annotations)
    before = len(shim.calls())
    out = checkpoint(shim, bundle, "c1", shim.tmp / "image")
    assert out.returncode != 0
    assert needle in shim.last_error(bundle)
    assert shim.last_error(bundle).startswith("runsc-cuda: cannot checkpoint c1")
    assert "nothing was frozen" in shim.last_error(bundle)
    assert shim.calls_of("checkpoint", before) == [] and shim.calls_of("exec", before) == []
    assert shim.cuda_states("c1") == {10: "running", 11: "running"}
    assert shim.status("c1") == "paused", "the container was left as Docker paused it"


def test_a_compressed_image_is_restored_without_background(shim: Shim) -> None:
    bundle = gpu(
        shim,
        "c1",
        {"dev.runsc-cuda.checkpoint.compression": "flate-best-speed", "dev.runsc-cuda.restore.background": "false"},
    )
    image = shim.tmp / "image"
    assert checkpoint(shim, bundle, "c1", image).returncode == 0
    assert not (image / "pages.img").exists()
    assert sidecar(image)["tuning"]["image"] == {"pages_file": False}
    # The container's restore settings changed since: background is asked for again.
    doc = json.loads((bundle / "config.json").read_text())
    doc["annotations"]["dev.runsc-cuda.restore.background"] = "true"
    (bundle / "config.json").write_text(json.dumps(doc))
    before = len(shim.calls())
    out = restore(shim, bundle, "c1", image)
    assert out.returncode == 0, out.stderr
    (call,) = shim.calls_of("restore", before)
    assert "--background" not in call and "--direct" not in call
    messages = [e["msg"] for e in shim.log_entries(bundle)]
    assert any("the image is compressed" in m for m in messages)


def test_a_plain_runsc_image_without_pages_file_gets_no_background(shim: Shim) -> None:
    shim.env["FAKE_RUNSC_COMPRESSION_DEFAULT"] = "flate-best-speed"  # an older runsc compressed by default
    bundle = gpu(shim, "c1")
    image = shim.tmp / "image"
    runsc = [shim.fakes["runsc"], "--root", str(shim.root)]
    subprocess.run([*runsc, "checkpoint", "--image-path", str(image), "c1"], check=True, env=shim.env)
    before = len(shim.calls())
    assert restore(shim, bundle, "c1", image).returncode == 0
    (call,) = shim.calls_of("restore", before)
    assert "--background" not in call


def test_flags_this_runsc_does_not_know_are_not_passed(shim: Shim) -> None:
    shim.env["FAKE_RUNSC_DROP_FLAGS"] = "checkpoint:exclude-committed-zero-pages,restore:background,restore:direct"
    bundle = gpu(shim, "c1")
    image = shim.tmp / "image"
    before = len(shim.calls())
    out = checkpoint(shim, bundle, "c1", image)
    assert out.returncode == 0, out.stderr
    (call,) = shim.calls_of("checkpoint", before)
    assert "--exclude-committed-zero-pages" not in call and "--compression=none" in call
    before = len(shim.calls())
    out = restore(shim, bundle, "c1", image)
    assert out.returncode == 0, out.stderr
    (call,) = shim.calls_of("restore", before)
    assert "--background" not in call and "--direct" not in call


def test_no_background_when_runsc_cannot_report_its_failure(shim: Shim) -> None:
    shim.env["FAKE_RUNSC_DROP_FLAGS"] = "wait:restore"
    bundle = gpu(shim, "c1")
    image = shim.tmp / "image"
    assert checkpoint(shim, bundle, "c1", image).returncode == 0
    before = len(shim.calls())
    assert restore(shim, bundle, "c1", image).returncode == 0
    (call,) = shim.calls_of("restore", before)
    assert "--background" not in call and "--direct" in call
    assert any("wait --restore" in e["msg"] for e in shim.log_entries(bundle))


def test_tuning_off_adds_nothing_and_ignores_annotations(shim: Shim) -> None:
    shim.env["RUNSC_CUDA_TUNING"] = "off"
    bundle = gpu(shim, "c1", {"dev.runsc-cuda.checkpoint.compression": "zstd"})
    image = shim.tmp / "image"
    before = len(shim.calls())
    out = checkpoint(shim, bundle, "c1", image)
    assert out.returncode == 0, out.stderr
    (call,) = shim.calls_of("checkpoint", before)
    assert not any(t.startswith(("--compression", "--exclude", "--direct")) for t in call)
    assert sidecar(image)["tuning"] == {}


@pytest.mark.parametrize(
    "seen_by_wait,needle",
    [
        (True, "failed: waiting for restore to complete: async MemoryFile loading failed: reading pages.img: EIO"),
        (False, "failed: the sandbox stopped before all of its memory was loaded from"),
    ],
    ids=["runsc-says-why", "sandbox-gone"],
)
@pytest.mark.parametrize("engine", ["native", "exec"])
def test_a_failed_background_load_reaches_the_runtime_log(
    shim: Shim, seen_by_wait: bool, needle: str, engine: str
) -> None:
    shim.env["RUNSC_CUDA_ENGINE"] = engine
    bundle = gpu(shim, "c1")
    image = shim.tmp / "image"
    assert checkpoint(shim, bundle, "c1", image).returncode == 0
    fail = json.dumps({"message": "reading pages.img: EIO", "seen_by_wait": seen_by_wait})
    out = restore(shim, bundle, "c1", image, env={"FAKE_RUNSC_BACKGROUND_FAIL": fail})
    assert out.returncode == 0, "runsc restore --background returned before the load failed"
    line = shim.wait_background(bundle)
    assert needle in line
    assert line.startswith("runsc-cuda: ")
    assert shim.last_error(bundle) == line, "containerd shows the last error line: ours"


def test_the_watcher_waits_for_a_slow_load_and_says_how_long_it_took(shim: Shim) -> None:
    bundle = gpu(shim, "c1")
    image = shim.tmp / "image"
    assert checkpoint(shim, bundle, "c1", image).returncode == 0
    out = restore(shim, bundle, "c1", image, env={"FAKE_RUNSC_BACKGROUND_SECONDS": "1.5"})
    assert out.returncode == 0, out.stderr
    assert not any("background restore of" in e["msg"] for e in shim.log_entries(bundle)), "restore waited"
    line = shim.wait_background(bundle)
    seconds = float(line.split("all memory loaded ")[1].split("s ")[0])
    assert 1.0 <= seconds < 30


def test_the_watcher_leaves_the_callers_stdio_alone(shim: Shim) -> None:
    """containerd reads the runtime's stdout/stderr to EOF: a watcher holding them would hang restore."""
    bundle = gpu(shim, "c1")
    image = shim.tmp / "image"
    assert checkpoint(shim, bundle, "c1", image).returncode == 0
    assert shim.docker(bundle, "delete", "c1").returncode == 0
    env = {**shim.env, "FAKE_RUNSC_BACKGROUND_SECONDS": "20"}
    argv = [*shim.command, "--root", str(shim.root), "--log", str(bundle / "log.json"), "--log-format", "json"]
    argv += ["restore", "--image-path", str(image), "--detach", "--bundle", str(bundle), "c1"]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _, err = proc.communicate(timeout=15)  # EOF on both pipes long before the 20 s load ends
        assert proc.returncode == 0, err
    finally:  # the watcher and its runsc wait would outlive the test by the rest of the 20 s
        sandboxes.remove_sandboxes(None, shim.root)


def test_a_foreground_restore_is_watched_too(shim: Shim) -> None:
    shim.env["RUNSC_CUDA_TUNING"] = "all"
    bundle = plain(shim, "p1")
    image = shim.tmp / "image"
    assert checkpoint(shim, bundle, "p1", image).returncode == 0
    assert shim.docker(bundle, "delete", "p1").returncode == 0
    argv = [*shim.command, "--root", str(shim.root), "--log", str(bundle / "log.json"), "--log-format", "json"]
    argv += ["restore", "--image-path", str(image), "--bundle", str(bundle), "p1"]
    proc = subprocess.Popen(argv, env=shim.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert "all memory loaded" in shim.wait_background(bundle)
        assert proc.poll() is None, "runsc restore (attached) still runs the container"
    finally:
        shim.run("kill", "p1", "KILL")
        proc.wait(timeout=30)


def test_runscs_help_is_asked_once_per_binary(shim: Shim) -> None:
    bundle = gpu(shim, "c1")
    image = shim.tmp / "image"
    assert checkpoint(shim, bundle, "c1", image, "--leave-running").returncode == 0
    assert shim.docker(bundle, "resume", "c1").returncode == 0
    assert len(shim.calls_of("help")) == 2  # checkpoint and restore: kept in state_dir
    before = len(shim.calls())
    assert checkpoint(shim, bundle, "c1", shim.tmp / "image2", "--leave-running").returncode == 0
    assert shim.calls_of("help", before) == []
    runsc = Path(shim.fakes["runsc"])
    runsc.write_text(runsc.read_text() + "\n# upgraded\n")  # a new runsc binary: asked again
    assert shim.docker(bundle, "resume", "c1").returncode == 0
    before = len(shim.calls())
    assert checkpoint(shim, bundle, "c1", shim.tmp / "image3", "--leave-running").returncode == 0
    assert len(shim.calls_of("help", before)) == 2


def test_a_restore_that_fails_is_not_watched(shim: Shim) -> None:
    bundle = gpu(shim, "c1")
    image = shim.tmp / "image"
    assert checkpoint(shim, bundle, "c1", image).returncode == 0
    plan = json.dumps([{"verb": "restore", "fault": "fail", "message": "restoring container: boom"}])
    out = restore(shim, bundle, "c1", image, env={"FAKE_RUNSC_FAULTS": plan})
    assert out.returncode == 128
    assert shim.last_error(bundle) == "restoring container: boom"
    time.sleep(1)
    assert shim.calls_of("wait") == []
    assert not any("background restore of" in e["msg"] for e in shim.log_entries(bundle))


def test_a_misspelt_annotation_fails_the_restore_before_runsc(shim: Shim) -> None:
    bundle = gpu(shim, "c1")
    image = shim.tmp / "image"
    assert checkpoint(shim, bundle, "c1", image).returncode == 0
    doc = json.loads((bundle / "config.json").read_text())
    doc["annotations"]["dev.runsc-cuda.restore.backgroud"] = "true"
    (bundle / "config.json").write_text(json.dumps(doc))
    before = len(shim.calls())
    out = restore(shim, bundle, "c1", image)
    assert out.returncode != 0
    assert 'cannot restore c1: annotation "dev.runsc-cuda.restore.backgroud": unknown' in shim.last_error(bundle)
    assert shim.calls_of("restore", before) == []
