"""``runsc-cuda doctor --require kubernetes`` (commands/doctor/kubernetes.py): containerd 2.x, pod_annotations
that let dev.runsc-cuda.restore-from through, criu 3.16+, restore roots that only root can write."""

from __future__ import annotations

import dataclasses
import stat
from typing import Any

import pytest
from test_doctor import by_id, healthy, probe

from runsc_cuda import layout
from runsc_cuda.commands.doctor import checks
from runsc_cuda.commands.doctor import facts as doctor_facts
from runsc_cuda.commands.doctor import main as doctor
from runsc_cuda.commands.doctor.kubernetes import KubeFacts, RootInfo

from support import REPO

CONTAINERD_2 = "containerd github.com/containerd/containerd/v2 v2.3.7 1a2b3c\n"
ROOTS = tuple(RootInfo(p, True, True, 0, stat.S_IFDIR | 0o755) for p in ("/var/lib/runsc-cuda/checkpoints", "/k"))


def node(**changes: Any) -> KubeFacts:
    kube = KubeFacts(probe("containerd --version", CONTAINERD_2), probe("criu --version", "Version: 3.17.1\n"), ROOTS)
    return dataclasses.replace(kube, **changes)


def kube_checks(f: doctor_facts.Facts | None = None, k: KubeFacts | None = None) -> dict[str, checks.Check]:
    results = doctor.checks(f or healthy(), ["kubernetes"], k or node())
    return {i: c for i, c in by_id(results).items() if i.startswith("kubernetes.")}


def test_a_ready_node_passes_and_the_shipped_containerd_config_lets_the_annotation_through() -> None:
    results = kube_checks()
    assert {c.status for c in results.values()} == {checks.OK}, results
    assert set(results) == {"kubernetes.containerd", "kubernetes.annotations", "kubernetes.criu",
                            "kubernetes.restore_roots"}  # fmt: skip
    assert "dev.runsc-cuda.*" in results["kubernetes.annotations"].detail
    assert doctor.checks(healthy(), [], None) == doctor.checks(healthy(), [])  # nothing asked, nothing gathered


@pytest.mark.parametrize(
    ("kube", "check", "words"),
    [
        (node(containerd_version=None), "kubernetes.containerd", "no containerd on PATH"),
        (node(containerd_version=probe("c", "containerd github.com/containerd/containerd 1.6.20~ds1\n")),
         "kubernetes.containerd", "1.6.20"),
        (node(criu_version=None), "kubernetes.criu", "no criu on PATH"),
        (node(criu_version=probe("criu --version", "Version: 3.15\n")), "kubernetes.criu", "Version: 3.15"),
        (node(roots=(RootInfo("/r", False),)), "kubernetes.restore_roots", "/r does not exist"),
        (node(roots=(RootInfo("/r", True, False, 0, stat.S_IFREG | 0o644),)), "kubernetes.restore_roots",
         "not a folder"),
        (node(roots=(RootInfo("/r", True, True, 1000, stat.S_IFDIR | 0o755),)), "kubernetes.restore_roots",
         "owned by uid 1000"),
        (node(roots=(RootInfo("/r", True, True, 0, stat.S_IFDIR | 0o777),)), "kubernetes.restore_roots",
         "mode 777"),
    ],
)  # fmt: skip
def test_each_missing_piece_fails_with_a_fix(kube: KubeFacts, check: str, words: str) -> None:
    found = kube_checks(k=kube)[check]
    assert found.status == checks.FAIL and words in found.detail and found.fix and found.required


def test_pod_annotations_without_the_restore_annotation_fail() -> None:
    text = (REPO / "packaging" / "containerd" / "config-v3.toml").read_text()
    narrowed = text.replace('pod_annotations = ["dev.runsc-cuda.*"]', 'pod_annotations = ["dev.runsc-cuda.gpu"]')
    assert narrowed != text
    f = healthy(containerd=doctor_facts.TextFile(layout.CONTAINERD_CONFIG, narrowed))
    found = kube_checks(f)["kubernetes.annotations"]
    assert found.status == checks.FAIL and "pods cannot ask for a restore" in found.detail


def test_restore_by_annotation_turned_off_is_not_a_failure() -> None:
    assert kube_checks(k=node(roots=()))["kubernetes.restore_roots"].status == checks.SKIP
