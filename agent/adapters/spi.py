"""Inbound SPIs reserved in the data plane before the engine announces them.

The engine asks for an SPI synchronously, in the middle of building a message; the data plane
reserves one asynchronously (XFRM_MSG_ALLOCSPI). So each IKE SA keeps a small stock of SPIs
reserved ahead of time for its addresses, topped up after every use. Only if the stock is empty
(a reservation still in flight) does the engine get an unreserved random SPI, counted in
`stats["spi_unreserved"]`; the data plane then still rejects a clash when the SA is added.
Reservations older than RESERVATION_TTL are not handed out: the kernel drops a larval SA after
net.core.xfrm_acq_expires (30 s by default), so an old spare may no longer be reserved."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from collections.abc import Callable

from meshsec.agent.adapters.install import ip
from meshsec.agent.dataplane.api import DataPlane, DataPlaneError, IpsecProtocol, SaId
from meshsec.agent.ike.address import Address
from meshsec.agent.ike.constants import ProtocolId
from meshsec.agent.ike.random import Random
from meshsec.agent.ike.sa import SpiAllocator, random_spi_allocator

log = logging.getLogger(__name__)

RESERVATION_TTL = 20.0


def _ipsec(protocol: ProtocolId) -> IpsecProtocol:
    return IpsecProtocol.AH if protocol == ProtocolId.AH else IpsecProtocol.ESP


class SpiStock:
    """The reserved SPIs of one IKE SA."""

    def __init__(self, owner: SpiReserver, local: Address, remote: Address) -> None:
        self._owner = owner
        self.local = local
        self.remote = remote
        self.free: dict[ProtocolId, deque[tuple[int, float]]] = {}  # (SPI, reserved at)
        self.closed = False

    def take(self, protocol: ProtocolId) -> int:
        """The engine's SpiAllocator."""
        stock = self.free.get(protocol)
        self._owner.top_up(self, protocol)
        now = self._owner.clock()
        while stock:
            spi, reserved_at = stock.popleft()
            if now - reserved_at < RESERVATION_TTL:
                return spi
            self._owner.stats["spi_reservation_expired"] += 1
            self._owner.release(self, protocol, spi)
        self._owner.stats["spi_unreserved"] += 1
        return self._owner.fallback(protocol)

    def release(self) -> None:
        """The IKE SA is gone: give unused reservations back to the data plane."""
        self.closed = True
        for protocol, spis in self.free.items():
            while spis:
                self._owner.release(self, protocol, spis.popleft()[0])


class SpiReserver:
    def __init__(
        self, dataplane: DataPlane, rnd: Random, spare: int = 1, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.dataplane = dataplane
        self.spare = spare
        self.clock = clock
        self.stats: Counter[str] = Counter()
        self.fallback: SpiAllocator = random_spi_allocator(rnd)
        self._tasks: set[asyncio.Task[None]] = set()
        # Work for one worker task: a task per SPI would cost more than most data planes'
        # allocate_spi itself, at thousands of SAs per second.
        self._requests: deque[tuple[SpiStock, ProtocolId, int | None]] = deque()  # int: release
        self._worker: asyncio.Task[None] | None = None

    def stock(self, local: Address, remote: Address, protocols: set[ProtocolId]) -> SpiStock:
        """A new stock for one IKE SA, with `spare` SPIs per protocol being reserved now."""
        st = SpiStock(self, local, remote)
        for protocol in protocols:
            st.free[protocol] = deque()
            for _ in range(self.spare):
                self.top_up(st, protocol)
        return st

    async def fill(self, st: SpiStock, protocol: ProtocolId, count: int) -> None:
        """Reserves `count` SPIs and waits for them (an initiator does this before it starts).
        Not through the worker, so an initiator does not wait behind every queued top-up; a
        failure other than DataPlaneError (which leaves the stock short) raises here."""
        for _ in range(count):
            await self._reserve_one(st, protocol)

    def top_up(self, st: SpiStock, protocol: ProtocolId) -> None:
        self._request((st, protocol, None))

    def _request(self, item: tuple[SpiStock, ProtocolId, int | None]) -> None:
        self._requests.append(item)
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._work())
            self._tasks.add(self._worker)
            self._worker.add_done_callback(self._tasks.discard)

    async def _work(self) -> None:
        try:
            while self._requests:
                st, protocol, spi = self._requests.popleft()
                try:
                    if spi is None:
                        await self._reserve_one(st, protocol)
                    else:
                        with contextlib.suppress(DataPlaneError):
                            await self.dataplane.delete_sa(SaId(ip(st.local.host), spi, _ipsec(protocol)))
                except Exception:
                    # Only this request fails: the ones queued behind it have no other worker.
                    self.stats["spi_request_errors"] += 1
                    log.exception("SPI %s failed unexpectedly", "reservation" if spi is None else "release")
        finally:
            self._worker = None

    async def _reserve_one(self, st: SpiStock, protocol: ProtocolId) -> None:
        try:
            spi = await self.dataplane.allocate_spi(_ipsec(protocol), ip(st.remote.host), ip(st.local.host))
        except DataPlaneError as exc:
            self.stats["spi_reserve_failed"] += 1
            log.warning("could not reserve an inbound SPI: %s", exc)
            return
        self.stats["spi_reserved"] += 1
        if st.closed:
            self.release(st, protocol, spi)
        else:
            st.free.setdefault(protocol, deque()).append((spi, self.clock()))

    def release(self, st: SpiStock, protocol: ProtocolId, spi: int) -> None:
        self._request((st, protocol, spi))

    async def drain(self) -> None:
        """Waits for reservations in flight (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
