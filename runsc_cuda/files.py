"""Small files runsc-cuda owns (the image sidecar, the runsc help cache): written whole or not at all.

config.json has its own, stricter save in ``spec`` (original mode, folder fsync).
"""

from __future__ import annotations

import contextlib
import os


def write_atomic(path: str, text: str, durable: bool = True) -> None:
    """Write ``text`` to a temp file next to ``path`` and rename it over; OSError on failure.

    The temp name carries the PID, so concurrent writers never share one; ``durable``
    fsyncs the data before the rename (a cache can do without).
    """
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
