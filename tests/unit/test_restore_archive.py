"""Restore by annotation, the pure parts: where restore-from may point (image/archive.py), archives
unpacked safely into the cache, the cache's gc, and the pod a checkpoint image holds (image/statefile.py)."""

from __future__ import annotations

import io
import json
import os
import tarfile
import threading
from pathlib import Path

import pytest

from runsc_cuda.errors import ShimError
from runsc_cuda.image import archive, statefile
from runsc_cuda.oci import cri


def state_header(names: dict[str, str], count: int | None = None) -> bytes:
    """checkpoint.img as runsc starts it: magic, length, JSON metadata (container name -> type)."""
    specs = {n: {"annotations": {cri.CONTAINER_TYPE: t}} for n, t in names.items()}
    meta = {"container_count": str(len(names) if count is None else count), "container_specs": json.dumps(specs)}
    raw = json.dumps(meta).encode()
    return statefile.MAGIC + len(raw).to_bytes(8, "big") + raw + b"\0" * 64


POD = {"__no_name_0": "sandbox", "app": "container", "sidecar": "container"}


def add(tar: tarfile.TarFile, name: str, data: bytes = b"x", kind: bytes = tarfile.REGTYPE, link: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def checkpoint_tar(path: Path, extra: list[tuple[str, bytes, bytes, str]] = ()) -> Path:  # type: ignore[assignment]
    with tarfile.open(path, "w") as tar:
        add(tar, "checkpoint/", kind=tarfile.DIRTYPE)
        add(tar, "checkpoint/checkpoint.img", state_header(POD))
        add(tar, "checkpoint/pages.img", b"p" * 4096)
        add(tar, "spec.dump", json.dumps({"annotations": {cri.CONTAINER_NAME: "app"}}).encode())
        add(tar, "rootfs-diff.tar", b"ignored")
        for name, data, kind, link in extra:
            add(tar, name, data, kind, link)
    return path


@pytest.fixture
def roots(tmp_path: Path) -> tuple[str, ...]:
    root = tmp_path / "checkpoints"
    root.mkdir()
    return (str(root),)


# --- where restore-from may point ---------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("", "not a usable path"),
        ("relative/x.tar", "not an absolute path"),
        ("{root}/../x.tar", "'..' is not allowed"),
        ("{root}/a/../../x.tar", "'..' is not allowed"),
        ("/etc/passwd", "not under the restore roots"),
        ("{root}-evil/x.tar", "not under the restore roots"),
        ("{root}/missing.tar", "no such file or folder"),
        ("{root}/x\n.tar", "not a usable path"),
    ],
)
def test_restore_from_outside_the_roots_or_unclean_is_refused(roots: tuple[str, ...], value: str, why: str) -> None:
    with pytest.raises(ShimError, match=why):
        archive.check_path(value.format(root=roots[0]), roots)


def test_a_link_inside_the_roots_that_leads_out_is_refused(roots: tuple[str, ...], tmp_path: Path) -> None:
    outside = tmp_path / "other-tenant"
    outside.mkdir()
    (outside / "x.tar").write_bytes(b"")
    (Path(roots[0]) / "link").symlink_to(outside)
    with pytest.raises(ShimError, match="a symbolic link leads out of the restore roots"):
        archive.check_path(f"{roots[0]}/link/x.tar", roots)
    (Path(roots[0]) / "inside").mkdir()
    (Path(roots[0]) / "inside" / "y.tar").write_bytes(b"")
    (Path(roots[0]) / "ok").symlink_to(Path(roots[0]) / "inside")
    assert archive.check_path(f"{roots[0]}/ok/y.tar", roots) == f"{roots[0]}/inside/y.tar"


def test_no_roots_configured_refuses_everything(roots: tuple[str, ...]) -> None:
    (Path(roots[0]) / "x.tar").write_bytes(b"")
    with pytest.raises(ShimError, match="none configured"):
        archive.check_path(f"{roots[0]}/x.tar", ())


def test_an_image_folder_whose_files_are_links_is_refused(roots: tuple[str, ...], tmp_path: Path) -> None:
    folder = Path(roots[0]) / "img"
    folder.mkdir()
    (tmp_path / "secret.img").write_bytes(state_header(POD))
    (folder / "checkpoint.img").symlink_to(tmp_path / "secret.img")
    with pytest.raises(ShimError, match="not a plain file"):
        archive.resolve(str(folder), roots, str(tmp_path / "state"), 1.0)
    (folder / "checkpoint.img").unlink()
    (folder / "checkpoint.img").write_bytes(state_header(POD))
    assert archive.resolve(str(folder), roots, str(tmp_path / "state"), 1.0).image == str(folder)


# --- archives ---------------------------------------------------------------------------


def test_an_archive_is_unpacked_once_and_reused_while_unchanged(roots: tuple[str, ...], tmp_path: Path) -> None:
    tar = checkpoint_tar(Path(roots[0]) / "pod.tar")
    state = str(tmp_path / "state")
    first = archive.resolve(str(tar), roots, state, 5.0)
    assert sorted(os.listdir(first.image)) == ["checkpoint.img", "pages.img"]
    entry = os.path.dirname(first.image)
    assert first.spec_dump is not None and not os.path.exists(os.path.join(entry, "rootfs-diff.tar"))
    marker = Path(first.image).parent / archive.DONE
    stamp = marker.stat().st_ino
    assert archive.resolve(str(tar), roots, state, 5.0) == first and marker.stat().st_ino == stamp
    os.utime(tar, ns=(1, 1))  # changed: a new entry
    assert archive.resolve(str(tar), roots, state, 5.0).image != first.image


def test_pods_restoring_from_one_archive_at_once_unpack_it_once(roots: tuple[str, ...], tmp_path: Path) -> None:
    tar = checkpoint_tar(Path(roots[0]) / "pod.tar")
    state = str(tmp_path / "state")
    seen: list[str] = []
    threads = [threading.Thread(target=lambda: seen.append(archive.unpacked(str(tar), state, 10.0))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(seen)) == 1 and len(seen) == 4
    assert os.listdir(os.path.join(state, archive.CACHE)) == [os.path.basename(seen[0])]


@pytest.mark.parametrize(
    ("member", "why"),
    [
        (("/etc/evil", b"x", tarfile.REGTYPE, ""), "absolute"),
        (("checkpoint/../../evil", b"x", tarfile.REGTYPE, ""), "'..'"),
        (("checkpoint/link", b"", tarfile.SYMTYPE, "/etc/shadow"), "a link"),
        (("checkpoint/hard", b"", tarfile.LNKTYPE, "spec.dump"), "a link"),
        (("checkpoint/dev", b"", tarfile.CHRTYPE, ""), "a device or special file"),
        (("checkpoint/fifo", b"", tarfile.FIFOTYPE, ""), "a device or special file"),
    ],
)
def test_unsafe_members_refuse_the_whole_archive_and_leave_nothing(
    roots: tuple[str, ...], tmp_path: Path, member: tuple[str, bytes, bytes, str], why: str
) -> None:
    tar = checkpoint_tar(Path(roots[0]) / "bad.tar", [member])
    state = tmp_path / "state"
    with pytest.raises(ShimError, match=why):
        archive.resolve(str(tar), roots, str(state), 5.0)
    assert not list((state / archive.CACHE).iterdir())
    assert not Path("/etc/evil").exists()


def test_a_truncated_archive_is_refused_as_damaged(roots: tuple[str, ...], tmp_path: Path) -> None:
    tar = checkpoint_tar(Path(roots[0]) / "pod.tar")
    cut = Path(roots[0]) / "cut.tar"
    cut.write_bytes(tar.read_bytes()[:2600])
    with pytest.raises(ShimError, match="damaged or truncated"):
        archive.resolve(str(cut), roots, str(tmp_path / "state"), 5.0)


def test_an_archive_larger_than_the_room_is_refused(tmp_path: Path) -> None:
    tar = checkpoint_tar(tmp_path / "pod.tar")
    (tmp_path / "out").mkdir()
    with open(tar, "rb") as f, pytest.raises(ShimError, match="larger than the free space"):
        archive.extract(f, str(tar), str(tmp_path / "out"), 1000)


def test_gc_removes_unused_entries_and_keeps_recent_and_busy_ones(roots: tuple[str, ...], tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    old = archive.unpacked(str(checkpoint_tar(Path(roots[0]) / "old.tar")), state, 5.0)
    new = archive.unpacked(str(checkpoint_tar(Path(roots[0]) / "new.tar")), state, 5.0)
    os.utime(os.path.join(old, archive.DONE), (1000, 1000))
    removed, busy = archive.collect(state, 3600)
    assert removed == [old] and not busy and os.path.isdir(new)
    from runsc_cuda.lock import container_lock

    with container_lock(state, archive.CACHE, os.path.basename(new), 1.0):
        removed, busy = archive.collect(state, 0)
    assert busy == [new] and not removed
    assert archive.collect(state, 0) == ([new], [])


# --- the pod an image holds ---------------------------------------------------------------


def test_the_image_header_names_the_pods_containers(tmp_path: Path) -> None:
    (tmp_path / "checkpoint.img").write_bytes(state_header(POD))
    pod = statefile.read(str(tmp_path))
    assert pod.count == 3 and pod.sandbox_name == "__no_name_0"
    assert pod.container_names == ["app", "sidecar"]


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"not a state file at all", "not a runsc checkpoint image"),
        (statefile.MAGIC + (1 << 40).to_bytes(8, "big"), "damaged"),
        (state_header(POD)[:40], "truncated"),
        (state_header(POD, count=5), "damaged metadata"),
        (statefile.MAGIC + (2).to_bytes(8, "big") + b"{}", "damaged metadata"),
    ],
)
def test_a_damaged_image_header_is_refused(tmp_path: Path, data: bytes, why: str) -> None:
    (tmp_path / "checkpoint.img").write_bytes(data)
    with pytest.raises(ShimError, match=why):
        statefile.read(str(tmp_path))
