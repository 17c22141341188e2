"""``runsc-cuda doctor --require kubernetes``: what checkpoint and restore of pods need on a node.

- containerd 2.x (its CRI plugin calls the runc.v2 shim's Checkpoint; 1.x has no CRI checkpoint);
- the runsc-cuda handler's ``pod_annotations`` let ``dev.runsc-cuda.restore-from`` through (else a
  pod's restore annotation never reaches runsc-cuda and the pod starts cold);
- criu 3.16 or later on PATH (containerd's CRI checkpoint refuses without it, whatever the runtime);
- the restore roots exist, are folders owned by root that only root can write (whoever can write
  there chooses what pods restore).

``gather_kubernetes`` does the I/O; ``check_kubernetes`` is pure.
"""

from __future__ import annotations

import fnmatch
import os
import re
import stat
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from runsc_cuda.commands.doctor.checks import Check, _fail, _ok, _skip
from runsc_cuda.commands.doctor.facts import Facts, Probe
from runsc_cuda.commands.doctor.integrations import _cri_runtimes, containerd_runtimes, is_runsc_cuda

RESTORE_ANNOTATION = "dev.runsc-cuda.restore-from"
CRIU_MIN = (3, 16)


@dataclass(frozen=True)
class RootInfo:
    path: str
    exists: bool
    folder: bool = False
    uid: int = -1
    mode: int = 0


@dataclass(frozen=True)
class KubeFacts:
    containerd_version: Probe | None
    criu_version: Probe | None
    roots: tuple[RootInfo, ...]


def gather_kubernetes(f: Facts, run: Any, path: str | None) -> KubeFacts:
    """containerd's and criu's versions (``run(argv) -> Probe``) and the restore roots' owners and modes."""
    from runsc_cuda.oci.runsc import which

    containerd = which("containerd", path)
    roots = []
    for root in f.config.restore_roots if f.config is not None else ():
        try:
            st = os.stat(root)
        except OSError:
            roots.append(RootInfo(root, False))
            continue
        roots.append(RootInfo(root, True, stat.S_ISDIR(st.st_mode), st.st_uid, st.st_mode))
    return KubeFacts(
        run([containerd, "--version"]) if containerd else None,
        run([f.criu, "--version"]) if f.criu else None,
        tuple(roots),
    )


def version_of(text: str, prefix: str = "") -> tuple[int, ...] | None:
    match = re.search(re.escape(prefix) + r"v?(\d+)\.(\d+)(?:\.(\d+))?", text)
    return tuple(int(g) for g in match.groups() if g is not None) if match else None


def handler_annotations(text: str | None, own: Sequence[str]) -> tuple[str, list[str]] | None:
    """The runsc-cuda handler's name and its ``pod_annotations`` in containerd's config."""
    if text is None:
        return None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return None
    _version, regs = containerd_runtimes(doc)
    entries: Mapping[str, Any] = _cri_runtimes(doc)
    for reg in regs:
        if is_runsc_cuda(reg.binary, own):
            entry = entries.get(reg.name) or {}
            globs = entry.get("pod_annotations") if isinstance(entry, dict) else None
            return reg.name, [g for g in globs or [] if isinstance(g, str)]
    return None


def check_kubernetes(f: Facts, k: KubeFacts, required: bool) -> list[Check]:
    out: list[Check] = []
    title = "containerd 2.x (CRI checkpoint)"
    probe = k.containerd_version
    found = version_of(probe.stdout, "containerd/v2 ") or version_of(probe.stdout) if probe and probe.ok else None
    if probe is None:
        out.append(_fail("kubernetes.containerd", title, "no containerd on PATH", "install containerd 2.x", required))
    elif found is None or found[0] < 2:
        detail = f"containerd --version: {probe.stdout.strip()[:120] or probe.describe()}"
        out.append(_fail("kubernetes.containerd", title, detail, "upgrade to containerd 2.x", required))
    else:
        out.append(_ok("kubernetes.containerd", title, f"containerd {'.'.join(map(str, found))}", required))

    title = f"pod_annotations let {RESTORE_ANNOTATION} through"
    handler = handler_annotations(f.containerd.text, f.own)
    if handler is None:
        out.append(_skip("kubernetes.annotations", title, "no runsc-cuda handler in containerd's config", required))
    else:
        name, globs = handler
        if any(fnmatch.fnmatchcase(RESTORE_ANNOTATION, g) for g in globs):
            out.append(_ok("kubernetes.annotations", title, f"handler {name!r}: pod_annotations {globs}", required))
        else:
            fix = f'add pod_annotations = ["dev.runsc-cuda.*"] to the {name} runtime and restart containerd'
            detail = f"handler {name!r}: pod_annotations {globs}: pods cannot ask for a restore"
            out.append(_fail("kubernetes.annotations", title, detail, fix, required))

    title = "criu 3.16 or later (containerd's CRI checkpoint)"
    probe = k.criu_version
    criu = version_of(probe.stdout, "Version: ") if probe and probe.ok else None
    if probe is None:
        out.append(_fail("kubernetes.criu", title, "no criu on PATH", "apt-get install criu", required))
    elif criu is None or criu[:2] < CRIU_MIN:
        detail = f"criu --version: {probe.stdout.strip()[:80] or probe.describe()}"
        out.append(_fail("kubernetes.criu", title, detail, "install criu 3.16 or later", required))
    else:
        out.append(_ok("kubernetes.criu", title, f"criu {'.'.join(map(str, criu))} ({f.criu})", required))

    title = "restore roots present and owned by root"
    bad = [why for r in k.roots if (why := root_problem(r))]
    if not k.roots:
        off = "restore_roots = []: restore by annotation is off"
        out.append(_skip("kubernetes.restore_roots", title, off, required))
    elif bad:
        fix = "mkdir -p the root(s), chown root:root, chmod 755 (or 700); or change restore_roots"
        out.append(_fail("kubernetes.restore_roots", title, "; ".join(bad), fix, required))
    else:
        out.append(_ok("kubernetes.restore_roots", title, ", ".join(r.path for r in k.roots), required))
    return out


def root_problem(r: RootInfo) -> str | None:
    if not r.exists:
        return f"{r.path} does not exist"
    if not r.folder:
        return f"{r.path} is not a folder"
    if r.uid != 0:
        return f"{r.path} is owned by uid {r.uid}, not root"
    if r.mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"{r.path} can be written by others than root (mode {stat.S_IMODE(r.mode):o})"
    return None
