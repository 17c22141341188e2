"""What containerd's CRI plugin writes into a pod container's spec, and the rules read from it.

Imports nothing: ``start``'s pass-through hook (oci/stdio.py) reads these names.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing itself costs ~4 ms to import; mypy honours this spelling
if TYPE_CHECKING:
    from typing import Any

CONTAINER_TYPE = "io.kubernetes.cri.container-type"
CONTAINER_NAME = "io.kubernetes.cri.container-name"
SANDBOX_ID = "io.kubernetes.cri.sandbox-id"
SANDBOX_UID = "io.kubernetes.cri.sandbox-uid"  # the pod's UID
SANDBOX = "sandbox"  # the pod's first (pause) container: gVisor's root container
CONTAINER = "container"  # every other container of the pod: a sub-container of the sandbox


def annotations_of(doc: dict[str, Any]) -> dict[str, Any]:
    value = doc.get("annotations")
    return value if isinstance(value, dict) else {}


def is_subcontainer(doc: dict[str, Any]) -> bool:
    """A pod's container other than its pause container."""
    return annotations_of(doc).get(CONTAINER_TYPE) == CONTAINER


def own_pid_namespace(doc: dict[str, Any]) -> bool:
    """A pod's container with a PID namespace of its own (the kubelet's default; not with
    ``shareProcessNamespace: true``): runsc makes it a child PID namespace of the sandbox, so the
    PIDs ``runsc ps`` lists (the sandbox's) are not the ones its processes, and ``runsc exec`` in it,
    see.  A namespace with a path joins another container's."""
    if not is_subcontainer(doc):
        return False
    linux = doc.get("linux")
    spaces = linux.get("namespaces") if isinstance(linux, dict) else None
    if not isinstance(spaces, list):
        return False
    return any(isinstance(ns, dict) and ns.get("type") == "pid" and not ns.get("path") for ns in spaces)
