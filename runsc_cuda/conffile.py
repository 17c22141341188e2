"""The shipped /etc/runsc-cuda/config.toml and the configuration reference, from ``config``.

Every key of ``config.Config`` appears, commented out, with its documentation
line and its default, so that uncommenting a line changes nothing until the
value is edited.  ``python -m runsc_cuda.conffile`` prints the file;
``--markdown`` prints the reference table for the docs.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import MISSING, fields
from typing import Any

from runsc_cuda import config

HEADER = """\
# runsc-cuda configuration.
#
# Every key is shown with its default value, commented out.  Uncomment a line
# and edit its value to change a setting.  A RUNSC_CUDA_<KEY> environment
# variable (e.g. RUNSC_CUDA_ENGINE=exec) overrides the key of the same name;
# RUNSC_CUDA_CONFIG names another file.  An empty string ("") means "unset"
# for the keys whose default is to look something up.
#
# Check the result with: runsc-cuda doctor
"""


def defaults() -> dict[str, Any]:
    """Each key's default, in the order ``Config`` declares them."""
    out: dict[str, Any] = {}
    for f in fields(config.Config):
        if f.default is MISSING:
            raise ValueError(f"config key {f.name} has no default")
        out[f.name] = f.default
    return out


def toml_value(value: Any) -> str:
    """A default as a TOML value; None (look it up) is the empty string."""
    if value is None:
        return '""'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string for everything json escapes
    if isinstance(value, tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def _wrap(text: str, width: int = 78) -> list[str]:
    lines: list[str] = []
    line = ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    if line:
        lines.append(line)
    return lines


def render_toml() -> str:
    """The commented config file: a ``##`` doc block, then ``# key = default``, per key."""
    parts = [HEADER]
    for key, value in defaults().items():
        doc = config.DOCS[key]
        block = [f"## {line}" for line in _wrap(doc)]
        block.append(f"# {key} = {toml_value(value)}")
        parts.append("\n".join(block) + "\n")
    return "\n".join(parts)


SETTING_LINE = re.compile(r"^# ([a-z_]+ = .*)$")


def uncomment(text: str) -> str:
    """The file with every setting line (``# key = value``) turned on; prose stays commented."""
    out = []
    for line in text.splitlines():
        match = SETTING_LINE.match(line)
        out.append(match.group(1) if match else line)
    return "\n".join(out) + "\n"


def render_markdown() -> str:
    """The configuration reference: one row per key."""
    rows = ["| key | default | environment | meaning |", "| --- | --- | --- | --- |"]
    for key, value in defaults().items():
        shown = "(unset)" if value is None else toml_value(value)
        doc = config.DOCS[key].replace("|", "\\|")
        rows.append(f"| `{key}` | `{shown}` | `RUNSC_CUDA_{key.upper()}` | {doc} |")
    return "\n".join(rows) + "\n"


def main(argv: list[str]) -> int:
    sys.stdout.write(render_markdown() if argv[1:] == ["--markdown"] else render_toml())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
