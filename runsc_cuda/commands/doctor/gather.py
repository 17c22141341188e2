"""``runsc-cuda doctor``'s I/O: it loads the config, runs ``runsc --version``, ``runsc help
checkpoint`` and (only when it is trusted) ``cuda-checkpoint --help``, stats files, reads
/proc/driver/nvidia and Docker's and containerd's configs, and looks for criu."""

from __future__ import annotations

import json
import os
import stat
import tomllib
from collections.abc import Callable, Mapping, Sequence

from runsc_cuda import config as config_mod
from runsc_cuda import layout
from runsc_cuda.commands.doctor.facts import Facts, FileInfo, Probe, TextFile
from runsc_cuda.commands.doctor.integrations import containerd_runtimes, docker_runtimes, runsc_shim_config_paths
from runsc_cuda.cuda import host
from runsc_cuda.errors import ShimError
from runsc_cuda.oci.runsc import ENV_RUNSC, child_environ, config_path, own_executable, resolve_runsc, which
from runsc_cuda.runner import Runner

PROBE_TIMEOUT_S = 15.0


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
    # Never run a cuda-checkpoint that create would not mount (cuda.host.trust_problem): doctor runs as root.
    trusted = binary is not None and (settings.trust_cuda_checkpoint or binary.problem is None)
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
