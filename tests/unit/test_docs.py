"""README.md agrees with the code and with packaging/."""

from __future__ import annotations

import json
import re
import tomllib

from runsc_cuda import conffile, layout

from support import REPO

DOC = (REPO / "README.md").read_text()
PACKAGING = REPO / "packaging"


def code_blocks(language: str) -> list[str]:
    return [m.group(1) for m in re.finditer(rf"```{language}\n(.*?)```", DOC, re.DOTALL)]


def test_configuration_reference_is_up_to_date() -> None:
    assert conffile.render_markdown() in DOC, "regenerate with: python -m runsc_cuda.conffile --markdown"


def test_docker_snippets_are_the_shipped_files() -> None:
    shown = [json.loads(block) for block in code_blocks("json") if '"runtimes"' in block]
    shipped = [
        json.loads((PACKAGING / "docker" / name).read_text()) for name in ("daemon.json", "daemon-runtimetype.json")
    ]
    assert shown == shipped


def test_containerd_snippets_are_the_shipped_files() -> None:
    shown = [tomllib.loads(block) for block in code_blocks("toml")]
    shipped = [tomllib.loads((PACKAGING / "containerd" / n).read_text()) for n in ("config-v2.toml", "config-v3.toml")]
    assert shown == shipped


def test_every_shipped_file_and_path_is_mentioned() -> None:
    for path in PACKAGING.rglob("*"):
        if path.is_file() and path.parent != PACKAGING and "__pycache__" not in path.parts:
            assert str(path.relative_to(PACKAGING)) in DOC, path
    for name in (layout.BIN_PATH, layout.LIB_DIR, layout.CONFIG_PATH, layout.DOC_DIR):
        assert name in DOC
