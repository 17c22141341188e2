"""Where ``dev.runsc-cuda.restore-from`` may point, and checkpoint archives unpacked safely into a cache.

The annotation comes from whoever may create pods: it is untrusted.  It is
honoured only for an absolute path without ``..`` that lies under one of the
configured ``restore_roots``, as written and once every symbolic link is
resolved (a link that leads out is refused).  It names either an image folder
(runsc's ``checkpoint.img`` and friends, optionally in a ``checkpoint/``
subfolder) or a containerd checkpoint archive (``crictl checkpoint --export``:
a tar with the image under ``checkpoint/`` beside ``spec.dump``, ...).

An archive is unpacked once into ``<state_dir>/restore-cache/<key>/`` (key: the
archive's path, device, inode, size and modification time), under a lock so
that pods restoring from it at the same moment wait for one unpacking, and
reused while the archive is unchanged.  Only plain files and folders are taken,
with relative names without ``..``; links, devices and anything larger than the
free space allows are refused.  ``runsc-cuda gc`` removes entries not used for
``restore_cache_max_age_s``.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from runsc_cuda.errors import ShimError
from runsc_cuda.image.statefile import STATE_FILE
from runsc_cuda.lock import container_lock

if TYPE_CHECKING:
    import tarfile

# hashlib, shutil and tarfile are imported where an archive is unpacked or the cache cleaned: a pod
# restored from an image folder (and every other create) does without them.

CACHE = "restore-cache"
DONE = "unpacked.json"
MAX_PATH = 4096
MAX_MEMBERS = 4096
FREE_MARGIN = 256 << 20  # what unpacking leaves free on the cache's filesystem, at least
TAKEN = ("spec.dump", "config.dump")  # besides checkpoint/: what says which container was checkpointed
CHUNK = 1 << 20


@dataclass(frozen=True)
class Source:
    """Where a restore comes from once checked: the image folder runsc reads, and containerd's spec.dump."""

    image: str
    spec_dump: str | None


def under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def check_path(value: str, roots: tuple[str, ...]) -> str:
    """The resolved path ``value`` names, if it may be restored from (ShimError otherwise)."""
    shown = value[:200]
    if not value or len(value) > MAX_PATH or "\0" in value or not value.isprintable():
        raise ShimError(f"restore-from {shown!r}: not a usable path")
    if not value.startswith("/"):
        raise ShimError(f"restore-from {shown!r}: not an absolute path")
    if ".." in value.split("/"):
        raise ShimError(f"restore-from {shown!r}: '..' is not allowed")
    real_roots = [os.path.realpath(r) for r in roots if r.startswith("/")]
    clean = os.path.normpath(value)
    if not any(under(clean, r) or under(clean, os.path.normpath(r)) for r in (*roots, *real_roots)):
        listed = ", ".join(roots) or "none configured"
        raise ShimError(f"restore-from {shown!r}: not under the restore roots ({listed})")
    real = os.path.realpath(clean)
    if not any(under(real, r) for r in real_roots):
        raise ShimError(f"restore-from {shown!r}: a symbolic link leads out of the restore roots (to {real[:200]})")
    if not os.path.exists(real):
        raise ShimError(f"restore-from {shown!r}: no such file or folder")
    return real


def image_folder(folder: str) -> str:
    """The folder holding checkpoint.img: ``folder`` or its ``checkpoint/``; its files must be plain files."""
    for candidate in (folder, os.path.join(folder, "checkpoint")):
        try:
            st = os.lstat(os.path.join(candidate, STATE_FILE))
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode):
            raise ShimError(f"{candidate}/{STATE_FILE}: not a plain file (links are not followed)")
        for name in os.listdir(candidate):
            if not stat.S_ISREG(os.lstat(os.path.join(candidate, name)).st_mode) and name != "checkpoint":
                raise ShimError(f"{candidate}/{name}: not a plain file (links are not followed)")
        return candidate
    raise ShimError(f"{folder}: no {STATE_FILE} in it or in its checkpoint/ folder")


def resolve(value: str, roots: tuple[str, ...], state_dir: str, lock_wait_s: float) -> Source:
    """The image a ``restore-from`` value names: checked, and unpacked when it is an archive."""
    real = check_path(value, roots)
    if os.path.isdir(real):
        image = image_folder(real)
        dump = os.path.join(os.path.dirname(image), "spec.dump") if image != real else os.path.join(real, "spec.dump")
        return Source(image, dump if os.path.isfile(dump) and not os.path.islink(dump) else None)
    if not os.path.isfile(real):
        raise ShimError(f"restore-from {value[:200]!r}: neither a folder nor a plain file")
    entry = unpacked(real, state_dir, lock_wait_s)
    dump = os.path.join(entry, "spec.dump")
    return Source(image_folder(entry), dump if os.path.isfile(dump) else None)


def cache_key(path: str, st: os.stat_result) -> str:
    import hashlib

    ident = f"{path}\0{st.st_dev}\0{st.st_ino}\0{st.st_size}\0{st.st_mtime_ns}"
    return hashlib.sha256(ident.encode()).hexdigest()[:32]


def unpacked(path: str, state_dir: str, lock_wait_s: float) -> str:
    """The cache folder of archive ``path``: unpacked now, or earlier while the archive is unchanged."""
    import shutil

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise ShimError(f"{path}: {e.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        key = cache_key(path, st)
        cache = os.path.join(state_dir, CACHE)
        entry = os.path.join(cache, key)
        with container_lock(state_dir, CACHE, key, lock_wait_s):
            if os.path.isfile(os.path.join(entry, DONE)):
                os.utime(os.path.join(entry, DONE))  # used now: gc keeps it
                return entry
            os.makedirs(cache, mode=0o700, exist_ok=True)
            work = os.path.join(cache, f".{key}.{os.getpid()}")
            shutil.rmtree(work, ignore_errors=True)
            os.mkdir(work, 0o700)
            try:
                extract(f, path, work, shutil.disk_usage(cache).free - FREE_MARGIN)
                record = {"archive": path, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "unpacked": time.time()}
                with open(os.path.join(work, DONE), "w") as out:
                    json.dump(record, out)
                shutil.rmtree(entry, ignore_errors=True)
                os.rename(work, entry)
            except BaseException:
                shutil.rmtree(work, ignore_errors=True)
                raise
    return entry


def member_target(member: tarfile.TarInfo) -> str | None:
    """Where a member goes (relative), None for one that is skipped; ShimError for one that is refused."""
    name = member.name
    shown = name[:200]
    if name.startswith("/") or "\0" in name or len(name) > MAX_PATH:
        raise ShimError(f"member {shown!r}: an absolute or unusable name")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ShimError(f"member {shown!r}: '..' is not allowed")
    if not (member.isfile() or member.isdir()):
        kind = "link" if member.issym() or member.islnk() else "device or special file"
        raise ShimError(f"member {shown!r}: a {kind} (only plain files and folders are taken)")
    if not parts:
        return None
    if parts[0] == "checkpoint" and len(parts) <= 2:
        return "/".join(parts)
    if len(parts) == 1 and parts[0] in TAKEN:
        return parts[0]
    return None  # rootfs-diff.tar, logs, status: gVisor's image holds the container's files itself


def extract(f: object, path: str, target: str, room: int) -> None:
    """Check every member, then write the ones taken into ``target`` (ShimError: nothing is kept)."""
    import tarfile

    total = 0
    count = 0
    try:
        with tarfile.open(fileobj=f, mode="r:*") as tar:  # type: ignore[call-overload]
            for member in tar:
                count += 1
                if count > MAX_MEMBERS:
                    raise ShimError(f"archive {path}: more than {MAX_MEMBERS} members")
                rel = member_target(member)
                if rel is None:
                    continue
                total += member.size
                if total > room:
                    raise ShimError(f"archive {path}: larger than the free space under the restore cache")
                dest = os.path.join(target, rel)
                if member.isdir():
                    os.makedirs(dest, mode=0o700, exist_ok=True)
                    continue
                os.makedirs(os.path.dirname(dest), mode=0o700, exist_ok=True)
                _copy(tar, member, dest)
    except ShimError as e:
        raise ShimError(e.message if e.message.startswith("archive") else f"archive {path}: {e.message}") from None
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:
        raise ShimError(f"archive {path} is damaged or truncated: {e}") from None


def _copy(tar: tarfile.TarFile, member: tarfile.TarInfo, dest: str) -> None:
    src = tar.extractfile(member)
    if src is None:
        raise ShimError(f"member {member.name[:200]!r}: cannot be read")
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as out:
        left = member.size
        while left > 0:
            chunk = src.read(min(CHUNK, left))
            if not chunk:
                raise ShimError(f"member {member.name[:200]!r}: truncated")
            out.write(chunk)
            left -= len(chunk)


def collect(state_dir: str, max_age_s: float, now: float | None = None) -> tuple[list[str], list[str]]:
    """Remove cache entries not used for ``max_age_s`` (0: all) and not in use; (removed, kept in use)."""
    import shutil

    cache = os.path.join(state_dir, CACHE)
    now = time.time() if now is None else now
    removed: list[str] = []
    busy: list[str] = []
    with contextlib.suppress(FileNotFoundError):
        for name in sorted(os.listdir(cache)):
            entry = os.path.join(cache, name)
            if name.startswith("."):  # an unpacking that died: its lock is free once it has
                key = name[1:].split(".", 1)[0]
            else:
                key = name
                with contextlib.suppress(OSError):
                    if now - os.stat(os.path.join(entry, DONE)).st_mtime < max_age_s:
                        continue
            try:
                with container_lock(state_dir, CACHE, key, 0.0):
                    shutil.rmtree(entry)
                    removed.append(entry)
            except ShimError:
                busy.append(entry)
    return removed, busy
