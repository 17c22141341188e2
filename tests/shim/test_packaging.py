"""packaging/: the ready-made engine configs, the PyInstaller spec, the tarball and the .deb.

The .deb tests build a package from a stand-in onedir bundle (a script that
runs ``python -m runsc_cuda``), so they run everywhere dpkg-deb does.  With
``RUNSC_CUDA_TEST_DEB`` (``make test`` sets it) the same tests also
check the real package built from the PyInstaller binary.
"""

from __future__ import annotations

import ast
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tomllib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from runsc_cuda import conffile, layout
from runsc_cuda.oci import help

import fakes
from support import REPO

PACKAGING = REPO / "packaging"
ENV_TEST_DEB = "RUNSC_CUDA_TEST_DEB"


def manual() -> list[str]:
    """The docs every artifact ships, relative to its doc folder: the front page and docs/."""
    return ["README.md", *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").rglob("*.md"))]


def load_build() -> ModuleType:
    spec = importlib.util.spec_from_file_location("runsc_cuda_packaging_build", PACKAGING / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = load_build()


# --- the ready-made configs ----------------------------------------------------------


def docker_config(name: str) -> dict[str, Any]:
    return dict(json.loads((PACKAGING / "docker" / name).read_text()))


def containerd_config(name: str) -> dict[str, Any]:
    return tomllib.loads((PACKAGING / "containerd" / name).read_text())


def kubernetes_doc(name: str) -> dict[str, Any]:
    docs = list(yaml.safe_load_all((PACKAGING / "kubernetes" / name).read_text()))
    assert len(docs) == 1
    return dict(docs[0])


def test_every_config_file_is_tested() -> None:
    shipped = sorted(
        str(p.relative_to(PACKAGING))
        for p in PACKAGING.rglob("*")
        if p.is_file() and p.parent != PACKAGING and "__pycache__" not in p.parts
    )
    assert shipped == [
        "containerd/config-v2.toml",
        "containerd/config-v3.toml",
        "docker/daemon-runtimetype.json",
        "docker/daemon.json",
        "kubernetes/pod-gpu.yaml",
        "kubernetes/pod-restore.yaml",
        "kubernetes/runtimeclass.yaml",
    ]


def test_docker_path_form() -> None:
    doc = docker_config("daemon.json")
    assert doc["runtimes"] == {layout.RUNTIME_NAME: {"path": layout.BIN_PATH}}
    assert doc["experimental"] is True


def test_docker_runtime_type_form() -> None:
    doc = docker_config("daemon-runtimetype.json")
    assert doc["runtimes"] == {
        layout.RUNTIME_NAME: {"runtimeType": layout.RUNC_V2_SHIM, "options": {"BinaryName": layout.BIN_PATH}}
    }
    assert doc["experimental"] is True


@pytest.mark.parametrize(("name", "version"), [("config-v2.toml", 2), ("config-v3.toml", 3)])
def test_containerd_runc_v2_runtime(name: str, version: int) -> None:
    doc = containerd_config(name)
    assert doc["version"] == version
    plugin = layout.CONTAINERD_CRI_PLUGIN[version]
    assert list(doc["plugins"]) == [plugin]
    runtimes = doc["plugins"][plugin]["containerd"]["runtimes"]
    annotations = {"pod_annotations": ["dev.runsc-cuda.*"], "container_annotations": ["dev.runsc-cuda.*"]}
    assert runtimes == {
        layout.RUNTIME_NAME: {
            "runtime_type": layout.RUNC_V2_SHIM,
            "options": {"BinaryName": layout.BIN_PATH},
            **(annotations if version == 3 else {}),
        }
    }
    text = (PACKAGING / "containerd" / name).read_text()
    assert "criu" in text  # the note on CRI checkpoints


def test_kubernetes_runtime_class_and_pod_agree_with_containerd() -> None:
    runtime_class = kubernetes_doc("runtimeclass.yaml")
    assert runtime_class["apiVersion"] == "node.k8s.io/v1"
    assert runtime_class["kind"] == "RuntimeClass"
    handlers = {
        name
        for file in ("config-v2.toml", "config-v3.toml")
        for plugin in containerd_config(file)["plugins"].values()
        for name in plugin["containerd"]["runtimes"]
    }
    assert handlers == {runtime_class["handler"]} == {layout.RUNTIME_NAME}
    pod = kubernetes_doc("pod-gpu.yaml")
    assert pod["kind"] == "Pod"
    assert pod["spec"]["runtimeClassName"] == runtime_class["metadata"]["name"]
    limits = [c["resources"]["limits"] for c in pod["spec"]["containers"]]
    assert any(int(lim.get("nvidia.com/gpu", 0)) >= 1 for lim in limits)


def test_the_restore_pod_names_a_file_under_a_default_restore_root_and_keeps_the_container_name() -> None:
    from runsc_cuda import config

    pod = kubernetes_doc("pod-restore.yaml")
    source = pod["metadata"]["annotations"]["dev.runsc-cuda.restore-from"]
    assert any(source.startswith(root + "/") for root in config.Config().restore_roots)
    assert pod["spec"]["runtimeClassName"] == kubernetes_doc("runtimeclass.yaml")["metadata"]["name"]
    assert [c["name"] for c in pod["spec"]["containers"]] == [
        c["name"] for c in kubernetes_doc("pod-gpu.yaml")["spec"]["containers"]
    ]


def test_docker_runtime_names_agree_with_containerd_handler() -> None:
    names = {name for f in ("daemon.json", "daemon-runtimetype.json") for name in docker_config(f)["runtimes"]}
    assert names == {layout.RUNTIME_NAME}


def test_layout_agrees_with_the_runtime_config_path() -> None:
    from runsc_cuda.oci import runsc

    assert layout.CONFIG_PATH == runsc.DEFAULT_CONFIG
    assert layout.BIN_PATH == "/usr/bin/" + layout.RUNTIME_NAME
    assert layout.LIB_DIR == "/usr/lib/" + layout.RUNTIME_NAME


# --- the PyInstaller spec --------------------------------------------------------------


def spec_literal(name: str) -> Any:
    tree = ast.parse((REPO / "shim.spec").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"shim.spec has no {name}")


def test_spec_builds_onedir_without_start_up_weight() -> None:
    text = (REPO / "shim.spec").read_text()
    assert "exclude_binaries=True" in text  # onedir: COLLECT, not a onefile EXE
    assert "COLLECT(" in text
    assert "noarchive=True" in text
    assert {"pyi_rth_inspect", "pyi_rth_pkgutil", "pyi_rth_multiprocessing"} <= set(
        spec_literal("DROPPED_RUNTIME_HOOKS")
    )
    assert "ctypes" in spec_literal("EXCLUDES")  # PyInstaller's bootstrap imports it on every start when present


# --- tarball and checksum ------------------------------------------------------------------


def test_dist_names() -> None:
    assert build.dist_name("1.2.3", "x86_64") == "runsc-cuda-1.2.3-linux-x86_64"
    assert build.deb_name("1.2.3", "x86_64") == "runsc-cuda_1.2.3_amd64.deb"
    assert build.deb_name("1.2.3", "aarch64") == "runsc-cuda_1.2.3_arm64.deb"


def test_tarball_is_reproducible_and_root_owned(tmp_path: Path) -> None:
    tree = tmp_path / "runsc-cuda-9.9.9-linux-x86_64"
    (tree / "_internal").mkdir(parents=True)
    (tree / "runsc-cuda").write_text("#!/bin/sh\n")
    (tree / "runsc-cuda").chmod(0o700)
    (tree / "_internal" / "lib.so").write_bytes(b"\0" * 10)
    first = build.make_tarball(tree, tmp_path / "a.tar.gz", mtime=1_700_000_000)
    second = build.make_tarball(tree, tmp_path / "b.tar.gz", mtime=1_700_000_000)
    assert first.read_bytes() == second.read_bytes()
    with tarfile.open(first) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert sorted(members) == [
        tree.name,
        f"{tree.name}/_internal",
        f"{tree.name}/_internal/lib.so",
        f"{tree.name}/runsc-cuda",
    ]
    assert {(m.uid, m.gid, m.uname, m.mtime) for m in members.values()} == {(0, 0, "root", 1_700_000_000)}
    assert members[f"{tree.name}/runsc-cuda"].mode == 0o755
    assert members[f"{tree.name}/_internal/lib.so"].mode == 0o644
    checksum = build.write_sha256(first)
    assert checksum.name == "a.tar.gz.sha256"
    if shutil.which("sha256sum"):
        subprocess.run(["sha256sum", "-c", checksum.name], cwd=tmp_path, check=True, capture_output=True)


def test_tarball_tree_has_config_examples_and_manual(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    build.add_docs(tree)
    assert (tree / "config.toml").read_text() == conffile.render_toml()
    for name in ("examples/README.md", "examples/docker/daemon.json", "examples/kubernetes/pod-gpu.yaml"):
        assert (tree / name).is_file(), name
    shipped = sorted(str(p.relative_to(tree)) for p in tree.rglob("*.md") if "examples" not in p.parts)
    assert shipped == manual()
    for name in manual():
        assert (tree / name).read_bytes() == (REPO / name).read_bytes(), name


def test_built_tarball_and_checksum(pytestconfig: pytest.Config) -> None:
    binary = pytestconfig.getoption("--binary")
    if not binary:
        pytest.skip("no built binary (make test)")
    tree = Path(binary).resolve().parent
    tarball = tree.with_name(tree.name + ".tar.gz")
    checksum = tarball.with_name(tarball.name + ".sha256")
    assert tarball.is_file() and checksum.is_file()
    assert checksum.read_text() == f"{build.sha256_file(tarball)}  {tarball.name}\n"
    with tarfile.open(tarball) as tar:
        names = set(tar.getnames())
    for name in ("runsc-cuda", "config.toml", "examples/docker/daemon.json", "examples/kubernetes/pod-gpu.yaml"):
        assert f"{tree.name}/{name}" in names
    for name in manual():
        assert f"{tree.name}/{name}" in names, name


def test_built_binary_runs_no_runtime_hooks(pytestconfig: pytest.Config) -> None:
    binary = pytestconfig.getoption("--binary")
    viewer = Path(sys.executable).with_name("pyi-archive_viewer")
    if not binary or not viewer.exists():
        pytest.skip("no built binary, or no PyInstaller to inspect it (make test)")
    out = subprocess.run([str(viewer), "-l", binary], capture_output=True, text=True, check=True, timeout=60)
    scripts = [line.split(",")[-1].strip().strip("'") for line in out.stdout.splitlines() if ", 's', " in line]
    assert sorted(scripts) == ["__main__", "pyiboot01_bootstrap"]


# --- the .deb ------------------------------------------------------------------------------


def stand_in_bundle(folder: Path) -> Path:
    """An onedir-shaped folder whose runsc-cuda runs this checkout's Python module."""
    (folder / "_internal").mkdir(parents=True)
    (folder / "_internal" / "base_library.zip").write_bytes(b"PK\x05\x06" + b"\0" * 18)
    script = folder / "runsc-cuda"
    script.write_text(f'#!/bin/sh\nPYTHONPATH={REPO} exec {sys.executable} -m runsc_cuda "$@"\n')
    script.chmod(0o755)
    return folder


@dataclass(frozen=True)
class Deb:
    path: Path
    built: bool  # from the PyInstaller binary (else from the stand-in bundle, with this checkout's config)


@pytest.fixture(scope="module", params=["stand-in", "built"])
def deb(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Deb:
    if not shutil.which("dpkg-deb"):
        pytest.skip("no dpkg-deb on this machine")
    if request.param == "built":
        path = os.environ.get(ENV_TEST_DEB)
        if not path:
            pytest.skip(f"no built .deb (make test, or {ENV_TEST_DEB}=dist/runsc-cuda_<v>_<arch>.deb)")
        return Deb(Path(path).resolve(), True)
    folder = tmp_path_factory.mktemp("deb")
    return Deb(Path(build.build_deb(stand_in_bundle(folder / "bundle"), folder / "out", "9.9.9", "x86_64")), False)


def deb_field(deb: Deb, name: str) -> str:
    out = subprocess.run(["dpkg-deb", "-f", str(deb.path), name], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_deb_control(deb: Deb) -> None:
    info = subprocess.run(["dpkg-deb", "-I", str(deb.path)], capture_output=True, text=True, check=True).stdout
    assert "Package: runsc-cuda" in info
    assert " conffiles" in info
    assert deb.path.name == f"runsc-cuda_{deb_field(deb, 'Version')}_{deb_field(deb, 'Architecture')}.deb"
    assert deb_field(deb, "Maintainer")
    assert deb_field(deb, "Description").startswith("drop-in OCI runtime")
    control = subprocess.run(["dpkg-deb", "--ctrl-tarfile", str(deb.path)], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(control)) as tar:
        member = tar.extractfile("./conffiles")
        assert member is not None
        assert member.read().decode() == layout.CONFIG_PATH + "\n"


def compare_versions(a: str, op: str, b: str) -> bool:
    return subprocess.run(["dpkg", "--compare-versions", a, op, b], check=False).returncode == 0


def distribution_runsc() -> str | None:
    """The candidate version of the distribution's own runsc package (apt-cache policy), if apt knows one."""
    if not shutil.which("apt-cache"):
        return None
    out = subprocess.run(["apt-cache", "policy", "runsc"], capture_output=True, text=True, check=False).stdout
    for line in out.splitlines():
        key, _, value = line.strip().partition(": ")
        if key == "Candidate" and value and value != "(none)":
            return value
    return None


def test_deb_recommends_only_a_runsc_with_nvproxy(deb: Deb) -> None:
    """Debian 12's runsc (0.0~20221219.0, no nvproxy) must not meet the relation; gVisor's own releases must."""
    relation = deb_field(deb, "Recommends")
    assert relation == "runsc (>= 20260608.0)"
    minimum = relation.split(">= ")[1].rstrip(")")
    assert minimum == help.GPU_RELEASE.removeprefix("release-")
    assert not compare_versions("0.0~20221219.0-2+b3", "ge", minimum)  # Debian 12's own package
    for gvisor in ("20260608.0", "20260817.0", "20270101.0"):  # gVisor's apt repository: release-<date>
        assert compare_versions(gvisor, "ge", minimum)


def test_apt_does_not_pull_in_the_distributions_runsc(deb: Deb) -> None:
    """Where apt knows an old runsc package, installing the .deb (simulated) leaves it out."""
    candidate = distribution_runsc()
    if candidate is None:
        pytest.skip("apt knows no runsc package here (apt-get update, or not a Debian-like host)")
    if compare_versions(candidate, "ge", help.GPU_RELEASE.removeprefix("release-")):
        pytest.skip(f"apt's runsc {candidate} is new enough, so pulling it in would be right")
    out = subprocess.run(["apt-get", "install", "-s", str(deb.path)], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert "Inst runsc-cuda " in out.stdout
    assert "Inst runsc " not in out.stdout, f"apt would install runsc {candidate}, which has no nvproxy"


def test_deb_layout(deb: Deb) -> None:
    listing = subprocess.run(["dpkg-deb", "-c", str(deb.path)], capture_output=True, text=True, check=True).stdout
    entries = {}
    for line in listing.splitlines():
        parts = line.split(None, 5)
        name = parts[5].split(" -> ")[0].removeprefix(".")
        entries[name.rstrip("/") or "/"] = (parts[0], parts[1], line)
    assert entries[f"{layout.LIB_DIR}/runsc-cuda"][0] == "-rwxr-xr-x"
    assert f"{layout.LIB_DIR}/_internal" in entries
    mode, _owner, line = entries[layout.BIN_PATH]
    assert mode.startswith("l")
    assert line.endswith(f"-> ../lib/{layout.RUNTIME_NAME}/runsc-cuda")
    assert entries[layout.CONFIG_PATH][0] == "-rw-r--r--"
    for example in ("docker/daemon.json", "containerd/config-v3.toml", "kubernetes/runtimeclass.yaml"):
        assert f"{layout.DOC_DIR}/examples/{example}" in entries
    for name in manual():
        assert entries[f"{layout.DOC_DIR}/{name}"][0] == "-rw-r--r--", name
    assert entries[f"{layout.DOC_DIR}/docs"][0] == "drwxr-xr-x"
    assert {owner for _mode, owner, _line in entries.values()} == {"root/root"}


@pytest.fixture(scope="module")
def unpacked(deb: Deb, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("unpacked")
    subprocess.run(["dpkg-deb", "-x", str(deb.path), str(root)], check=True)
    return root


def test_deb_conffile_is_the_generated_config(unpacked: Path) -> None:
    text = (unpacked / layout.CONFIG_PATH.lstrip("/")).read_text()
    assert tomllib.loads(text) == {}  # everything commented out
    assert text == conffile.render_toml()


def test_unpacked_binary_runs(unpacked: Path, tmp_path: Path) -> None:
    program = unpacked / layout.BIN_PATH.lstrip("/")
    assert program.is_symlink()
    assert program.resolve() == (unpacked / layout.LIB_DIR.lstrip("/") / "runsc-cuda").resolve()
    paths = fakes.install(str(tmp_path / "bin"))
    env = {
        "PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin",
        "RUNSC_CUDA_CONFIG": str(unpacked / layout.CONFIG_PATH.lstrip("/")),
        "HOME": str(tmp_path),
    }
    root = tmp_path / "root"
    out = subprocess.run([str(program), "--root", str(root), "list"], env=env, capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr
    calls = [json.loads(line) for line in (root / "calls.jsonl").read_text().splitlines()]
    assert calls[-1]["argv"] == ["--root", str(root), "list"]
    version = subprocess.run([str(program), "--version"], env=env, capture_output=True, text=True, timeout=60)
    assert version.stdout.startswith("runsc-cuda version ")
    assert paths["runsc"] in (shutil.which("runsc", path=env["PATH"]) or "")
