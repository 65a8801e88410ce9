"""Bounded waits that never lose a cancellation.

On Python 3.11, `asyncio.wait_for` returns the result when the task is cancelled just as the
awaited thing completes, and the cancellation is gone (CPython gh-86296, fixed in 3.12). A loop
that waits on an event with it (a reconciler woken by every IKE event) then never stops when its
task is cancelled: a shutdown hangs. `asyncio.timeout` tells its own expiry from a cancellation
and passes the latter on, so every bounded wait in the tree goes through here."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


def _limit(seconds: float | None) -> float | None:
    return None if seconds is None or math.isinf(seconds) else max(0.0, seconds)


async def within(seconds: float | None, awaitable: Awaitable[T]) -> T:
    """`await awaitable`, raising TimeoutError after `seconds` (None or inf: no limit)."""
    async with asyncio.timeout(_limit(seconds)):
        return await awaitable


async def set_within(event: asyncio.Event, seconds: float | None) -> bool:
    """Waits until `event` is set (True) or `seconds` have passed (False)."""
    try:
        await within(seconds, event.wait())
    except TimeoutError:
        return False
    return True
