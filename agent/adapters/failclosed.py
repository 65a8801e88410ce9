"""Strict mode for the adapter's fail-closed paths: an unexpected exception fails the one IKE SA
it hit (its data-plane state removed, one log line with the traceback, counted) and the adapter
goes on; in strict mode (the test suite) it is raised as well, so a bug cannot hide behind the
clean-up."""

from __future__ import annotations

_strict = False


def strict() -> bool:
    return _strict


def set_strict(on: bool) -> None:
    global _strict
    _strict = on
