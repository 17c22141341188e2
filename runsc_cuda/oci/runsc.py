"""Finding the real runsc and handing over to it.

This module is on the pass-through path (every state/start/kill/delete):
it imports only what the interpreter has already loaded.
"""

from __future__ import annotations

import os
import sys

from runsc_cuda.errors import ShimError

TYPE_CHECKING = False  # typing itself costs ~4 ms to import; mypy honours this spelling
if TYPE_CHECKING:
    from collections.abc import Mapping  # collections.abc pulls in collections: ~3 ms per call

DEFAULT_CONFIG = "/etc/runsc-cuda/config.toml"
DEFAULT_STATE_DIR = "/run/runsc-cuda"  # config state_dir's default
DEFAULT_RUNSC_ROOT = "/var/run/runsc"  # runsc's own default --root
ENV_STATE_DIR = "RUNSC_CUDA_STATE_DIR"
ENV_CONFIG = "RUNSC_CUDA_CONFIG"
ENV_RUNSC = "RUNSC_CUDA_RUNSC"


def config_path(environ: Mapping[str, str]) -> str:
    return environ.get(ENV_CONFIG) or DEFAULT_CONFIG


def own_executable() -> str:
    """The real path of the program that is running now."""
    if getattr(sys, "frozen", False):
        return os.path.realpath(sys.executable)
    return os.path.realpath(sys.argv[0]) if sys.argv and sys.argv[0] else ""


def which(name: str, path: str | None) -> str | None:
    """The first executable ``name`` on ``path`` (a PATH string)."""
    if os.sep in name:
        return name if os.access(name, os.X_OK) and not os.path.isdir(name) else None
    for folder in (path or os.defpath).split(os.pathsep):
        candidate = os.path.join(folder or ".", name)
        if os.access(candidate, os.X_OK) and not os.path.isdir(candidate):
            return candidate
    return None


def _simple_toml_string(text: str) -> str | None:
    """The value of a one-line TOML basic or literal string, else None."""
    if len(text) >= 2 and text[0] == "'" and "'" in text[1:]:
        end = text.index("'", 1)
        value, tail = text[1:end], text[end + 1 :].strip()
    elif len(text) >= 2 and text[0] == '"':
        end = text.find('"', 1)
        if end < 0:
            return None
        value, tail = text[1:end], text[end + 1 :].strip()
        if "\\" in value:
            return None  # escapes: leave them to the real parser
    else:
        return None
    if tail and not tail.startswith("#"):
        return None
    if any((ord(c) < 0x20 and c != "\t") or ord(c) == 0x7F for c in value):
        return None  # TOML forbids control characters: let the real parser say so
    return value


def fast_config_value(text: str, name: str) -> tuple[bool, str | None]:
    """Read a top-level string key (``runsc``, ``state_dir``) of a config file without a TOML parser.

    Returns ``(True, value)`` when the file is simple enough to be sure
    (``value`` None when the key is absent) and ``(False, None)`` when the real
    parser must decide.  tomllib costs 7-16 ms, more than the whole budget of
    the pass-through path, and most config files are a few ``key = value``
    lines.  A property test checks this against tomllib.
    """
    if '"""' in text or "'''" in text or "\r" in text:
        return False, None
    found: str | None = None
    for raw in text.split("\n"):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            break  # a table: top-level keys are all behind us
        key, eq, value = line.partition("=")
        key = key.strip()
        if key.strip("\"'") == name or key.startswith((f"{name}.", f'"{name}".', f"'{name}'.")):
            if key != name or not eq or found is not None:
                return False, None
            parsed = _simple_toml_string(value.strip())
            if parsed is None:
                return False, None
            found = parsed
        elif not eq:
            return False, None
    return True, found


def fast_config_runsc(text: str) -> tuple[bool, str | None]:
    """``fast_config_value`` of the ``runsc`` key."""
    return fast_config_value(text, "runsc")


def read_config_text(environ: Mapping[str, str]) -> tuple[str, str | None]:
    """The config file's path and text (None: the default file is absent, so defaults apply).

    The one reader of the file, for the pass-through path and the full parser
    alike; ShimError when it cannot be read, or was named and is missing.
    """
    path = config_path(environ)
    try:
        with open(path, encoding="utf-8") as f:
            return path, f.read()
    except FileNotFoundError:
        if ENV_CONFIG in environ:
            raise ShimError(f"config file {path} (from {ENV_CONFIG}) does not exist") from None
        return path, None
    except IsADirectoryError:
        raise ShimError(f"config file {path}: is a directory") from None
    except OSError as e:
        raise ShimError(f"cannot read config file {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ShimError(f"config file {path}: not UTF-8 text") from None


def configured_runsc(environ: Mapping[str, str]) -> str | None:
    """The runsc named by env or config file, or None to search PATH."""
    from_env = environ.get(ENV_RUNSC)
    if from_env:
        return from_env
    path, text = read_config_text(environ)
    if text is None:
        return None
    sure, value = fast_config_runsc(text)
    if sure:
        return value
    from runsc_cuda import config  # the full parser, only for unusual files

    return config.parse_text(text, path).runsc


def configured_state_dir(environ: Mapping[str, str]) -> str:
    """config ``state_dir`` as ``config.load`` sees it (env, then file, then the default).

    For the pass-through path: an unreadable config file gives the default here
    (find_runsc reports it).
    """
    if ENV_STATE_DIR in environ:
        return environ[ENV_STATE_DIR]
    try:
        path, text = read_config_text(environ)
    except ShimError:
        return DEFAULT_STATE_DIR
    if text is None:
        return DEFAULT_STATE_DIR
    sure, value = fast_config_value(text, "state_dir")
    if not sure:
        from runsc_cuda import config  # the full parser, only for unusual files

        try:
            return config.parse_text(text, path).state_dir
        except ShimError:
            return DEFAULT_STATE_DIR
    return DEFAULT_STATE_DIR if value is None else value


def find_runsc(environ: Mapping[str, str], me: str | None = None) -> str:
    """The real runsc binary named by env, config or PATH; never runsc-cuda itself."""
    return resolve_runsc(configured_runsc(environ), environ.get("PATH"), me)


def resolve_runsc(wanted: str | None, path: str | None, me: str | None = None) -> str:
    """``wanted`` (a name or path) or ``runsc``, looked up on ``path``; refuses runsc-cuda itself."""
    if wanted:
        found = which(wanted, path)
        if found is None:
            raise ShimError(f"runsc {wanted!r} (from config) is not an executable file")
    else:
        found = which("runsc", path)
        if found is None:
            raise ShimError(
                f"runsc not found on PATH; install gVisor's runsc or set 'runsc' in the config file or {ENV_RUNSC}"
            )
    me = own_executable() if me is None else me
    if me and os.path.realpath(found) == me:
        raise ShimError(
            f"runsc resolves to runsc-cuda itself ({found}); point 'runsc' in the "
            f"config file or {ENV_RUNSC} at gVisor's runsc"
        )
    return found


def child_environ(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment for programs runsc-cuda starts.

    PyInstaller prepends its bundle to LD_LIBRARY_PATH and keeps the old value
    in LD_LIBRARY_PATH_ORIG; runsc must see the original.
    """
    env = dict(environ)
    if getattr(sys, "frozen", False):
        orig = env.pop("LD_LIBRARY_PATH_ORIG", None)
        if orig is not None:
            env["LD_LIBRARY_PATH"] = orig
        else:
            # Some bootloaders (6.22's onedir) leave it alone; strip only the bundle's own folder.
            bundle = getattr(sys, "_MEIPASS", None)
            parts = [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p and p != bundle]
            if parts:
                env["LD_LIBRARY_PATH"] = os.pathsep.join(parts)
            else:
                env.pop("LD_LIBRARY_PATH", None)
        for name in [k for k in env if k.startswith("_PYI_")]:
            del env[name]  # the bootloader's own variables would confuse another PyInstaller program
    return env


def exec_runsc(runsc: str, args: list[str], environ: Mapping[str, str]) -> None:
    """Replace this process with runsc (argv[0] = runsc's path); never returns."""
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(runsc, [runsc, *args], child_environ(environ))
    except OSError as e:
        raise ShimError(f"cannot execute runsc {runsc}: {e.strerror}") from None
