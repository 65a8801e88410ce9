"""Every IKE SA of one agent in one object, so an adapter drives a single thing: datagrams are
routed by our SPI, timers kept in a heap, output and events drained only from SAs that have some."""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING

from meshsec.agent.ike.address import Address
from meshsec.agent.ike.events import Event
from meshsec.agent.ike.parse import ParseError, parse_header
from meshsec.agent.ike.sa import IkeSa, OutgoingDatagram, State

if TYPE_CHECKING:
    from meshsec.agent.ike.responder import Responder


class IkeSaTable:
    """Every IKE SA of one agent, keyed by our SPI; half-open responder SAs also by
    (SPIi, remote) so retransmitted IKE_SA_INITs reach the SA that answered them."""

    def __init__(self, responder: Responder | None = None) -> None:
        self.responder = responder
        self.stats: Counter[str] = Counter()
        self._by_spi: dict[bytes, IkeSa] = {}
        self._by_init: dict[tuple[bytes, Address], IkeSa] = {}
        # SAs that may have datagrams / events pending, so draining never scans every SA.
        self._pending_out: dict[IkeSa, None] = {}
        self._pending_events: dict[IkeSa, None] = {}
        self._init_key: dict[IkeSa, tuple[bytes, Address]] = {}
        # Timer heap with lazy deletion: an entry counts only while it matches _deadline[sa].
        self._timers: list[tuple[float, int, IkeSa]] = []
        self._deadline: dict[IkeSa, float | None] = {}
        self._timer_dirty: dict[IkeSa, None] = {}
        self._seq = 0
        # SAs that took input, ran a timer or produced output since `take_touched`: only their
        # persisted snapshots can have changed (the agent's IKE state file, agent/adapters/resume.py).
        self._touched: dict[IkeSa, None] = {}

    def add(self, sa: IkeSa) -> None:
        self._by_spi[sa.local_spi] = sa
        sa.on_pending = self._mark
        sa.on_new_sa = self.add  # IKE rekeying makes successor SAs
        self._mark(sa)

    def get(self, local_spi: bytes) -> IkeSa | None:
        return self._by_spi.get(local_spi)

    def _mark(self, sa: IkeSa) -> None:
        self._touched[sa] = None
        self._pending_out[sa] = None
        self._pending_events[sa] = None
        self._timer_dirty[sa] = None

    def __iter__(self) -> Iterator[IkeSa]:
        return iter(list(self._by_spi.values()))

    def __len__(self) -> int:
        return len(self._by_spi)

    def half_open(self) -> int:
        return self.half_open_counts(None)[0]

    def half_open_counts(self, host: str | None) -> tuple[int, int]:
        """Half-open responder SAs: in all, and those whose peer has address `host`."""
        total = from_host = 0
        for (_, remote), sa in self._by_init.items():
            if sa.state not in (State.ESTABLISHED, State.CLOSED):
                total += 1
                from_host += remote.host == host
        return total, from_host

    def receive(self, datagram: bytes, local: Address, remote: Address, now: float) -> IkeSa | None:
        """Routes one IKE message; returns the SA that took it (new or existing), if any."""
        try:
            header = parse_header(bytes(datagram))
        except ParseError:
            self.stats["dropped_malformed_header"] += 1
            return None
        if header.is_initiator:  # sent by the original initiator: we are the responder
            if header.spi_r == bytes(8):
                key = (header.spi_i, remote)
                sa = self._by_init.get(key)
                if sa is None or sa.closed:
                    if self.responder is None:
                        self.stats["dropped_no_responder"] += 1
                        return None
                    total, from_remote = self.half_open_counts(remote.host)
                    sa = self.responder.accept(datagram, local, remote, now, total, from_remote)
                    if sa is None:
                        return None
                    self._by_init[key] = sa
                    self._init_key[sa] = key
                    self.add(sa)
                    return sa
            else:
                sa = self._by_spi.get(header.spi_r)
        else:
            sa = self._by_spi.get(header.spi_i)
        if sa is None:
            self.stats["dropped_unknown_spi"] += 1
            return None
        sa.receive(datagram, local, remote, now)
        self._touched[sa] = None
        return sa

    def _refresh_timers(self) -> None:
        # An SA's deadline only moves when it sends something (or closes), which marks it.
        dirty, self._timer_dirty = self._timer_dirty, {}
        for sa in dirty:
            if sa.closed:  # no timers, and an entry here would outlive _reap (a leak per SA)
                self._deadline.pop(sa, None)
                continue
            deadline = sa.next_timer()
            self._deadline[sa] = deadline
            if deadline is not None:
                self._seq += 1
                heapq.heappush(self._timers, (deadline, self._seq, sa))

    def _pop_stale(self) -> None:
        while self._timers:
            deadline, _, sa = self._timers[0]
            if self._deadline.get(sa) == deadline and not sa.closed:
                return
            heapq.heappop(self._timers)

    def handle_timers(self, now: float) -> None:
        self._refresh_timers()
        self._pop_stale()
        due: list[IkeSa] = []
        while self._timers and self._timers[0][0] <= now:
            _, _, sa = heapq.heappop(self._timers)
            if self._deadline.get(sa) is not None and sa not in due:
                due.append(sa)
            self._pop_stale()
        for sa in due:
            self._deadline[sa] = None
            sa.handle_timer(now)
            self._timer_dirty[sa] = None
            self._touched[sa] = None

    def take_touched(self) -> list[IkeSa]:
        """The SAs touched since the last call (a closed SA is forgotten here when its events are
        drained: whoever persists snapshots drops it on those events)."""
        touched, self._touched = self._touched, {}
        return list(touched)

    def next_timer(self) -> float | None:
        self._refresh_timers()
        self._pop_stale()
        return self._timers[0][0] if self._timers else None

    def datagrams_to_send(self) -> list[OutgoingDatagram]:
        out = self.responder.datagrams_to_send() if self.responder else []
        pending, self._pending_out = self._pending_out, {}
        for sa in pending:
            out += sa.datagrams_to_send()
        return out

    def events(self) -> list[tuple[IkeSa, Event]]:
        """Drains events of all SAs, then forgets closed SAs."""
        out: list[tuple[IkeSa, Event]] = []
        pending, self._pending_events = self._pending_events, {}
        for sa in pending:
            while (ev := sa.next_event()) is not None:
                out.append((sa, ev))
            self._reap(sa)
        return out

    def _reap(self, sa: IkeSa) -> None:
        if sa.closed or sa.established:
            key = self._init_key.pop(sa, None)
            if key is not None and self._by_init.get(key) is sa:
                del self._by_init[key]
        if sa.closed:
            self._touched.pop(sa, None)  # the adapter learns of a closed SA from its events
            self._deadline.pop(sa, None)
            if self._by_spi.get(sa.local_spi) is sa:
                del self._by_spi[sa.local_spi]
