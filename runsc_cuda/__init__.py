"""runsc-cuda: an OCI runtime that makes GPU containers under gVisor checkpoint and restore."""

__version__ = "0.1.0"
