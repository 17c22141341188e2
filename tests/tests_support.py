"""Helpers shared by tests (not fixtures)."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "fakes"))

import fake_runsc


def fake_accepts(verb: str, tokens: list[str]) -> bool:
    """Whether the strict fake runsc's flag parser accepts ``tokens`` for ``verb``."""
    bools, values = fake_runsc.VERBS[verb]
    try:
        fake_runsc.GoFlags(bools, values).parse(list(tokens))
    except fake_runsc.Fatal:
        return False
    return True
