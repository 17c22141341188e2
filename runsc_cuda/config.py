"""runsc-cuda's configuration: /etc/runsc-cuda/config.toml, overridden by RUNSC_CUDA_* env.

Every key is listed in ``KEYS`` with its type, default and meaning; the
configuration reference in docs/configuration.md is written from the same table.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from runsc_cuda.errors import ShimError
from runsc_cuda.oci.runsc import DEFAULT_STATE_DIR, read_config_text

ENGINES = ("auto", "native", "exec")
TUNING_SCOPES = ("gpu", "all", "off")
LOG_LEVELS = ("debug", "info", "warning", "error")
POSITIVE = (
    "lock_timeout_ms",
    "cuda_call_timeout_s",
    "runsc_call_timeout_s",
    "checkpoint_timeout_s",
    "lock_wait_s",
    "max_output_bytes",
    "max_parallel_cuda_calls",
    "restore_cache_max_age_s",
)
NON_NEGATIVE = ("pod_restore_wait_s",)  # 0: no limit


@dataclass(frozen=True)
class Config:
    """The effective settings. Field names are the TOML keys."""

    runsc: str | None = None
    cuda_checkpoint: str | None = None
    nvproxy: bool = True
    log_file: str | None = None
    log_level: str = "info"
    engine: str = "auto"
    sequential: bool = False
    lock_timeout_ms: int = 10_000
    cuda_call_timeout_s: float = 300.0
    runsc_call_timeout_s: float = 60.0
    checkpoint_timeout_s: float = 3600.0
    state_dir: str = DEFAULT_STATE_DIR
    lock_wait_s: float = 600.0
    proc_driver_nvidia: str = "/proc/driver/nvidia"
    trust_cuda_checkpoint: bool = False
    max_output_bytes: int = 1 << 20
    max_parallel_cuda_calls: int = 64
    tuning: str = "gpu"
    checkpoint_compression: str | None = "none"
    checkpoint_exclude_committed_zero_pages: bool = True
    checkpoint_direct: bool = False
    restore_background: bool = True
    restore_direct: bool = True
    restore_roots: tuple[str, ...] = ("/var/lib/runsc-cuda/checkpoints", "/var/lib/kubelet/checkpoints")
    restore_cache_max_age_s: float = 86400.0
    pod_restore_wait_s: float = 300.0

    def get(self, key: str) -> Any:
        return getattr(self, key)


# One line of documentation per key (docs/configuration.md's reference is checked against it).
DOCS: dict[str, str] = {
    "runsc": "Path or name of gVisor's runsc. Default: `runsc` on PATH.",
    "cuda_checkpoint": (
        "Host path of cuda-checkpoint to mount into GPU containers. Default: the first of "
        "/usr/bin, /usr/local/bin, /usr/local/cuda/bin, then PATH."
    ),
    "nvproxy": "Add `--nvproxy=true` to runsc for GPU containers. Set false on hosts without a GPU.",
    "log_file": "runsc-cuda's own detailed log (JSON lines). Default: none.",
    "log_level": "Level of the detailed log: debug, info, warning, error. `--debug` raises it to debug.",
    "engine": "Checkpoint engine: auto (native if runsc knows --cuda-checkpoint-path, else exec), native, exec.",
    "sequential": "Native engine: pass --cuda-checkpoint-sequential (toggle CUDA processes one by one).",
    "lock_timeout_ms": "Exec engine: `cuda-checkpoint --action lock --timeout` in milliseconds.",
    "cuda_call_timeout_s": "Exec engine: how long one cuda-checkpoint call may take before it is abandoned.",
    "runsc_call_timeout_s": "Timeout of runsc-cuda's own runsc calls (state, ps, pause, resume, help).",
    "checkpoint_timeout_s": "Timeout of `runsc checkpoint` and `runsc restore` themselves.",
    "state_dir": "Folder for runsc-cuda's lock files (outside runsc's root).",
    "lock_wait_s": "How long a checkpoint/restore waits for another one of the same container.",
    "proc_driver_nvidia": "Where the NVIDIA driver's /proc files are read (driver version, GPU models).",
    "trust_cuda_checkpoint": (
        "Mount a host cuda-checkpoint even if it is not a root-owned regular file that only root can write, "
        "in folders only root can change (for tests)."
    ),
    "max_output_bytes": "Most bytes read from any one runsc or cuda-checkpoint call's output.",
    "max_parallel_cuda_calls": "Exec engine: how many cuda-checkpoint calls run at once (1 = one by one).",
    "tuning": (
        "Which containers get the checkpoint_* and restore_* settings below: gpu (GPU containers), all (every "
        "container), off (none, and dev.runsc-cuda.checkpoint.*/restore.* annotations are ignored too). A "
        "container's own annotations apply to it whatever its kind. See docs/image-options.md."
    ),
    "checkpoint_compression": (
        "runsc checkpoint --compression: none (the image keeps its memory in pages.img, which restore_background "
        'needs) or flate-best-speed (smaller for compressible memory, slower to save and restore). "" = runsc\'s '
        "own default."
    ),
    "checkpoint_exclude_committed_zero_pages": (
        "runsc checkpoint --exclude-committed-zero-pages: leave zero-filled memory out of the image (it comes "
        "back as zero pages on touch)."
    ),
    "checkpoint_direct": (
        "runsc checkpoint --direct: write pages.img with O_DIRECT (not through the page cache); dropped where "
        "the image folder's filesystem has no O_DIRECT."
    ),
    "restore_background": (
        "runsc restore --background: the container runs as soon as its kernel state is loaded and its memory "
        "streams in behind it (uncompressed images only). runsc-cuda watches the load and writes a failure "
        "to the runtime log."
    ),
    "restore_direct": (
        "runsc restore --direct: read pages.img with O_DIRECT; dropped for images without pages.img or on "
        "filesystems without O_DIRECT."
    ),
    "restore_roots": (
        "Folders a pod's `dev.runsc-cuda.restore-from` annotation may name a checkpoint archive or image folder "
        "under (absolute; a path outside them, with `..`, or through a link that leads out is refused). "
        "Environment: folders separated by `:`. `[]` turns restore by annotation off."
    ),
    "restore_cache_max_age_s": (
        "How long an unpacked checkpoint archive (in state_dir's restore-cache/) stays once unused; "
        "`runsc-cuda gc` removes older ones."
    ),
    "pod_restore_wait_s": (
        "How long a pod restored by `dev.runsc-cuda.restore-from` waits for the next of its checkpointed "
        "containers (the kubelet pulls each one's image first) before its sandbox is stopped and a warning "
        "logged; the pod's next sandbox is then refused at once. 0 = wait for ever."
    ),
}

_BOOL_WORDS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


def _field_types() -> dict[str, str]:
    return {f.name: str(f.type) for f in fields(Config)}


def _coerce(key: str, value: Any, kind: str, where: str, from_env: bool) -> Any:
    """Check (TOML) or convert (env strings) one value to the key's type."""
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if from_env and value.strip().lower() in _BOOL_WORDS:
            return _BOOL_WORDS[value.strip().lower()]
        raise ShimError(f"{where}: expected true or false, got {value!r}")
    if kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if from_env:
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise ShimError(f"{where}: expected an integer, got {value!r}")
    if kind == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if from_env:
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise ShimError(f"{where}: expected a number, got {value!r}")
    if kind == "tuple[str, ...]":
        if from_env:
            return tuple(p for p in value.split(":") if p)
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ShimError(f"{where}: expected a list of strings, got {value!r}")
    # "str" and "str | None"
    if isinstance(value, str):
        return value
    raise ShimError(f"{where}: expected a string, got {value!r}")


def _label(key: str, where: str, from_env: bool) -> str:
    return f"RUNSC_CUDA_{key.upper()}" if from_env else f"{where}: {key}"


def _check(cfg: Config, label: Callable[[str], str]) -> Config:
    if cfg.engine not in ENGINES:
        raise ShimError(f"{label('engine')}: expected one of {', '.join(ENGINES)}, got {cfg.engine!r}")
    if cfg.tuning not in TUNING_SCOPES:
        raise ShimError(f"{label('tuning')}: expected one of {', '.join(TUNING_SCOPES)}, got {cfg.tuning!r}")
    compression = cfg.checkpoint_compression
    if compression is not None and not (compression.replace("-", "").isalnum() and compression.isascii()):
        raise ShimError(f"{label('checkpoint_compression')}: not a compression name: {compression!r}")
    if cfg.log_level.lower() not in LOG_LEVELS:
        raise ShimError(f"{label('log_level')}: expected one of {', '.join(LOG_LEVELS)}, got {cfg.log_level!r}")
    for root in cfg.restore_roots:
        if not root.startswith("/") or ".." in root.split("/"):
            raise ShimError(f"{label('restore_roots')}: not an absolute path without '..': {root!r}")
    for key in POSITIVE:
        if cfg.get(key) <= 0:
            raise ShimError(f"{label(key)}: must be greater than 0, got {cfg.get(key)!r}")
    for key in NON_NEGATIVE:
        if not cfg.get(key) >= 0:  # NaN too
            raise ShimError(f"{label(key)}: must be 0 or more, got {cfg.get(key)!r}")
    return cfg


def _apply(cfg: Config, values: Mapping[str, Any], where: str, from_env: bool) -> Config:
    types = _field_types()
    changes: dict[str, Any] = {}
    for key, value in values.items():
        kind = types.get(key)
        if kind is None:
            raise ShimError(f"{where}: unknown key {key!r}")
        label = _label(key, where, from_env)
        if kind.endswith("| None") and value == "":  # "" means unset, in the file as in the env
            changes[key] = None
            continue
        changes[key] = _coerce(key, value, kind.replace(" | None", ""), label, from_env)
    return _check(replace(cfg, **changes), lambda key: _label(key, where, from_env))


def parse_text(text: str, path: str) -> Config:
    """The config a file's text describes, defaults for the rest."""
    import tomllib

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ShimError(f"config file {path}: invalid TOML: {e}") from None
    return _apply(Config(), data, f"config file {path}", from_env=False)


def env_overrides(environ: Mapping[str, str]) -> dict[str, str]:
    """RUNSC_CUDA_<KEY> variables that name a config key."""
    out: dict[str, str] = {}
    for key in _field_types():
        name = "RUNSC_CUDA_" + key.upper()
        if name in environ:
            out[key] = environ[name]
    return out


def load(environ: Mapping[str, str]) -> Config:
    """The effective config: defaults, then the file, then the environment."""
    path, text = read_config_text(environ)
    cfg = Config() if text is None else parse_text(text, path)
    return _apply(cfg, env_overrides(environ), "environment", from_env=True)
