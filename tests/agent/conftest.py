"""`pair`: two reconcilers over real IKE adapters (UDP on 127.77.0.1 and 127.77.0.2), for the
reconciler tests; stopped without DELETEs after the test, whatever it left running."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest

from tests.agent.test_reconciler import Side, start_side, stop_side


@pytest.fixture
async def pair() -> AsyncIterator[list[Side]]:
    sides = [await start_side("a", "127.77.0.1"), await start_side("b", "127.77.0.2")]
    try:
        yield sides
    finally:
        for s in sides:
            with contextlib.suppress(Exception):
                await stop_side(s, graceful=False)
