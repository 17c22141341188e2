"""Where runsc-cuda and the programs around it live on an installed host.

One table for the .deb, the ready configs in packaging/, ``runsc-cuda doctor``
and the docs; tests check that they all agree with it.
"""

from __future__ import annotations

from runsc_cuda.oci.runsc import DEFAULT_CONFIG

# The runtime name: Docker's runtimes key, containerd's runtime (the CRI
# handler), Kubernetes' RuntimeClass handler.
RUNTIME_NAME = "runsc-cuda"
# The .deb's layout.
BIN_PATH = "/usr/bin/runsc-cuda"
LIB_DIR = "/usr/lib/runsc-cuda"
CONFIG_PATH = DEFAULT_CONFIG
DOC_DIR = "/usr/share/doc/runsc-cuda"
# Where runsc-cuda mounts the host's cuda-checkpoint in a GPU container (read-only), and so the
# path the exec engine runs and the native engine's --cuda-checkpoint-path names.
CONTAINER_CUDA_CHECKPOINT = "/usr/local/bin/cuda-checkpoint"
# What the engines' configs are read from by default.
DOCKER_CONFIG = "/etc/docker/daemon.json"
CONTAINERD_CONFIG = "/etc/containerd/config.toml"
PROC_DRIVER_NVIDIA = "/proc/driver/nvidia"
# containerd's CRI plugin, by config version.
CONTAINERD_CRI_PLUGIN = {
    2: "io.containerd.grpc.v1.cri",  # containerd 1.x
    3: "io.containerd.cri.v1.runtime",  # containerd 2.x
}
RUNC_V2_SHIM = "io.containerd.runc.v2"
RUNSC_V1_SHIM = "io.containerd.runsc.v1"
