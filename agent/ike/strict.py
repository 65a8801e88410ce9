"""Strict mode: whether an unexpected exception inside the engine is re-raised.

Off (production): the engine fails the IKE SA closed (IkeSaFailed with INTERNAL_ERROR, one log
line with the traceback, stats["internal_error"]) and carries on with every other SA. On (the
test suite, MESHSEC_STRICT=1): the exception propagates, so no test can pass on a swallowed bug.
Undeclared state transitions are treated the same way (see states.py)."""

from __future__ import annotations

import os

enabled: bool = os.environ.get("MESHSEC_STRICT", "") == "1"


def set_strict(on: bool) -> bool:
    """Switches strict mode; returns the previous setting (for tests that restore it)."""
    global enabled
    previous, enabled = enabled, on
    return previous
