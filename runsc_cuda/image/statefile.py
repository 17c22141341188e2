"""What a runsc checkpoint image says about its pod: the header of ``checkpoint.img``.

runsc's state file starts with ``gVisorSF``, an 8-byte big-endian length and
that many bytes of JSON metadata (string values). ``container_count`` is how
many containers the sandbox held and ``container_specs`` (JSON in a string)
maps each container's name (``io.kubernetes.cri.container-name``; the pause
container has none and is ``__no_name_0``) to its OCI spec.  runsc restores a
pod by those names, so a new pod restores when its containers carry the same
names.  The image is untrusted input: the header is read with bounds and
checked, never followed anywhere.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from runsc_cuda.errors import ShimError
from runsc_cuda.oci import cri
from runsc_cuda.oci.cri import CONTAINER_TYPE, SANDBOX

STATE_FILE = "checkpoint.img"
MAGIC = b"gVisorSF"
MAX_METADATA = 16 << 20


@dataclass(frozen=True)
class PodImage:
    """The containers a checkpoint image holds: by name, with their saved specs."""

    count: int
    specs: dict[str, dict[str, Any]]  # name -> saved OCI spec

    @property
    def sandbox_name(self) -> str | None:
        """The pod's first (pause) container's name in the image, if it has one."""
        for name, doc in self.specs.items():
            if cri.annotations_of(doc).get(CONTAINER_TYPE) == SANDBOX:
                return name
        return None

    @property
    def container_names(self) -> list[str]:
        """The names of the containers that join the sandbox (not the pause container), sorted."""
        return sorted(name for name in self.specs if name != self.sandbox_name)


def read(image: str) -> PodImage:
    """The pod an image holds (ShimError for a file that is no runsc image or is damaged)."""
    path = os.path.join(image, STATE_FILE)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise ShimError(f"{path}: {e.strerror}") from None
    try:
        with os.fdopen(fd, "rb") as f:
            head = f.read(len(MAGIC) + 8)
            if len(head) < len(MAGIC) + 8 or not head.startswith(MAGIC):
                raise ShimError(f"{path}: not a runsc checkpoint image")
            size = int.from_bytes(head[len(MAGIC) :], "big")
            if size > MAX_METADATA:
                raise ShimError(f"{path}: damaged (metadata of {size} bytes)")
            raw = f.read(size)
    except OSError as e:
        raise ShimError(f"{path}: {e.strerror}") from None
    if len(raw) != size:
        raise ShimError(f"{path}: truncated")
    return parse(raw, path)


def parse(raw: bytes, path: str) -> PodImage:
    try:
        meta = json.loads(raw)
        count = int(meta["container_count"])
        specs = json.loads(meta.get("container_specs") or "{}")
    except (ValueError, KeyError, TypeError):
        raise ShimError(f"{path}: damaged metadata (no container count or specs)") from None
    if not isinstance(specs, dict) or not all(isinstance(k, str) and isinstance(v, dict) for k, v in specs.items()):
        raise ShimError(f"{path}: damaged metadata (container specs)")
    if count != len(specs) or not 0 < count <= 1024:
        raise ShimError(f"{path}: damaged metadata ({count} containers, {len(specs)} specs)")
    return PodImage(count, specs)
