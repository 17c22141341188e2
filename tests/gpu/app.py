"""The CUDA workload for the real-GPU check: holds a tensor on the GPU and counts.

    python3 app.py GIB STATUS_FILE [--cpu]

Every ~50 ms it increments a counter, re-reads the whole tensor on the GPU and
compares its sum with the one taken at start, and writes
{"counter", "checksum_ok", "pid", "time", "gib"} to STATUS_FILE (atomically).
``--cpu`` is the same loop without CUDA, for checking the plumbing on a
machine without a GPU.
"""

from __future__ import annotations

import json
import os
import sys
import time


def main() -> int:
    gib = float(sys.argv[1])
    status = sys.argv[2]
    cpu = "--cpu" in sys.argv[3:]
    if cpu:

        def checksum() -> float:
            return 42.0

    else:
        import torch

        n = int(gib * (1 << 30)) // 4
        gen = torch.Generator(device="cuda").manual_seed(1234)
        tensor = torch.rand(n, device="cuda", generator=gen)

        def checksum() -> float:
            return float(tensor.sum(dtype=torch.float64).item())

    reference = checksum()
    counter = 0
    tmp = status + ".tmp"
    while True:
        counter += 1
        value = checksum()
        with open(tmp, "w") as f:
            json.dump(
                {
                    "counter": counter,
                    "checksum_ok": value == reference,
                    "checksum": value,
                    "reference": reference,
                    "pid": os.getpid(),
                    "time": time.time(),
                    "gib": gib,
                },
                f,
            )
        os.replace(tmp, status)
        time.sleep(0.05)


if __name__ == "__main__":
    sys.exit(main())
