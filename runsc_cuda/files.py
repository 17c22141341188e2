"""Files runsc-cuda reads and writes in folders others may reach: never through a link, never blocking.

Small files it owns (the image sidecar, the runsc help cache) are written whole
or not at all, through a fresh temporary file (``O_EXCL|O_NOFOLLOW``: a name
planted in the folder, as a link or a file, is never written through).  Files
it reads (the sidecar, config.json, the help cache) are opened without blocking
and without following a link, must be regular files, and are read up to a bound:
a FIFO or a device in their place is an error, not a hang.  ``state_dir`` must
be a folder only its owner (root, when runsc-cuda runs as root) can change.

config.json has its own, stricter save in ``spec`` (original mode, folder fsync).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat

from runsc_cuda.errors import refusal

TEMP_TRIES = 8
_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def kind(mode: int) -> str:
    """What a file is, in words (``a FIFO``), from its ``st_mode``."""
    if stat.S_ISREG(mode):
        return "a regular file"
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def write_atomic(path: str, text: str, durable: bool = True, mode: int = 0o644) -> None:
    """Write ``text`` to a new temp file next to ``path`` and rename it over; OSError on failure.

    The temp file is created (``O_EXCL|O_NOFOLLOW``, a random name): nothing already
    in the folder is ever opened for writing, and the rename replaces a link at
    ``path`` rather than following it.  ``durable`` fsyncs the data before the
    rename (a cache can do without).
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for attempt in range(TEMP_TRIES):
        tmp = f"{path}.{os.getpid()}.{os.urandom(6).hex()}.tmp"
        try:
            fd = os.open(tmp, flags, mode)
            break
        except FileExistsError:
            if attempt == TEMP_TRIES - 1:
                raise
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_regular(path: str, limit: int) -> tuple[bytes, os.stat_result]:
    """A regular file's bytes (at most ``limit``) and its stat; OSError whose ``strerror`` says why not.

    Opened with ``O_NONBLOCK|O_NOFOLLOW``: a FIFO or a device never blocks the call,
    a link is refused (``ELOOP``), and anything but a regular file is refused
    before a byte is read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise OSError(errno.ELOOP, "is a symbolic link (runsc-cuda does not follow links here)", path) from None
        if e.errno == errno.ENXIO:  # a socket, or a device without a driver: open() cannot say which
            try:
                what = kind(os.lstat(path).st_mode)
            except OSError:
                raise e from None
            raise OSError(errno.ENXIO, f"is {what}, not a regular file", path) from None
        raise
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, "is a directory", path)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, f"is {kind(st.st_mode)}, not a regular file", path)
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise OSError(errno.EFBIG, f"larger than {limit} bytes", path)
        return b"".join(chunks), st
    finally:
        os.close(fd)


# --- state_dir: a folder only its owner can change ----------------------------------------------


def private_dir_problem(uid: int, mode: int, euid: int) -> str | None:
    """Why a folder with this owner and ``st_mode`` is no place for runsc-cuda's locks and caches
    (running as ``euid``), or None. The one rule, used by the runtime and by doctor."""
    owner = "root" if euid == 0 else f"uid {euid}"
    if not stat.S_ISDIR(mode):
        return f"is {kind(mode)}, not a folder"
    if uid != euid:
        return f"is owned by uid {uid}, not {owner}"
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"can be written by other users (mode {stat.S_IMODE(mode):04o})"
    return None


def private_dir_fix(path: str, euid: int) -> str:
    owner = "root" if euid == 0 else str(euid)
    return f"chown {owner} {path} && chmod 700 {path}, or set state_dir to a folder only {owner} can change"


def check_private_dir(path: str) -> str | None:
    """Why ``path`` (and the link to it, if it is one) is not private to this user, or None."""
    euid = os.geteuid()
    try:
        link, st = os.lstat(path), os.stat(path)
    except OSError as e:
        return f"cannot be read: {e.strerror}"
    if stat.S_ISLNK(link.st_mode) and link.st_uid != euid:
        return f"is a link owned by uid {link.st_uid}"
    return private_dir_problem(st.st_uid, st.st_mode, euid)


def ensure_private_dir(path: str, what: str = "state_dir") -> str:
    """Create ``path`` (mode 0700) if needed and check that only this user can change it; ``path``.

    A refusal (nothing was changed) names the folder, what is wrong and the fix.
    """
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError as e:
        raise refusal(f"{what} {path} cannot be created: {e.strerror}") from None
    problem = check_private_dir(path)
    if problem is not None:
        fix = private_dir_fix(path, os.geteuid())
        raise refusal(f"{what} {path} {problem}; runsc-cuda keeps its locks there ({fix})")
    return path
