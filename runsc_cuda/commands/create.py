"""create / run: patch a GPU bundle, turn nvproxy on, hand over to runsc."""

from __future__ import annotations

from runsc_cuda.modifier import prepare
from runsc_cuda.session import Session


def handle(session: Session) -> int:
    """create and run: prepare, then become runsc."""
    prepared = prepare(session, session.cmd.verb or "create")
    session.become_runsc(prepared.cmd.tokens()[1:])
    return 0  # not reached
