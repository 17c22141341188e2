"""Restore by annotation, name matching (commands/pod_restore.py, image/statefile.py): which containers join
the restoring sandbox, which one holds the CUDA processes, what the annotation says."""

from __future__ import annotations

import json
from pathlib import Path

from runsc_cuda import layout
from runsc_cuda.commands import pod_restore
from runsc_cuda.image import statefile
from runsc_cuda.oci import cri

CUDA_MOUNT = {"destination": layout.CONTAINER_CUDA_CHECKPOINT, "source": "/usr/bin/cuda-checkpoint", "type": "bind"}


def pod(**containers: dict[str, object]) -> statefile.PodImage:
    specs = {"__no_name_0": {"annotations": {cri.CONTAINER_TYPE: "sandbox"}}, **containers}
    return statefile.PodImage(len(specs), specs)  # type: ignore[arg-type]


def test_the_pause_container_is_not_one_that_joins() -> None:
    image = pod(sidecar={}, app={})
    assert image.sandbox_name == "__no_name_0"
    assert image.container_names == ["app", "sidecar"]
    assert statefile.PodImage(1, {"__no_name_0": {}}).sandbox_name is None  # a single container, no pod


def test_the_gpu_container_is_the_one_containerd_checkpointed(tmp_path: Path) -> None:
    dump = tmp_path / "spec.dump"
    dump.write_text(json.dumps({"annotations": {cri.CONTAINER_NAME: "app"}}))
    assert pod(app={}, other={"mounts": [CUDA_MOUNT]}).specs  # sanity
    assert pod_restore.gpu_container(pod(app={}, other={"mounts": [CUDA_MOUNT]}), str(dump)) == "app"


def test_without_spec_dump_the_only_container_with_the_cuda_mount_is_it(tmp_path: Path) -> None:
    assert pod_restore.gpu_container(pod(app={"mounts": [CUDA_MOUNT]}, sidecar={}), None) == "app"
    assert pod_restore.gpu_container(pod(a={"mounts": [CUDA_MOUNT]}, b={"mounts": [CUDA_MOUNT]}), None) is None
    dump = tmp_path / "spec.dump"
    dump.write_text(json.dumps({"annotations": {cri.CONTAINER_NAME: "gone"}}))  # not in the image
    assert pod_restore.gpu_container(pod(app={"mounts": [CUDA_MOUNT]}), str(dump)) == "app"
    dump.write_text("not json")
    assert pod_restore.gpu_container(pod(app={"mounts": [CUDA_MOUNT]}), str(dump)) == "app"


def test_the_annotation_is_read_as_it_is_or_as_empty() -> None:
    assert pod_restore.requested({"annotations": {pod_restore.ANNOTATION: "/x.tar"}}) == "/x.tar"
    assert pod_restore.requested({"annotations": {pod_restore.ANNOTATION: 5}}) == ""  # refused as unusable later
    assert pod_restore.requested({"annotations": {}}) is None
    assert pod_restore.requested({"annotations": "nonsense"}) is None
    assert pod_restore.requested({}) is None
