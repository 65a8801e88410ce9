"""Bounded waits keep a cancellation that arrives as the awaited thing completes. The case is the
reconciler's loop: woken by an IKE event in the same turn its task is cancelled, it must stop
(with Python 3.11's asyncio.wait_for it went on for ever and the agent's shutdown hung)."""

from __future__ import annotations

import asyncio

import pytest

from meshsec.common.deadline import set_within, within


async def _loop_waiting_on(event: asyncio.Event) -> None:
    while True:
        event.clear()
        await set_within(event, 30.0)


async def test_a_loop_stops_when_cancelled_in_the_turn_its_event_is_set() -> None:
    event = asyncio.Event()
    task = asyncio.create_task(_loop_waiting_on(event))
    await asyncio.sleep(0.01)
    event.set()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(asyncio.shield(task), 2.0)
    assert task.cancelled()


async def test_set_within_says_whether_the_event_came() -> None:
    event = asyncio.Event()
    assert await set_within(event, 0.01) is False
    event.set()
    assert await set_within(event, 0.01) is True
    assert await set_within(event, float("inf")) is True


async def test_within_returns_the_result_or_raises_timeout() -> None:
    assert await within(1.0, asyncio.sleep(0, result="done")) == "done"
    with pytest.raises(TimeoutError):
        await within(0.01, asyncio.sleep(5))
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    with pytest.raises(TimeoutError):
        await within(0.01, future)
    assert future.cancelled()  # nothing is left waiting on the abandoned future
