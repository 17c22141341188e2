"""create / run: patch a GPU bundle, turn nvproxy on, hand over to runsc."""

from __future__ import annotations

from runsc_cuda.modifier import prepare
from runsc_cuda.oci import subcontainer
from runsc_cuda.session import Session


def handle(session: Session) -> int:
    """create and run: prepare, then become runsc."""
    verb = session.cmd.verb or "create"
    prepared = prepare(session, verb)
    if verb == "create":  # a CRI sub-container: stdio and exit status through a holder (oci/subcontainer.py)
        code = subcontainer.create(session, prepared.cmd, prepared.bundle, prepared.args)
        if code is not None:
            return code
    session.become_runsc(prepared.cmd.tokens()[1:])
    return 0  # not reached
