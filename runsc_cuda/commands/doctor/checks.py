"""The checks of ``runsc-cuda doctor`` for this host's own parts: pure functions of the facts.

Required: the config loads; runsc is found, runs and has nvproxy (``runsc
flags`` lists ``--nvproxy``: without it no GPU container starts); a trusted host
cuda-checkpoint exists (by the same rule ``create`` uses before it mounts one:
``cuda.host.trust_problem``); the NVIDIA driver is there with GPUs.  What the
checkpoint engine needs is required for the engine that will be used
(``--action`` and driver 555+ for the exec engine, runsc's
``--cuda-checkpoint-path`` for the native one).  ``state_dir`` must be a folder
only root can change.  Every failed check says how to fix it in one line.
runsc's version is only reported (a source build has none); what it can do is
read from its flags.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass

from runsc_cuda import files, layout
from runsc_cuda.commands.doctor.facts import Facts, Probe
from runsc_cuda.cuda import engine, host, protocol
from runsc_cuda.image import tuning
from runsc_cuda.oci import help
from runsc_cuda.oci.help import RunscHelp

DRIVER_NEEDED = 555  # cuda-checkpoint --action and --get-state
DRIVER_RECOMMENDED = 570

OK, FAIL, SKIP = "ok", "fail", "skip"


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


def exit_status(results: Sequence[Check]) -> int:
    return 1 if any(c.failed and c.required for c in results) else 0


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
    return RunscHelp.parse(probe.stdout).knows(engine.NATIVE_FLAG)


def effective_engine(f: Facts) -> str | None:
    """The engine a checkpoint would use: native, exec, or None when runsc is unknown."""
    setting = engine_setting(f)
    if setting != "auto":
        return setting  # a native setting on a runsc without it: check_runsc says so
    native = runsc_is_native(f)
    return None if native is None else engine.choose("auto", native)


# --- runsc -------------------------------------------------------------------------


def check_runsc(f: Facts) -> list[Check]:
    out: list[Check] = []
    if f.runsc is None:
        fix = "install gVisor's runsc, or set runsc in the config file (or RUNSC_CUDA_RUNSC)"
        out.append(_fail("runsc.found", "runsc found", f.runsc_error or "not found", fix))
        for cid, title in (
            ("runsc.runs", "runsc runs"),
            ("runsc.version", "runsc version"),
            ("runsc.nvproxy", NVPROXY_TITLE),
            ("runsc.native", "runsc native CUDA checkpoint"),
            ("runsc.image_flags", IMAGE_FLAGS_TITLE),
        ):
            out.append(_skip(cid, title, "runsc not found", required=cid != "runsc.image_flags"))
        return out
    out.append(_ok("runsc.found", "runsc found", f.runsc))
    probe = f.runsc_version
    if probe is None or not probe.ok:
        detail = probe.describe() if probe else "not run"
        out.append(_fail("runsc.runs", "runsc runs", f"{f.runsc} --version: {detail}", f"reinstall runsc ({f.runsc})"))
        out.append(_skip("runsc.version", "runsc version", "runsc does not run", required=False))
        out.append(_skip("runsc.nvproxy", NVPROXY_TITLE, "runsc does not run"))
        out.append(_skip("runsc.native", "runsc native CUDA checkpoint", "runsc does not run", required=False))
        out.append(_skip("runsc.image_flags", IMAGE_FLAGS_TITLE, "runsc does not run", required=False))
        return out
    out.append(_ok("runsc.runs", "runsc runs", f"{f.runsc} --version exits 0"))
    out.append(_ok("runsc.version", "runsc version", help.describe_release(probe.stdout), required=False))
    out.append(check_nvproxy(f))
    setting = engine_setting(f)
    title = "runsc native CUDA checkpoint"
    native = runsc_is_native(f)
    required = setting == "native"
    help_probe = f.runsc_help_checkpoint
    if native is None:
        detail = f"runsc help checkpoint: {help_probe.describe() if help_probe else 'not run'}"
        out.append(_fail("runsc.native", title, detail, "reinstall runsc", required=required))
    elif native:
        out.append(_ok("runsc.native", title, f"checkpoint --{engine.NATIVE_FLAG}: native engine", required=required))
    else:
        detail = f"runsc checkpoint has no --{engine.NATIVE_FLAG}" + ("" if required else "; the exec engine is used")
        fix = f"upgrade runsc to {engine.NATIVE_RELEASE} or later" + ("" if required else " for the native engine")
        if required:
            fix += ', or set engine = "exec"'
        out.append(_fail("runsc.native", title, detail, fix, required=required))
    out.append(check_image_flags(f))
    return out


NVPROXY_TITLE = "runsc has nvproxy (GPU containers)"
IMAGE_FLAGS_TITLE = "runsc checkpoint/restore image flags"
UPGRADE = f"install gVisor {help.GPU_RELEASE} or later from {help.WHERE_TO_GET}"


def _help_of(probe: Probe | None) -> RunscHelp | None:
    return RunscHelp.parse(probe.stdout + probe.stderr) if probe is not None and probe.ok else None


def check_nvproxy(f: Facts) -> Check:
    """``runsc flags`` (on stderr) lists --nvproxy: create passes it for every GPU container."""
    probe = f.runsc_flags
    flags = _help_of(probe)
    found = help.has_nvproxy(flags) if flags is not None else None
    if found is None:
        detail = f"runsc flags: {probe.describe() if probe else 'not run'}"
        return _fail("runsc.nvproxy", NVPROXY_TITLE, detail, f"reinstall runsc ({f.runsc}), or {UPGRADE}")
    if not found:
        version = f.runsc_version.stdout if f.runsc_version is not None else ""
        release = help.describe_release(version)
        detail = f"runsc flags lists no --{help.NVPROXY_FLAG} ({release}): no GPU container starts"
        return _fail("runsc.nvproxy", NVPROXY_TITLE, detail, UPGRADE)
    return _ok("runsc.nvproxy", NVPROXY_TITLE, f"--{help.NVPROXY_FLAG}")


def check_image_flags(f: Facts) -> Check:
    """The image flags runsc-cuda may add (image.tuning.KNOBS): those runsc lacks are never passed."""
    helps = {"checkpoint": _help_of(f.runsc_help_checkpoint), "restore": _help_of(f.runsc_help_restore)}
    unread = [verb for verb, text in helps.items() if text is None]
    if unread:
        detail = f"runsc help {'|'.join(unread)} did not answer"
        return _fail("runsc.image_flags", IMAGE_FLAGS_TITLE, detail, f"reinstall runsc ({f.runsc})", required=False)
    missing = [f"{k.verb} --{k.flag}" for k in tuning.KNOBS if not (helps[k.verb] or RunscHelp()).knows(k.flag)]
    if missing:
        detail = f"no {', '.join(missing)}: those image options are left out"
        return _fail("runsc.image_flags", IMAGE_FLAGS_TITLE, detail, f"for them, {UPGRADE}", required=False)
    return _ok("runsc.image_flags", IMAGE_FLAGS_TITLE, ", ".join(f"{k.verb} --{k.flag}" for k in tuning.KNOBS), False)


# --- cuda-checkpoint -----------------------------------------------------------------


def action_support(help_text: str) -> bool:
    """cuda-checkpoint's help lists ``--action`` (drivers 555+; 550 has only --toggle)."""
    return protocol.Capabilities.from_help(help_text).actions


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
    problem = binary.problem  # cuda.host.trust_problem: the rule create follows before it mounts the file
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


# --- state_dir -----------------------------------------------------------------------


def check_state_dir(f: Facts) -> list[Check]:
    """The folder of runsc-cuda's locks and help cache: only its user may change it (``files``'s
    rule, the one checkpoint and restore apply before they take a lock)."""
    title = "state_dir only root can change" if f.euid == 0 else "state_dir private"
    info = f.state_dir
    if info is None:
        return [_skip("state_dir", title, "not looked at")]
    if info.error is not None:
        return [_fail("state_dir", title, info.error, files.private_dir_fix(info.path, f.euid))]
    if not info.exists:
        return [_ok("state_dir", title, f"{info.path} (created with mode 0700 on first use)")]
    problem = files.private_dir_problem(info.uid, info.mode, f.euid)
    if problem is not None:
        return [_fail("state_dir", title, f"{info.path} {problem}", files.private_dir_fix(info.path, f.euid))]
    return [_ok("state_dir", title, f"{info.path} (mode {stat.S_IMODE(info.mode):04o})")]
