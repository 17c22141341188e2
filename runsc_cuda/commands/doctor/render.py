"""``runsc-cuda doctor``'s output: one line per check (its fix under a failed one), or JSON."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

from runsc_cuda import __version__
from runsc_cuda.commands.doctor.checks import FAIL, OK, SKIP, Check, exit_status


def symbols_for(stream: Any) -> dict[str, str]:
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
