"""Inbound SPIs come from data-plane reservations made ahead of the engine's synchronous ask."""

from __future__ import annotations

import ipaddress

import pytest

from meshsec.agent.adapters.recording import RecordingDataPlane
from meshsec.agent.adapters.spi import RESERVATION_TTL, SpiReserver
from meshsec.agent.dataplane.api import IPAddress, IpsecProtocol, SaId
from meshsec.agent.ike.address import Address
from meshsec.agent.ike.constants import ProtocolId
from meshsec.agent.ike.random import DeterministicRandom

LOCAL, REMOTE = Address("198.18.61.1", 500), Address("198.18.61.2", 500)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_take_hands_out_reserved_spis_and_tops_up() -> None:
    dp = RecordingDataPlane()
    reserver = SpiReserver(dp, DeterministicRandom("spi"), clock=Clock())
    stock = reserver.stock(LOCAL, REMOTE, {ProtocolId.ESP})
    await reserver.drain()
    reserved = {sa_id.spi for sa_id in dp.reserved}
    spi = stock.take(ProtocolId.ESP)
    assert spi in reserved
    await reserver.drain()
    assert len(dp.reserved) == 2 and reserver.stats["spi_unreserved"] == 0  # topped up again
    assert SaId(ipaddress.ip_address(LOCAL.host), spi, IpsecProtocol.ESP) in dp.reserved


async def test_empty_or_expired_stock_falls_back_and_counts() -> None:
    dp, clock = RecordingDataPlane(), Clock()
    reserver = SpiReserver(dp, DeterministicRandom("spi"), clock=clock)
    stock = reserver.stock(LOCAL, REMOTE, {ProtocolId.ESP})
    unreserved = stock.take(ProtocolId.ESP)  # the reservation is still in flight
    assert unreserved > 255 and reserver.stats["spi_unreserved"] == 1
    await reserver.drain()
    clock.now += RESERVATION_TTL + 1  # the kernel would have dropped those larval SAs by now
    fallback = stock.take(ProtocolId.ESP)
    await reserver.drain()
    assert reserver.stats["spi_reservation_expired"] == 2 and reserver.stats["spi_unreserved"] == 2
    assert fallback not in {sa_id.spi for sa_id in dp.reserved}


async def test_release_returns_unused_reservations() -> None:
    dp = RecordingDataPlane()
    reserver = SpiReserver(dp, DeterministicRandom("spi"), spare=3, clock=Clock())
    stock = reserver.stock(LOCAL, REMOTE, {ProtocolId.ESP, ProtocolId.AH})
    await reserver.drain()
    assert len(dp.reserved) == 6
    stock.release()
    await reserver.drain()
    assert dp.reserved == set()


class Faulty(RecordingDataPlane):
    """Fails the next `fail` reservations and releases with an error nobody planned for."""

    def __init__(self) -> None:
        super().__init__()
        self.fail = 0

    def _maybe_fail(self) -> None:
        if self.fail:
            self.fail -= 1
            raise RuntimeError("data plane bug")

    async def allocate_spi(self, protocol: IpsecProtocol, src: IPAddress, dst: IPAddress) -> int:
        self._maybe_fail()
        return await super().allocate_spi(protocol, src, dst)

    async def delete_sa(self, sa_id: SaId) -> None:
        self._maybe_fail()
        await super().delete_sa(sa_id)


async def test_an_unexpected_failure_fails_one_request_and_the_worker_keeps_serving() -> None:
    dp = Faulty()
    reserver = SpiReserver(dp, DeterministicRandom("spi"), spare=3, clock=Clock())
    dp.fail = 1
    stock = reserver.stock(LOCAL, REMOTE, {ProtocolId.ESP})  # three reservations queued
    await reserver.drain()
    assert len(dp.reserved) == 2 and reserver.stats["spi_request_errors"] == 1
    assert len(stock.free[ProtocolId.ESP]) == 2

    dp.fail = 1  # the first release fails; the other one still reaches the data plane
    stock.release()
    await reserver.drain()
    assert len(dp.reserved) == 1 and reserver.stats["spi_request_errors"] == 2

    # An initiator waiting for its own reservation gets the exception.
    other = reserver.stock(LOCAL, REMOTE, set())
    dp.fail = 1
    with pytest.raises(RuntimeError, match="data plane bug"):
        await reserver.fill(other, ProtocolId.ESP, 1)
    await reserver.fill(other, ProtocolId.ESP, 1)
    assert len(other.free[ProtocolId.ESP]) == 1
