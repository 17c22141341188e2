"""The OCI runtime side of runsc-cuda: what it does with runc-style calls themselves."""
