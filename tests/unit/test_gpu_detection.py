"""Whether a container asks for GPUs is a pure function of its spec."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from runsc_cuda.errors import ShimError
from runsc_cuda.oci.spec import gpu_request

from support import fixture_spec


def plain() -> dict[str, Any]:
    return fixture_spec("plain")


def with_env(doc: dict[str, Any], *env: str) -> dict[str, Any]:
    doc["process"]["env"] = list(doc["process"]["env"]) + list(env)
    return doc


def with_hook(doc: dict[str, Any], kind: str, path: str) -> dict[str, Any]:
    doc.setdefault("hooks", {}).setdefault(kind, []).append({"path": path, "args": [path.rsplit("/", 1)[-1]]})
    return doc


def annotate(doc: dict[str, Any], key: str, value: str) -> dict[str, Any]:
    doc.setdefault("annotations", {})[key] = value
    return doc


CASES: list[tuple[str, Any, bool]] = [
    ("docker --device /dev/nvidia*", lambda: fixture_spec("gpu-devices"), True),
    ("plain busybox", plain, False),
    (
        "NVIDIA_VISIBLE_DEVICES=all alone (CUDA base images)",
        lambda: with_env(plain(), "NVIDIA_VISIBLE_DEVICES=all"),
        False,
    ),
    ("CDI hook", lambda: with_hook(plain(), "createContainer", "/usr/bin/nvidia-cdi-hook"), True),
    (
        "CDI hook under another folder",
        lambda: with_hook(plain(), "createContainer", "/opt/nv/bin/nvidia-cdi-hook"),
        True,
    ),
    (
        "legacy hook with env",
        lambda: with_env(
            with_hook(plain(), "prestart", "/usr/bin/nvidia-container-runtime-hook"), "NVIDIA_VISIBLE_DEVICES=0,1"
        ),
        True,
    ),
    (
        "legacy hook without env",
        lambda: with_hook(plain(), "prestart", "/usr/bin/nvidia-container-runtime-hook"),
        False,
    ),
    (
        "legacy hook with empty env",
        lambda: with_env(
            with_hook(plain(), "prestart", "/usr/bin/nvidia-container-runtime-hook"), "NVIDIA_VISIBLE_DEVICES="
        ),
        False,
    ),
    (
        "legacy hook with void",
        lambda: with_env(
            with_hook(plain(), "prestart", "/usr/bin/nvidia-container-runtime-hook"), "NVIDIA_VISIBLE_DEVICES=void"
        ),
        False,
    ),
    (
        "legacy hook with none",
        lambda: with_env(
            with_hook(plain(), "prestart", "/usr/bin/nvidia-container-runtime-hook"), "NVIDIA_VISIBLE_DEVICES=none"
        ),
        False,
    ),
    (
        "legacy hook, env set then voided",
        lambda: with_env(
            with_hook(plain(), "prestart", "/usr/bin/nvidia-container-runtime-hook"),
            "NVIDIA_VISIBLE_DEVICES=all",
            "NVIDIA_VISIBLE_DEVICES=void",
        ),
        False,
    ),
    (
        "legacy hook name as a createContainer hook",
        lambda: with_env(
            with_hook(plain(), "createContainer", "/usr/bin/nvidia-container-runtime-hook"),
            "NVIDIA_VISIBLE_DEVICES=all",
        ),
        False,
    ),
    (
        "a hook that merely contains nvidia",
        lambda: with_hook(plain(), "createContainer", "/usr/bin/nvidia-cdi-hook-old"),
        False,
    ),
    ("CDI annotation for an NVIDIA GPU", lambda: annotate(plain(), "cdi.k8s.io/gpu", "nvidia.com/gpu=0"), True),
    (
        "CDI annotation listing several devices",
        lambda: annotate(plain(), "cdi.k8s.io/x", "vendor.com/net=a,nvidia.com/gpu=all"),
        True,
    ),
    ("CDI annotation for another vendor", lambda: annotate(plain(), "cdi.k8s.io/net", "example.com/net=eth1"), False),
    ("gVisor's nvproxy annotation", lambda: annotate(plain(), "dev.gvisor.internal.nvproxy", "true"), True),
    ("override true on a plain container", lambda: annotate(plain(), "dev.runsc-cuda.gpu", "true"), True),
    (
        "override false on a GPU container",
        lambda: annotate(fixture_spec("gpu-devices"), "dev.runsc-cuda.gpu", "false"),
        False,
    ),
    ("override is case-insensitive", lambda: annotate(plain(), "dev.runsc-cuda.gpu", "TRUE"), True),
    ("a non-nvidia device", lambda: _device(plain(), "/dev/fuse"), False),
    (
        "null devices, hooks, annotations",
        lambda: {**plain(), "hooks": None, "annotations": None, "linux": {**plain()["linux"], "devices": None}},
        False,
    ),
]


def _device(doc: dict[str, Any], path: str) -> dict[str, Any]:
    doc["linux"].setdefault("devices", []).append({"path": path, "type": "c", "major": 10, "minor": 229})
    return doc


@pytest.mark.parametrize("name,make,wanted", CASES, ids=[c[0] for c in CASES])
def test_gpu_detection_table(name: str, make: Any, wanted: bool) -> None:
    doc = make()
    before = copy.deepcopy(doc)
    result = gpu_request(doc)
    assert result.wanted is wanted, result.reason
    assert result.reason
    assert doc == before  # a pure function


def test_an_invalid_override_value_is_an_error_naming_the_annotation() -> None:
    with pytest.raises(ShimError, match=r"dev\.runsc-cuda\.gpu.*maybe"):
        gpu_request(annotate(plain(), "dev.runsc-cuda.gpu", "maybe"))


def test_env_alone_reason_says_it_is_not_a_gpu_request() -> None:
    assert "not a GPU request" in gpu_request(with_env(plain(), "NVIDIA_VISIBLE_DEVICES=all")).reason
