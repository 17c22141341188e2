"""The checks of ``runsc-cuda doctor`` for what calls runsc-cuda: Docker's and containerd's configs, criu.

Docker, containerd and criu are optional unless named with ``--require``.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from runsc_cuda import layout
from runsc_cuda.commands.doctor.checks import Check, _fail, _ok, _skip
from runsc_cuda.commands.doctor.facts import Facts, TextFile

# --- Docker ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Registration:
    """One runtime an engine's config names: its name, its binary and in which form."""

    name: str
    binary: str
    form: str


def docker_runtimes(doc: Mapping[str, Any]) -> list[Registration]:
    """Every runtime of a daemon.json with the binary it runs (path form, or runtimeType + options)."""
    out: list[Registration] = []
    runtimes = doc.get("runtimes")
    if not isinstance(runtimes, dict):
        return out
    for name, entry in runtimes.items():
        if not isinstance(entry, dict):
            continue
        if isinstance(entry.get("path"), str):
            out.append(Registration(str(name), entry["path"], "path"))
            continue
        options = entry.get("options")
        binary = options.get("BinaryName") if isinstance(options, dict) else None
        if entry.get("runtimeType") == layout.RUNC_V2_SHIM and isinstance(binary, str):
            out.append(Registration(str(name), binary, "runtimeType"))
    return out


def is_runsc_cuda(binary: str, own: Sequence[str]) -> bool:
    """A runtime binary that is runsc-cuda: by name, or the very program running now."""
    if os.path.basename(binary) == layout.RUNTIME_NAME:
        return True
    return bool(binary) and os.path.realpath(binary) in own


def _registered_binary_problem(reg: Registration, f: Facts) -> str | None:
    info = f.registered.get(reg.binary)
    if not os.path.isabs(reg.binary):
        return None  # a name looked up on the daemon's PATH
    if info is None or not info.exists:
        return f"{reg.binary} does not exist"
    if not info.executable:
        return f"{reg.binary} is not an executable file"
    return None


def check_docker(f: Facts, required: bool) -> list[Check]:
    reg_title = "Docker registers runsc-cuda"
    exp_title = "Docker experimental on (checkpoints)"
    path = f.docker.path
    register_fix = f"add a runsc-cuda runtime to {path} (see {layout.DOC_DIR}/examples/docker), then restart Docker"
    if f.docker.error:
        return [
            _fail("docker.runtime", reg_title, f.docker.error, f"fix {path}", required),
            _skip("docker.experimental", exp_title, f"{path} unreadable", required),
        ]
    if f.docker.text is None:
        return [
            _fail("docker.runtime", reg_title, f"{path} does not exist", register_fix, required)
            if required
            else _skip("docker.runtime", reg_title, f"{path} does not exist (Docker not set up here)", required),
            _skip("docker.experimental", exp_title, f"no {path}", required),
        ]
    try:
        doc = json.loads(f.docker.text)
    except ValueError as e:
        return [
            _fail("docker.runtime", reg_title, f"{path}: invalid JSON: {e}", f"fix the JSON in {path}", required),
            _skip("docker.experimental", exp_title, "invalid JSON", required),
        ]
    if not isinstance(doc, dict):
        doc = {}
    out: list[Check] = []
    ours = [r for r in docker_runtimes(doc) if is_runsc_cuda(r.binary, f.own)]
    if not ours:
        out.append(_fail("docker.runtime", reg_title, f"no runtime in {path} runs runsc-cuda", register_fix, required))
    else:
        reg = ours[0]
        problem = _registered_binary_problem(reg, f)
        detail = f"runtime {reg.name!r} -> {reg.binary} ({reg.form} form)"
        if problem:
            fix = f"install runsc-cuda at {reg.binary} or correct the path in {path}"
            out.append(_fail("docker.runtime", reg_title, f"{detail}: {problem}", fix, required))
        else:
            out.append(_ok("docker.runtime", reg_title, detail + "; use docker run --runtime=" + reg.name, required))
    if doc.get("experimental") is True:
        out.append(_ok("docker.experimental", exp_title, f'"experimental": true in {path}', required))
    else:
        fix = f'set "experimental": true in {path} and restart Docker (docker checkpoint needs it)'
        out.append(_fail("docker.experimental", exp_title, f'"experimental" is not true in {path}', fix, required))
    return out


# --- containerd ------------------------------------------------------------------------


def _cri_runtimes(doc: Mapping[str, Any]) -> dict[str, Any]:
    """``plugins."<CRI plugin of this version>".containerd.runtimes``, or {}."""
    node: Any = doc
    version = doc.get("version")
    plugin = layout.CONTAINERD_CRI_PLUGIN.get(version) if isinstance(version, int) else None
    if plugin is None:
        return {}
    for key in ("plugins", plugin, "containerd", "runtimes"):
        node = node.get(key) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else {}


def containerd_runtimes(
    doc: Mapping[str, Any], shim_configs: Mapping[str, TextFile] | None = None
) -> tuple[int | None, list[Registration]]:
    """The config version and every CRI runtime with the binary it runs.

    runc.v2 runtimes name it with ``options.BinaryName``; gVisor's runsc.v1
    shim with ``binary_name`` in the file its ``options.ConfigPath`` names.
    """
    raw = doc.get("version")
    version = raw if isinstance(raw, int) and not isinstance(raw, bool) else None
    out: list[Registration] = []
    for name, entry in _cri_runtimes(doc).items():
        if not isinstance(entry, dict):
            continue
        raw_options = entry.get("options")
        options: dict[str, Any] = raw_options if isinstance(raw_options, dict) else {}
        kind = entry.get("runtime_type")
        binary_name = options.get("BinaryName")
        config_file = options.get("ConfigPath")
        if kind == layout.RUNC_V2_SHIM and isinstance(binary_name, str):
            out.append(Registration(str(name), binary_name, "runc.v2 BinaryName"))
        elif kind == layout.RUNSC_V1_SHIM and isinstance(config_file, str):
            binary = runsc_shim_binary((shim_configs or {}).get(config_file))
            if binary:
                out.append(Registration(str(name), binary, f"runsc.v1 binary_name in {config_file}"))
    return version, out


def runsc_shim_binary(conf: TextFile | None) -> str | None:
    """``binary_name`` of a runsc.v1 shim's runsc.toml."""
    if conf is None or conf.text is None:
        return None
    try:
        doc = tomllib.loads(conf.text)
    except tomllib.TOMLDecodeError:
        return None
    value = doc.get("binary_name")
    return value if isinstance(value, str) else None


def runsc_shim_config_paths(doc: Mapping[str, Any]) -> list[str]:
    """ConfigPath of every runsc.v1 runtime (gather reads them)."""
    out = []
    for entry in _cri_runtimes(doc).values():
        if isinstance(entry, dict) and entry.get("runtime_type") == layout.RUNSC_V1_SHIM:
            options = entry.get("options")
            path = options.get("ConfigPath") if isinstance(options, dict) else None
            if isinstance(path, str):
                out.append(path)
    return out


def check_containerd(f: Facts, required: bool) -> list[Check]:
    title = "containerd has the runsc-cuda handler"
    path = f.containerd.path
    fix = f"add the runsc-cuda runtime to {path} (see {layout.DOC_DIR}/examples/containerd), then restart containerd"
    if f.containerd.error:
        return [_fail("containerd.handler", title, f.containerd.error, f"fix {path}", required)]
    if f.containerd.text is None:
        if required:
            return [_fail("containerd.handler", title, f"{path} does not exist", fix, required)]
        return [_skip("containerd.handler", title, f"{path} does not exist (containerd not set up here)", required)]
    try:
        doc = tomllib.loads(f.containerd.text)
    except tomllib.TOMLDecodeError as e:
        return [_fail("containerd.handler", title, f"{path}: invalid TOML: {e}", f"fix the TOML in {path}", required)]
    version, regs = containerd_runtimes(doc, f.runsc_shim_configs)
    if version not in layout.CONTAINERD_CRI_PLUGIN:
        detail = f"{path} has version = {version}" if version is not None else f"{path} has no version (version 1)"
        vfix = "write the config as version = 2 (containerd 1.x) or version = 3 (containerd 2.x)"
        return [_fail("containerd.handler", title, detail, vfix, required)]
    ours = [r for r in regs if is_runsc_cuda(r.binary, f.own)]
    if not ours:
        plugin = layout.CONTAINERD_CRI_PLUGIN[version]
        detail = f'no runtime under plugins."{plugin}".containerd.runtimes runs runsc-cuda'
        return [_fail("containerd.handler", title, detail, fix, required)]
    reg = ours[0]
    problem = _registered_binary_problem(reg, f)
    detail = f"handler {reg.name!r} -> {reg.binary} ({reg.form}, config version {version})"
    if problem:
        bfix = f"install runsc-cuda at {reg.binary} or correct the path in {path}"
        return [_fail("containerd.handler", title, f"{detail}: {problem}", bfix, required)]
    return [_ok("containerd.handler", title, detail + f"; RuntimeClass handler: {reg.name}", required)]


def check_criu(f: Facts, required: bool) -> list[Check]:
    title = "criu present (Kubernetes checkpoints)"
    if f.criu:
        return [_ok("criu", title, f"{f.criu} (containerd only checks that it exists; runsc does the work)", required)]
    detail = "no criu on PATH: containerd's CRI checkpoint refuses without it, even for runsc"
    return [_fail("criu", title, detail, "install criu (e.g. apt-get install criu) on every GPU node", required)]
