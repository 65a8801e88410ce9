"""Strict mode for the adapter's fail-closed paths, the engine's switch (agent/ike/strict.py):
an unexpected exception fails the one IKE SA it hit (its data-plane state removed, one log line
with the traceback, counted) and the adapter goes on; in strict mode (the test suite) it is
raised as well, so a bug cannot hide behind the clean-up."""

from __future__ import annotations

from meshsec.agent.ike import strict as engine_strict


def strict() -> bool:
    return engine_strict.enabled
