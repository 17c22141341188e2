"""create / run: patch a GPU bundle, turn nvproxy on, hand over to runsc.

A pod container whose spec carries ``dev.runsc-cuda.restore-from`` is restored
instead (commands/pod_restore.py).
"""

from __future__ import annotations

import json
import os
from typing import Any

from runsc_cuda.modifier import prepare, translated_args
from runsc_cuda.oci import spec, subcontainer
from runsc_cuda.session import Session


def handle(session: Session) -> int:
    """create and run: prepare, then become runsc."""
    verb = session.cmd.verb or "create"
    if verb == "create":
        args = translated_args(session, verb)
        doc = _bundle_doc(spec.bundle_dir(args.value("bundle"), session.cwd))
        if doc is not None and "dev.runsc-cuda.restore-from" in (doc.get("annotations") or {}):
            from runsc_cuda.commands import pod_restore

            value = pod_restore.requested(doc)
            return pod_restore.handle(session, args, doc, value or "")
    prepared = prepare(session, verb)
    if verb == "create":  # a CRI sub-container: stdio and exit status through a holder (oci/subcontainer.py)
        code = subcontainer.create(session, prepared.cmd, prepared.bundle, prepared.args)
        if code is not None:
            return code
    session.become_runsc(prepared.cmd.tokens()[1:])
    return 0  # not reached


def _bundle_doc(bundle: str) -> dict[str, Any] | None:
    """config.json as read (None when unreadable: prepare and runsc say why)."""
    try:
        with open(os.path.join(bundle, "config.json"), "rb") as f:
            doc = json.load(f)
    except (OSError, ValueError, RecursionError):
        return None  # spec.read says what is wrong with it
    return doc if isinstance(doc, dict) and isinstance(doc.get("annotations", {}), dict) else None
