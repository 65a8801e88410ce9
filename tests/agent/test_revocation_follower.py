"""The gateway's revocation follower: the list the controller pushes in NodeConfig.revocation
replaces the one it has and closes the clients now on it, and while pushes come nothing polls;
a controller that does not push (no field) is polled, and only by a node serving a pool."""

from __future__ import annotations

import asyncio

import pytest

from meshsec.agent.gateway.revocation import RevocationFollower
from meshsec.agent.ike.revocation import RevocationList

pytestmark = pytest.mark.timeout(20)


class Controller:
    """ListRevokedCertificates with a list the test sets, counting its calls."""

    def __init__(self) -> None:
        self.serials: list[str] = []
        self.calls = 0

    async def fetch(self) -> list[str]:
        self.calls += 1
        return list(self.serials)


async def _until(check: object, timeout: float = 5.0) -> None:
    async def wait() -> None:
        while not check():  # type: ignore[operator]
            await asyncio.sleep(0.01)

    await asyncio.wait_for(wait(), timeout)


async def test_a_pushed_list_acts_at_once_and_stops_the_poll_until_a_config_comes_without_it() -> None:
    ctl, dropped = Controller(), []
    follower = RevocationFollower(ctl.fetch, RevocationList(), dropped.append, interval=0.02)
    task = asyncio.get_running_loop().create_task(follower.run())
    try:
        await asyncio.sleep(0.1)
        assert ctl.calls == 0  # serving no pool: no list needed, none fetched
        follower.serving = True
        await _until(lambda: ctl.calls > 0)
        assert follower.replace(["0A1b", "c3"]) == frozenset({"a1b", "c3"})  # acted on at once
        assert dropped == [frozenset({"a1b", "c3"})] and "a1b" in follower.revocations
        calls = ctl.calls
        await asyncio.sleep(0.2)  # ten poll intervals
        assert ctl.calls <= calls + 1  # at most the poll that was already out when the push came
        assert follower.replace(["a1b", "c3"]) == frozenset() and len(dropped) == 1  # nothing new
        # An older controller's NodeConfig (no revocation field): polling resumes.
        follower.pushed = False
        ctl.serials = ["a1b", "c3", "ff"]
        await _until(lambda: "ff" in follower.revocations)
        assert dropped[-1] == frozenset({"ff"})
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_a_poll_that_was_out_when_the_push_came_does_not_replace_the_pushed_list() -> None:
    release = asyncio.Event()
    dropped: list[frozenset[str]] = []

    async def slow_fetch() -> list[str]:
        await release.wait()
        return []  # older than the push below

    follower = RevocationFollower(slow_fetch, RevocationList(), dropped.append)
    poll = asyncio.get_running_loop().create_task(follower.poll_once())
    await asyncio.sleep(0)
    follower.replace(["beef"])
    release.set()
    assert await poll == frozenset()
    assert "beef" in follower.revocations
