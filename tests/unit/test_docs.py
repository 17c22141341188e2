"""The docs agree with the code, with packaging/ and with the measured results.

README.md is the front page; the manual is docs/. configuration.md holds the
generated configuration reference, integration.md the ready-made configs word
for word, install.md the installed paths, benchmarks.md the tables in
bench/results/. Every relative link and anchor resolves, and every doc is
reachable from the front page or the index.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest

from runsc_cuda import conffile, config, layout

from support import REPO

README = REPO / "README.md"
DOCS = REPO / "docs"
INDEX = DOCS / "README.md"
PACKAGING = REPO / "packaging"
README_MAX_LINES = 300

FENCE = re.compile(r"^[ \t]*```.*?^[ \t]*```[ \t]*$", re.DOTALL | re.MULTILINE)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def text(path: Path) -> str:
    return path.read_text()


def doc(name: str) -> str:
    return text(DOCS / name)


def markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def code_blocks(source: str, language: str) -> list[str]:
    block = re.compile(rf"^[ \t]*```{language}\n(.*?)^[ \t]*```", re.DOTALL | re.MULTILINE)
    return [m.group(1) for m in block.finditer(source)]


def dedent_block(block: str) -> str:
    """A fenced block inside a list item, without the item's indentation."""
    lines = block.splitlines()
    indent = min((len(line) - len(line.lstrip()) for line in lines if line.strip()), default=0)
    return "\n".join(line[indent:] for line in lines) + "\n"


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    words = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return words.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in FENCE.sub("", text(path)).splitlines():
        m = re.match(r"#{1,6}\s+(.*)", line)
        if not m:
            continue
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def local_links(path: Path) -> list[str]:
    """The relative links of a markdown file, outside code blocks."""
    targets = LINK.findall(FENCE.sub("", text(path)))
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


# --- the front page ------------------------------------------------------------------


def test_readme_is_a_front_page() -> None:
    lines = text(README).splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail into docs/"
    body = text(README)
    for command in ("make check", "make test", "bash .ci/run"):
        assert command in body


def test_every_doc_is_linked_from_the_readme_or_the_index() -> None:
    linked = set()
    for source in (README, INDEX):
        for target in local_links(source):
            resolved = (source.parent / target.partition("#")[0]).resolve()
            linked.add(resolved)
    missing = [p.name for p in sorted(DOCS.glob("*.md")) if p.resolve() not in linked and p != INDEX]
    assert not missing, f"not linked from README.md or docs/README.md: {missing}"
    assert INDEX.resolve() in linked


def test_readme_links_into_docs_resolve() -> None:
    into_docs = [t for t in local_links(README) if t.startswith("docs/")]
    assert into_docs
    for target in into_docs:
        assert (REPO / target.partition("#")[0]).is_file(), target


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_and_anchors_resolve(path: Path) -> None:
    for target in local_links(path):
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        assert dest.exists(), f"{path.name}: {target}: no such file"
        assert REPO in dest.parents or dest == REPO, f"{path.name}: {target}: outside the repository"
        if anchor:
            assert dest.suffix == ".md", f"{path.name}: {target}: anchor into a non-markdown file"
            assert anchor in anchors(dest), f"{path.name}: {target}: no heading #{anchor} in {dest.name}"


# --- configuration.md: the generated reference ----------------------------------------


def test_configuration_reference_is_up_to_date() -> None:
    assert conffile.render_markdown() in doc("configuration.md"), (
        "regenerate docs/configuration.md's table with: python -m runsc_cuda.conffile --markdown"
    )


def test_configuration_doc_names_every_key() -> None:
    reference = doc("configuration.md")
    missing = [key for key in config.DOCS if f"`{key}`" not in reference]
    assert not missing, f"docs/configuration.md does not document: {missing}"


# --- integration.md and install.md: packaging/ -------------------------------------------


def test_docker_snippets_are_the_shipped_files() -> None:
    blocks = code_blocks(doc("integration.md"), "json")
    shown = [json.loads(dedent_block(b)) for b in blocks if '"runtimes"' in b]
    shipped = [
        json.loads((PACKAGING / "docker" / name).read_text()) for name in ("daemon.json", "daemon-runtimetype.json")
    ]
    assert shown == shipped


def test_containerd_snippets_are_the_shipped_files() -> None:
    shown = [tomllib.loads(dedent_block(b)) for b in code_blocks(doc("integration.md"), "toml")]
    shipped = [tomllib.loads((PACKAGING / "containerd" / n).read_text()) for n in ("config-v2.toml", "config-v3.toml")]
    assert shown == shipped


def test_every_shipped_file_is_mentioned() -> None:
    integration = doc("integration.md")
    for path in PACKAGING.rglob("*"):
        if path.is_file() and path.parent != PACKAGING and "__pycache__" not in path.parts:
            assert str(path.relative_to(PACKAGING)) in integration, path


def test_installed_paths_are_mentioned() -> None:
    install = doc("install.md")
    for name in (layout.BIN_PATH, layout.LIB_DIR, layout.CONFIG_PATH, layout.DOC_DIR):
        assert name in install, name
    assert f"{layout.DOC_DIR}/examples/" in doc("integration.md")


# --- benchmarks.md: the measured results ----------------------------------------------------


@pytest.mark.parametrize("result", sorted((REPO / "bench" / "results").glob("*.json")), ids=lambda p: p.name)
def test_benchmark_tables_are_the_recorded_ones(result: Path) -> None:
    benchmarks = doc("benchmarks.md")
    assert result.name in benchmarks
    table = [line for line in json.loads(result.read_text())["table"].splitlines() if line.startswith("|")]
    assert table
    missing = [row for row in table if row not in benchmarks]
    assert not missing, f"{result.name}: rows not in docs/benchmarks.md: {missing}"


def test_gpu_figures_are_the_recorded_ones() -> None:
    benchmarks = doc("benchmarks.md")
    for result in sorted((REPO / "tests" / "gpu" / "results").glob("*.json")):
        phases = json.loads(result.read_text())["phases"]
        for name, phase in phases.items():
            if name.startswith(("exec", "native")):
                assert f"| {phase['wall_s']:.2f} |" in benchmarks, f"{result.name}: {name}"
