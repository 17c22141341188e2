"""The CUDA workload for the real-GPU check: holds a tensor on the GPU and counts.

    python3 app.py GIB STATUS_FILE [--cpu]

Every ~50 ms it increments a counter, writes it to STATUS_FILE.alive (the
process runs), re-reads the whole tensor on the GPU and compares its sum with
the one taken at start, and writes {"counter", "checksum_ok", "pid", "time",
"gib"} to STATUS_FILE (atomically).  ``--cpu`` is the same loop without CUDA,
for checking the plumbing on a machine without a GPU: the "tensor" is GIB of
random bytes in host memory, checked with CRC-32.
"""

from __future__ import annotations

import json
import os
import sys
import time
import zlib


def main() -> int:
    gib = float(sys.argv[1])
    status = sys.argv[2]
    cpu = "--cpu" in sys.argv[3:]
    if cpu:
        data = os.urandom(int(gib * (1 << 30)))

        def checksum() -> float:
            return float(zlib.crc32(data))

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
    alive = status + ".alive"
    while True:
        counter += 1
        with open(alive + ".tmp", "w") as f:
            f.write(str(counter))
        os.replace(alive + ".tmp", alive)
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
