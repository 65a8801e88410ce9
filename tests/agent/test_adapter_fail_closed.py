"""Fail closed at the adapter: an unexpected exception while handling one IKE SA (here: the
event callback raising, standing in for any bug of ours) fails that SA. Its CHILD_SAs leave the
data plane, one log line with the traceback says why, `sa_failed_closed` counts it, and the
adapter goes on with other SAs; in strict mode the exception is raised as well. Two real
adapters (real engines, UDP on 127.77.0.21/22) over recording data planes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

import pytest

from meshsec.agent.adapters.ike import AdapterSettings, IkeAdapter, SaRecord
from meshsec.agent.adapters.recording import RecordingDataPlane
from meshsec.agent.ike import Address, ChildSaDeleted, Event, IkeConfig, LivenessChecked, strict
from meshsec.agent.ike.config import ChildConfig
from meshsec.agent.ike.ts import Ts
from meshsec.common.secrets import Secret

pytestmark = pytest.mark.timeout(60)
A, B, PORT = "127.77.0.21", "127.77.0.22", 15700


def config(me: str, peer: str, mine: str, theirs: str) -> IkeConfig:
    child = ChildConfig("net", (Ts.from_cidr(mine),), (Ts.from_cidr(theirs),))
    return IkeConfig("conn", f"{me}.test", f"{peer}.test", Secret("fail-closed-psk"), children=(child,))


class Bug(Exception):
    pass


class Callback:
    """The adapter's event callback; raises Bug for the first event `trips` accepts."""

    def __init__(self, trips: Callable[[Event], bool]) -> None:
        self.trips = trips
        self.tripped = False

    def __call__(self, record: SaRecord, ev: Event) -> None:
        if not self.tripped and self.trips(ev):
            self.tripped = True
            raise Bug("a bug of ours")


async def until(what: str, check: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def adapters(callback: Callback) -> AsyncIterator[tuple[IkeAdapter, IkeAdapter]]:
    responder = config("b", "a", "198.19.70.2/32", "198.19.70.1/32")
    a = IkeAdapter(lambda local, remote: [], dataplane=RecordingDataPlane(),
                   settings=AdapterSettings(bind=(A,), ike_port=PORT), on_event=callback)  # fmt: skip
    b = IkeAdapter(lambda local, remote: [responder], dataplane=RecordingDataPlane(),
                   settings=AdapterSettings(bind=(B,), ike_port=PORT))  # fmt: skip
    for x in (a, b):
        assert x.dataplane is not None
        await x.dataplane.start()
        await x.start()
    try:
        yield a, b
    finally:
        for x in (a, b):
            await x.close(graceful=False)
            x.close_sockets()


INITIATOR = config("a", "b", "198.19.70.1/32", "198.19.70.2/32")


async def establish(a: IkeAdapter) -> SaRecord:
    """A new IKE SA from `a`, its CHILD_SA installed in `a`'s data plane."""
    await a.initiate(INITIATOR, Address(B, PORT), Address(A, PORT))
    await until("established", lambda: established(a))
    await a.settle()
    assert len(dataplane(a).sas) == 2 and dataplane(a).policies
    (record,) = established(a)
    return record


def established(adapter: IkeAdapter) -> list[SaRecord]:
    return [r for r in adapter.active() if r.sa.established and any(c.installed for c in r.children.values())]


def dataplane(adapter: IkeAdapter) -> RecordingDataPlane:
    assert isinstance(adapter.dataplane, RecordingDataPlane)
    return adapter.dataplane


async def test_an_unexpected_error_fails_only_the_sa_it_hit(
    caplog: pytest.LogCaptureFixture, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(strict, "enabled", False)  # what a production agent does
    caplog.set_level(logging.INFO)
    # The bug strikes on the answer to a liveness check, with the CHILD_SA installed.
    callback = Callback(lambda ev: isinstance(ev, LivenessChecked))
    async with adapters(callback) as (a, _):
        a.check_liveness(await establish(a))
        await until("the SA failed closed", lambda: a.stats["sa_failed_closed"] == 1 and not a.active())
        await a.settle()
        assert not dataplane(a).sas and not dataplane(a).policies
        assert [r.outcome for r in a.history] == ["failed: internal error"]
        logged = [r for r in caplog.records if r.name == "meshsec.agent.adapters.ike" and r.exc_info]
        assert len(logged) == 1 and logged[0].exc_info is not None and logged[0].exc_info[0] is Bug
        assert "failing IKE SA" in logged[0].getMessage()
        await establish(a)  # the adapter goes on: the next IKE SA works and is installed
        assert a.stats["sa_failed_closed"] == 1


async def test_in_strict_mode_the_error_is_raised_after_the_clean_up(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(strict, "enabled", True)
    callback = Callback(lambda ev: isinstance(ev, ChildSaDeleted))
    async with adapters(callback) as (a, _):
        record = await establish(a)
        with pytest.raises(Bug):
            a.drop(record)  # its CHILD_SA's deletion reaches the bug
        await a.settle()
        assert not dataplane(a).sas and not dataplane(a).policies
        assert a.stats["sa_failed_closed"] == 1 and not a.active()
