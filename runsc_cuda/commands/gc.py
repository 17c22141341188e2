"""``runsc-cuda gc [--all]``: remove unpacked checkpoint archives (``<state_dir>/restore-cache``).

Pods restored by annotation (commands/pod_restore.py) unpack an archive once
and reuse it while it is unchanged; an entry not used for
``restore_cache_max_age_s`` is removed here (``--all``: every entry), except
one that is being unpacked right now; so are the markers of pods that ended
while restoring (oci/restoring.py) and were never stopped, and the remembered
ends of pods that lacked a checkpointed container (commands/pod_wait.py).  Run it from cron or a systemd timer.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Mapping

from runsc_cuda import config
from runsc_cuda.commands import pod_wait
from runsc_cuda.errors import ShimError
from runsc_cuda.image import archive
from runsc_cuda.oci import restoring
from runsc_cuda.oci.argv import CommandLine

NEEDS_SESSION = False  # no runsc needed: only the config and the cache

USAGE = "usage: runsc-cuda gc [--all]\n"


def main(cmd: CommandLine, environ: Mapping[str, str]) -> int:
    args = list(cmd.rest)
    if args and args[0] in ("-h", "--help"):
        sys.stdout.write(USAGE + (__doc__ or ""))
        return 0
    if args not in ([], ["--all"]):
        sys.stderr.write(f"runsc-cuda gc: unknown arguments {' '.join(args)[:200]}\n{USAGE}")
        return 2
    try:
        cfg = config.load(environ)
    except ShimError as e:
        sys.stderr.write(f"runsc-cuda gc: {e.message}\n")
        return 1
    removed, busy = archive.collect(cfg.state_dir, 0.0 if args else cfg.restore_cache_max_age_s)
    removed += pod_wait.forget(cfg.state_dir, 0.0 if args else cfg.restore_cache_max_age_s)
    for path in restoring.stale_markers(cfg.state_dir):  # pods that ended while restoring, never killed
        with contextlib.suppress(OSError):
            os.unlink(path)
            removed.append(path)
    for path in removed:
        sys.stdout.write(f"removed {path}\n")
    for path in busy:
        sys.stdout.write(f"kept {path}: in use\n")
    return 0
