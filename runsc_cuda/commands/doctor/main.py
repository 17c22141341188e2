"""``runsc-cuda doctor``: why would a checkpoint fail on this host?

Two halves.  ``gather`` does all the I/O: it loads the config, runs
``runsc --version``, ``runsc help checkpoint`` and ``cuda-checkpoint --help``,
stats cuda-checkpoint, reads /proc/driver/nvidia and Docker's and
containerd's configs, and looks for criu.  ``checks`` turns those facts into
a list of results with pure functions, so tests feed it fake folders and fake
programs.  Every failed check says how to fix it in one line.  The exit
status is 1 when a required check fails.

Required: the config loads; runsc is found and runs; a trusted host
cuda-checkpoint exists; the NVIDIA driver is there with GPUs.  What the
checkpoint engine needs is required for the engine that will be used
(``--action`` and driver 555+ for the exec engine, runsc's
``--cuda-checkpoint-path`` for the native one).  Docker, containerd and criu
are optional unless named with ``--require``.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from runsc_cuda import __version__, layout
from runsc_cuda import config as config_mod
from runsc_cuda.cuda import host
from runsc_cuda.errors import ShimError
from runsc_cuda.oci.argv import CommandLine
from runsc_cuda.oci.runsc import ENV_RUNSC, child_environ, config_path, own_executable, resolve_runsc, which
from runsc_cuda.runner import Runner

NATIVE_FLAG = "cuda-checkpoint-path"
NATIVE_RUNSC = "release-20260608.0"
DRIVER_NEEDED = 555  # cuda-checkpoint --action and --get-state
DRIVER_RECOMMENDED = 570
PROBE_TIMEOUT_S = 15.0
INTEGRATIONS = ("docker", "containerd", "kubernetes")

OK, FAIL, SKIP = "ok", "fail", "skip"


# --- facts -----------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """What one program printed; ``error`` when it could not be run or timed out."""

    argv: tuple[str, ...]
    returncode: int | None
    stdout: str
    stderr: str
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.returncode == 0

    def describe(self) -> str:
        if self.error:
            return self.error
        first = next((line.strip() for line in (self.stderr + "\n" + self.stdout).splitlines() if line.strip()), "")
        return f"exit status {self.returncode}" + (f": {first[:200]}" if first else "")


@dataclass(frozen=True)
class FileInfo:
    """A file's type, owner and mode (after symlinks), or why it could not be read."""

    path: str
    exists: bool
    regular: bool = False
    uid: int = -1
    mode: int = 0
    error: str | None = None

    @property
    def executable(self) -> bool:
        return self.regular and bool(self.mode & stat.S_IXUSR)


@dataclass(frozen=True)
class TextFile:
    """A config file's path and text (None: absent), or why it could not be read."""

    path: str
    text: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class Facts:
    config_path: str
    config_file_exists: bool
    config: config_mod.Config | None
    config_error: str | None
    runsc: str | None
    runsc_error: str | None
    runsc_version: Probe | None
    runsc_help_checkpoint: Probe | None
    cuda_checkpoint: host.HostBinary | None
    cuda_checkpoint_file: FileInfo | None
    cuda_checkpoint_help: Probe | None
    proc_dir: str
    gpu: host.GpuInfo
    docker: TextFile
    containerd: TextFile
    # Files a containerd runsc.v1 runtime names with ConfigPath.
    runsc_shim_configs: Mapping[str, TextFile] = field(default_factory=dict)
    # Registered runtime binaries: path -> FileInfo.
    registered: Mapping[str, FileInfo] = field(default_factory=dict)
    criu: str | None = None
    own: tuple[str, ...] = ()


# --- results ---------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    id: str
    title: str
    status: str  # ok | fail | skip
    required: bool
    detail: str
    fix: str = ""

    @property
    def failed(self) -> bool:
        return self.status == FAIL


def _ok(cid: str, title: str, detail: str, required: bool = True) -> Check:
    return Check(cid, title, OK, required, detail)


def _fail(cid: str, title: str, detail: str, fix: str, required: bool = True) -> Check:
    return Check(cid, title, FAIL, required, detail, fix)


def _skip(cid: str, title: str, detail: str, required: bool = True) -> Check:
    return Check(cid, title, SKIP, required, detail)


# --- config ------------------------------------------------------------------------


def check_config(f: Facts) -> list[Check]:
    title = "config file"
    if f.config_error is not None:
        if not f.config_file_exists:
            fix = f"create {f.config_path} (see {layout.CONFIG_PATH}) or unset RUNSC_CUDA_CONFIG"
        else:
            fix = f"correct {f.config_path}: every key is listed, commented out, in {layout.CONFIG_PATH}"
        return [_fail("config", title, f.config_error, fix)]
    where = f.config_path if f.config_file_exists else f"defaults ({f.config_path} does not exist)"
    return [_ok("config", title, where)]


def engine_setting(f: Facts) -> str:
    return f.config.engine if f.config is not None else "auto"


def runsc_is_native(f: Facts) -> bool | None:
    """Whether runsc's checkpoint knows --cuda-checkpoint-path; None when unknown."""
    probe = f.runsc_help_checkpoint
    if probe is None or not probe.ok:
        return None
    return native_support(probe.stdout)


def native_support(help_text: str) -> bool:
    """``runsc help checkpoint`` lists the native engine's flag."""
    return NATIVE_FLAG in help_text


def effective_engine(f: Facts) -> str | None:
    """The engine a checkpoint would use: native, exec, or None when runsc is unknown."""
    setting = engine_setting(f)
    if setting != "auto":
        return setting
    native = runsc_is_native(f)
    if native is None:
        return None
    return "native" if native else "exec"


# --- runsc -------------------------------------------------------------------------


def runsc_version_text(text: str) -> str | None:
    """``runsc version X`` -> X."""
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 3 and words[0] == "runsc" and words[1] == "version":
            return words[2]
    return None


def check_runsc(f: Facts) -> list[Check]:
    out: list[Check] = []
    if f.runsc is None:
        fix = "install gVisor's runsc, or set runsc in the config file (or RUNSC_CUDA_RUNSC)"
        out.append(_fail("runsc.found", "runsc found", f.runsc_error or "not found", fix))
        for cid, title in (
            ("runsc.runs", "runsc runs"),
            ("runsc.version", "runsc version"),
            ("runsc.native", "runsc native CUDA checkpoint"),
        ):
            out.append(_skip(cid, title, "runsc not found"))
        return out
    out.append(_ok("runsc.found", "runsc found", f.runsc))
    probe = f.runsc_version
    if probe is None or not probe.ok:
        detail = probe.describe() if probe else "not run"
        out.append(_fail("runsc.runs", "runsc runs", f"{f.runsc} --version: {detail}", f"reinstall runsc ({f.runsc})"))
        out.append(_skip("runsc.version", "runsc version", "runsc does not run", required=False))
        out.append(_skip("runsc.native", "runsc native CUDA checkpoint", "runsc does not run", required=False))
        return out
    out.append(_ok("runsc.runs", "runsc runs", f"{f.runsc} --version exits 0"))
    version = runsc_version_text(probe.stdout)
    out.append(_ok("runsc.version", "runsc version", version or "unknown (a source build?)", required=False))
    setting = engine_setting(f)
    title = "runsc native CUDA checkpoint"
    native = runsc_is_native(f)
    required = setting == "native"
    help_probe = f.runsc_help_checkpoint
    if native is None:
        detail = f"runsc help checkpoint: {help_probe.describe() if help_probe else 'not run'}"
        out.append(_fail("runsc.native", title, detail, "reinstall runsc", required=required))
    elif native:
        out.append(_ok("runsc.native", title, f"checkpoint --{NATIVE_FLAG}: native engine", required=required))
    else:
        detail = f"runsc checkpoint has no --{NATIVE_FLAG}" + ("" if required else "; the exec engine is used")
        fix = f"upgrade runsc to {NATIVE_RUNSC} or later" + ("" if required else " for the native engine")
        if required:
            fix += ', or set engine = "exec"'
        out.append(_fail("runsc.native", title, detail, fix, required=required))
    return out


# --- cuda-checkpoint -----------------------------------------------------------------


def action_support(help_text: str) -> bool:
    """cuda-checkpoint's help lists ``--action`` (drivers 555+; 550 has only --toggle)."""
    return "--action" in help_text


def check_cuda_checkpoint(f: Facts) -> list[Check]:
    out: list[Check] = []
    binary = f.cuda_checkpoint
    names = {
        "found": "cuda-checkpoint found",
        "executable": "cuda-checkpoint executable",
        "trusted": "cuda-checkpoint owned by root, not writable by others",
        "action": "cuda-checkpoint supports --action",
    }
    engine = effective_engine(f)
    action_required = engine != "native"
    if binary is None or f.cuda_checkpoint_file is None or not f.cuda_checkpoint_file.exists:
        detail = binary.problem if binary is not None and binary.problem else "not found"
        where = ", ".join(host.CUDA_CHECKPOINT_CANDIDATES)
        fix = f"install NVIDIA's cuda-checkpoint (driver 555+) as {where.split(', ')[0]}, or set cuda_checkpoint"
        out.append(_fail("cuda_checkpoint.found", names["found"], f"{detail} (looked in config, {where}, PATH)", fix))
        for key in ("executable", "trusted", "action"):
            required = key != "action" or action_required
            out.append(_skip(f"cuda_checkpoint.{key}", names[key], "cuda-checkpoint not found", required))
        return out
    info = f.cuda_checkpoint_file
    out.append(_ok("cuda_checkpoint.found", names["found"], f"{binary.path} (from {binary.source})"))
    if info.executable:
        out.append(_ok("cuda_checkpoint.executable", names["executable"], f"mode {stat.S_IMODE(info.mode):04o}"))
    else:
        detail = info.error or ("not a regular file" if not info.regular else f"mode {stat.S_IMODE(info.mode):04o}")
        out.append(_fail("cuda_checkpoint.executable", names["executable"], detail, f"chmod 755 {binary.path}"))
    trust = f.config.trust_cuda_checkpoint if f.config is not None else False
    problem = trust_problem(info)
    if problem is None:
        out.append(_ok("cuda_checkpoint.trusted", names["trusted"], f"uid 0, mode {stat.S_IMODE(info.mode):04o}"))
    elif trust:
        detail = f"not checked (trust_cuda_checkpoint = true): {problem}"
        out.append(_ok("cuda_checkpoint.trusted", names["trusted"], detail))
    else:
        fix = f"chown root:root {binary.path} && chmod 755 {binary.path}"
        detail = f"{problem}; runsc-cuda will not mount it into containers"
        out.append(_fail("cuda_checkpoint.trusted", names["trusted"], detail, fix))
    probe = f.cuda_checkpoint_help
    title = names["action"]
    why = "needed by the exec engine" if action_required else "not needed by the native engine"
    if probe is None and ((problem is not None and not trust) or not info.executable):
        out.append(_skip("cuda_checkpoint.action", title, "not run: see above", action_required))
    elif probe is None or probe.error is not None:
        detail = f"--help: {probe.describe() if probe else 'not run'}"
        fix = f"reinstall cuda-checkpoint ({binary.path})"
        out.append(_fail("cuda_checkpoint.action", title, detail, fix, action_required))
    elif action_support(probe.stdout + probe.stderr):
        out.append(_ok("cuda_checkpoint.action", title, "--action lock|checkpoint|restore|unlock", action_required))
    else:
        fix = f"use the cuda-checkpoint of NVIDIA driver {DRIVER_NEEDED}+ (the 550 one has only --toggle)"
        out.append(_fail("cuda_checkpoint.action", title, f"--help lists no --action ({why})", fix, action_required))
    return out


def trust_problem(info: FileInfo) -> str | None:
    """host.trust_problem's rule over gathered facts."""
    if info.error:
        return info.error
    if not info.regular:
        return f"{info.path} is not a regular file"
    if info.uid != 0:
        return f"{info.path} is owned by uid {info.uid}, not root"
    if info.mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"{info.path} is writable by group or others (mode {stat.S_IMODE(info.mode):04o})"
    return None


# --- NVIDIA driver -----------------------------------------------------------------


def check_driver(f: Facts) -> list[Check]:
    out: list[Check] = []
    gpu = f.gpu
    major = gpu.driver_major
    engine = effective_engine(f)
    needed_required = engine != "native"
    version_file = os.path.join(f.proc_dir, "version")
    needed = f"NVIDIA driver {DRIVER_NEEDED}+"
    recommended = f"NVIDIA driver {DRIVER_RECOMMENDED}+"
    if gpu.driver_version is None:
        fix = "install the NVIDIA driver (555+; 570+ recommended) and load its kernel module"
        out.append(_fail("driver.version", "NVIDIA driver", f"no driver version in {version_file}", fix))
        out.append(_skip("driver.recommended", recommended, "no driver", required=False))
    elif major is None or major < DRIVER_NEEDED:
        why = "the exec engine needs it" if needed_required else "cuda-checkpoint --action needs it"
        fix = f"upgrade the NVIDIA driver to {DRIVER_NEEDED}+ ({DRIVER_RECOMMENDED}+ recommended)"
        out.append(_fail("driver.version", needed, f"{gpu.driver_version} ({why})", fix, needed_required))
        out.append(_skip("driver.recommended", recommended, f"older than {DRIVER_NEEDED}", required=False))
    else:
        out.append(_ok("driver.version", needed, gpu.driver_version, needed_required))
        if major >= DRIVER_RECOMMENDED:
            out.append(_ok("driver.recommended", recommended, gpu.driver_version, False))
        else:
            fix = f"upgrade the NVIDIA driver to {DRIVER_RECOMMENDED}+ (checkpoint fixes; --device-map needs 580+)"
            out.append(_fail("driver.recommended", recommended, gpu.driver_version, fix, False))
    if gpu.gpus:
        out.append(_ok("driver.gpus", "GPUs", gpu.describe()))
    else:
        fix = "check nvidia-smi; the driver shows no GPU in " + os.path.join(f.proc_dir, "gpus")
        out.append(_fail("driver.gpus", "GPUs", "none", fix))
    return out


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


# --- all of them -----------------------------------------------------------------------


def checks(f: Facts, require: Sequence[str] = ()) -> list[Check]:
    """Every check, in the order they are shown."""
    wanted = set(require)
    return [
        *check_config(f),
        *check_runsc(f),
        *check_cuda_checkpoint(f),
        *check_driver(f),
        *check_docker(f, "docker" in wanted),
        *check_containerd(f, bool(wanted & {"containerd", "kubernetes"})),
        *check_criu(f, "kubernetes" in wanted),
    ]


def exit_status(results: Sequence[Check]) -> int:
    return 1 if any(c.failed and c.required for c in results) else 0


# --- gathering ---------------------------------------------------------------------------


def _probe(runner: Runner, argv: list[str]) -> Probe:
    result = runner.run(argv, PROBE_TIMEOUT_S)
    if result.timed_out:
        return Probe(tuple(argv), None, "", "", f"timed out after {PROBE_TIMEOUT_S:.0f} s")
    stdout = result.stdout.decode("utf-8", errors="replace")
    stderr = result.stderr.decode("utf-8", errors="replace")
    if result.returncode == 127 and not result.stdout and stderr.startswith("cannot execute"):
        return Probe(tuple(argv), 127, "", stderr, stderr)
    return Probe(tuple(argv), result.returncode, stdout, stderr)


def file_info(path: str) -> FileInfo:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return FileInfo(path, False)
    except OSError as e:
        return FileInfo(path, True, error=f"{path}: {e.strerror}")
    return FileInfo(path, True, stat.S_ISREG(st.st_mode), st.st_uid, st.st_mode)


def read_text_file(path: str) -> TextFile:
    try:
        with open(path, encoding="utf-8") as fh:
            return TextFile(path, fh.read(1 << 20))
    except FileNotFoundError:
        return TextFile(path)
    except IsADirectoryError:
        return TextFile(path, error=f"{path} is a directory")
    except UnicodeDecodeError:
        return TextFile(path, error=f"{path} is not UTF-8 text")
    except OSError as e:
        return TextFile(path, error=f"cannot read {path}: {e.strerror}")


def _registered_binaries(docker: TextFile, containerd: TextFile, shim_configs: Mapping[str, TextFile]) -> list[str]:
    out: list[str] = []
    if docker.text is not None:
        try:
            doc = json.loads(docker.text)
        except ValueError:
            doc = None
        if isinstance(doc, dict):
            out.extend(r.binary for r in docker_runtimes(doc))
    if containerd.text is not None:
        try:
            cdoc = tomllib.loads(containerd.text)
        except tomllib.TOMLDecodeError:
            cdoc = {}
        out.extend(r.binary for r in containerd_runtimes(cdoc, shim_configs)[1])
    return out


def gather(
    environ: Mapping[str, str],
    global_args: Sequence[str] = (),
    docker_config: str = layout.DOCKER_CONFIG,
    containerd_config: str = layout.CONTAINERD_CONFIG,
    proc_dir: str | None = None,
    run: Callable[[list[str]], Probe] | None = None,
) -> Facts:
    """Everything the checks look at, read from this host (paths overridable for tests)."""
    if run is None:
        runner = Runner(child_environ(environ), 1 << 20)

        def run(argv: list[str]) -> Probe:
            return _probe(runner, argv)

    cfg_path = config_path(environ)
    cfg: config_mod.Config | None = None
    cfg_error: str | None = None
    try:
        cfg = config_mod.load(environ)
    except ShimError as e:
        cfg_error = e.message
    settings = cfg if cfg is not None else config_mod.Config()

    runsc: str | None = None
    runsc_error: str | None = None
    try:
        runsc = resolve_runsc(environ.get(ENV_RUNSC) or settings.runsc, environ.get("PATH"))
    except ShimError as e:
        runsc_error = e.message
    version = help_checkpoint = None
    if runsc is not None:
        version = run([runsc, *global_args, "--version"])
        if version.ok:
            help_checkpoint = run([runsc, *global_args, "help", "checkpoint"])

    binary = host.find_cuda_checkpoint(settings.cuda_checkpoint, environ, trust=False)
    cc_file = file_info(binary.path) if binary is not None else None
    cc_help = None
    # Never run a cuda-checkpoint that others could have rewritten: doctor runs as root.
    trusted = cc_file is not None and (settings.trust_cuda_checkpoint or trust_problem(cc_file) is None)
    if binary is not None and cc_file is not None and cc_file.executable and trusted:
        cc_help = run([binary.path, "--help"])

    proc = proc_dir or settings.proc_driver_nvidia
    docker = read_text_file(docker_config)
    containerd = read_text_file(containerd_config)
    shim_configs: dict[str, TextFile] = {}
    if containerd.text is not None:
        try:
            for path in runsc_shim_config_paths(tomllib.loads(containerd.text)):
                shim_configs[path] = read_text_file(path)
        except tomllib.TOMLDecodeError:
            pass
    registered = {b: file_info(b) for b in _registered_binaries(docker, containerd, shim_configs) if os.path.isabs(b)}
    me = own_executable()
    own = tuple(sorted({p for p in (me, os.path.realpath(layout.BIN_PATH)) if p}))
    return Facts(
        config_path=cfg_path,
        config_file_exists=os.path.exists(cfg_path),
        config=cfg,
        config_error=cfg_error,
        runsc=runsc,
        runsc_error=runsc_error,
        runsc_version=version,
        runsc_help_checkpoint=help_checkpoint,
        cuda_checkpoint=binary,
        cuda_checkpoint_file=cc_file,
        cuda_checkpoint_help=cc_help,
        proc_dir=proc,
        gpu=host.read_gpu_info(proc),
        docker=docker,
        containerd=containerd,
        runsc_shim_configs=shim_configs,
        registered=registered,
        criu=which("criu", environ.get("PATH")),
        own=own,
    )


# --- output ----------------------------------------------------------------------------


def _symbols(stream: Any) -> dict[str, str]:
    fancy = {OK: "\u2713", FAIL: "\u2717", SKIP: "-"}
    try:
        "".join(fancy.values()).encode(getattr(stream, "encoding", None) or "ascii")
    except (UnicodeEncodeError, LookupError):
        return {OK: "ok", FAIL: "FAIL", SKIP: "-"}
    return fancy


def render_text(results: Sequence[Check], symbols: Mapping[str, str]) -> str:
    lines = [f"runsc-cuda {__version__} doctor"]
    for c in results:
        tag = "" if c.required else " (optional)"
        lines.append(f"{symbols[c.status]} {c.title}: {c.detail}{tag}")
        if c.failed and c.fix:
            lines.append(f"    fix: {c.fix}")
    required = sum(1 for c in results if c.failed and c.required)
    optional = sum(1 for c in results if c.failed and not c.required)
    if required:
        lines.append(f"{required} required check(s) failed, {optional} optional: a checkpoint would fail.")
    elif optional:
        lines.append(f"All required checks passed; {optional} optional check(s) failed.")
    else:
        lines.append("All checks passed.")
    return "\n".join(lines) + "\n"


def render_json(results: Sequence[Check]) -> str:
    doc = {
        "version": __version__,
        "ok": exit_status(results) == 0,
        "checks": [asdict(c) for c in results],
    }
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def parse_args(args: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="runsc-cuda doctor",
        description="Check this host for what GPU checkpoint/restore under gVisor needs.",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--docker-config", default=layout.DOCKER_CONFIG, help="Docker's daemon.json")
    parser.add_argument("--containerd-config", default=layout.CONTAINERD_CONFIG, help="containerd's config.toml")
    parser.add_argument("--proc-driver-nvidia", default=None, help="the NVIDIA driver's /proc folder (default: config)")
    parser.add_argument(
        "--require",
        action="append",
        default=[],
        metavar="|".join(INTEGRATIONS),
        help="make the checks for this engine required (repeat or comma-separate)",
    )
    ns = parser.parse_args(list(args))
    names = [n.strip() for item in ns.require for n in item.split(",") if n.strip()]
    unknown = [n for n in names if n not in INTEGRATIONS]
    if unknown:
        parser.error(f"--require: unknown {', '.join(unknown)} (choose from {', '.join(INTEGRATIONS)})")
    ns.require = names
    return ns


def main(cmd: CommandLine, environ: Mapping[str, str]) -> int:
    """``runsc-cuda [global flags] doctor [--json] ...``: exit 1 when a required check fails."""
    try:
        ns = parse_args(cmd.rest)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2)
        return int(e.code or 0)
    facts = gather(
        environ,
        cmd.global_tokens(),
        docker_config=ns.docker_config,
        containerd_config=ns.containerd_config,
        proc_dir=ns.proc_driver_nvidia,
    )
    results = checks(facts, ns.require)
    out = render_json(results) if ns.json else render_text(results, _symbols(sys.stdout))
    sys.stdout.write(out)
    sys.stdout.flush()
    return exit_status(results)
