"""Two agents (one IkeSaTable each) on a fake network with a fake clock, plus a model of the
data plane fed only by the engine's events, for the lifecycle tests (rekey, collisions, DPD).

The model installs what the events say, the way the adapter does: an inbound SA per
ChildSaEstablished, outbound SAs per CHILD_SA name with the newest active one carrying
traffic (like the data planes' "newest SA of a reqid"), held outbound SAs activated by
ChildSaRekeyed, everything of a pair removed by ChildSaDeleted. Each tick every side sends one
"packet" per CHILD_SA on its current outbound SA; the receiver accepts it only if an inbound
SA with that SPI is installed and its keys match the sender's (else: lost or mis-keyed)."""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from meshsec.agent.ike.address import Address
from meshsec.agent.ike.config import IkeConfig
from meshsec.agent.ike.events import (
    ChildSaDeleted,
    ChildSaEstablished,
    ChildSaRekeyed,
    Event,
)
from meshsec.agent.ike.random import DeterministicRandom
from meshsec.agent.ike.responder import Responder
from meshsec.agent.ike.sa import IkeSa, OutgoingDatagram
from meshsec.agent.ike.table import IkeSaTable

A = Address("198.18.7.1", 500)
B = Address("198.18.7.2", 500)


@dataclass
class DataPlaneModel:
    inbound: dict[int, ChildSaEstablished] = field(default_factory=dict)
    outbound: dict[str, list[ChildSaEstablished]] = field(default_factory=dict)  # active, newest last
    held: dict[int, ChildSaEstablished] = field(default_factory=dict)
    counters: Counter[str] = field(default_factory=Counter)

    def apply(self, ev: Event) -> None:
        if isinstance(ev, ChildSaEstablished):
            assert ev.spi_in not in self.inbound, f"SPI {ev.spi_in:08x} installed twice"
            self.inbound[ev.spi_in] = ev
            if ev.outbound_active:
                self.outbound.setdefault(ev.name, []).append(ev)
            else:
                self.held[ev.spi_in] = ev
        elif isinstance(ev, ChildSaRekeyed):
            held = self.held.pop(ev.new_spi_in, None)
            if held is not None:
                self.outbound.setdefault(held.name, []).append(held)
        elif isinstance(ev, ChildSaDeleted):
            self.inbound.pop(ev.spi_in, None)
            self.held.pop(ev.spi_in, None)
            active = self.outbound.get(ev.name, [])
            self.outbound[ev.name] = [e for e in active if e.spi_in != ev.spi_in]

    def current(self, name: str) -> ChildSaEstablished | None:
        active = self.outbound.get(name)
        return active[-1] if active else None

    def installed_pairs(self) -> int:
        return len(self.inbound)


Filter = Callable[[str, OutgoingDatagram], bool]  # False drops the datagram


class Agent:
    def __init__(self, name: str, addr: Address, configs: list[IkeConfig]) -> None:
        self.name = name
        self.addr = addr
        self.rnd = DeterministicRandom(name)
        self.configs = configs
        self.table = IkeSaTable(Responder(lambda local, remote: self.configs, rnd=self.rnd))
        self.events: list[tuple[IkeSa, Event]] = []
        self.dp = DataPlaneModel()

    def connect(self, cfg: IkeConfig, peer: Address, now: float) -> IkeSa:
        sa = IkeSa(cfg, self.addr, peer, initiator=True, rnd=self.rnd)
        self.table.add(sa)
        sa.initiate(now)
        return sa

    def sas(self) -> list[IkeSa]:
        return [sa for sa in self.table if not sa.closed]

    def events_sas(self) -> list[IkeSa]:
        """Every IKE SA that ever produced an event here (closed ones included)."""
        return list(dict.fromkeys(sa for sa, _ in self.events))

    def sa(self) -> IkeSa:
        live = self.sas()
        assert len(live) == 1, live
        return live[0]

    def of_type(self, cls: type) -> list:  # type: ignore[type-arg]
        return [e for _, e in self.events if isinstance(e, cls)]


class Net:
    """Datagrams are delivered one at a time in FIFO order, with the packet flow running
    between deliveries, so every intermediate state of an exchange carries traffic."""

    def __init__(self, a_configs: list[IkeConfig], b_configs: list[IkeConfig], *, flow: bool = True) -> None:
        self.a = Agent("agent-a", A, a_configs)
        self.b = Agent("agent-b", B, b_configs)
        self.now = 1000.0
        self.flow_enabled = flow
        self.filter: Filter | None = None
        self.queue: deque[tuple[str, OutgoingDatagram]] = deque()
        self.traffic: Counter[str] = Counter()

    def peer(self, agent: Agent) -> Agent:
        return self.b if agent is self.a else self.a

    def reseed(self, seed: int) -> None:
        """Fresh random streams for both agents (nonces, SPIs): collision tests try several, so
        that both outcomes of a nonce comparison occur."""
        self.a.rnd.__init__(f"a-{seed}")  # type: ignore[misc]
        self.b.rnd.__init__(f"b-{seed}")  # type: ignore[misc]

    def _collect(self) -> None:
        for agent, direction in ((self.a, "a->b"), (self.b, "b->a")):
            for d in agent.table.datagrams_to_send():
                if self.filter is None or self.filter(direction, d):
                    self.queue.append((direction, d))
            self._drain(agent)

    def _drain(self, agent: Agent) -> None:
        for sa, ev in agent.table.events():
            agent.events.append((sa, ev))
            agent.dp.apply(ev)

    def settle(self, limit: int = 500) -> None:
        for _ in range(limit):
            self._collect()
            if not self.queue:
                return
            direction, d = self.queue.popleft()
            dst = self.b if direction == "a->b" else self.a
            if not d.keepalive:
                dst.table.receive(d.data, d.remote, d.local, self.now)
            self._drain(dst)
            self.packets()
        raise AssertionError("network did not settle")

    def deliver_one(self) -> bool:
        """Delivers the oldest queued datagram only (for interleaving tests)."""
        self._collect()
        if not self.queue:
            return False
        direction, d = self.queue.popleft()
        dst = self.b if direction == "a->b" else self.a
        dst.table.receive(d.data, d.remote, d.local, self.now)
        self._drain(dst)
        self.packets()
        return True

    def packets(self) -> None:
        if not self.flow_enabled:
            return
        for src in (self.a, self.b):
            dst = self.peer(src)
            for name in list(src.dp.outbound):
                ev = src.dp.current(name)
                if ev is None:
                    continue
                self.traffic["sent"] += 1
                got = dst.dp.inbound.get(ev.spi_out)
                if got is None:
                    self.traffic["lost"] += 1
                elif got.keys_in != ev.keys_out:
                    self.traffic["miskeyed"] += 1
                else:
                    self.traffic["received"] += 1

    def advance(self, seconds: float, tick: float = 0.25) -> None:
        end = self.now + seconds
        while self.now < end:
            self.now = min(end, self.now + tick)
            self.a.table.handle_timers(self.now)
            self.b.table.handle_timers(self.now)
            self.settle()
            self.packets()

    def assert_no_loss(self) -> None:
        assert self.traffic["lost"] == 0 and self.traffic["miskeyed"] == 0, self.traffic
        assert self.traffic["received"] > 0, self.traffic

    def assert_mirrored(self, pairs: int = 1) -> None:
        """Both sides run the same `pairs` CHILD_SAs: A's inbound SPIs are B's outbound."""
        a_children, b_children = self.a.sa().children, self.b.sa().children
        assert len(a_children) == pairs and len(b_children) == pairs, (a_children, b_children)
        assert {c.spi_out for c in a_children.values()} == set(b_children)
        assert {c.spi_out for c in b_children.values()} == set(a_children)
        assert self.a.dp.installed_pairs() == pairs and self.b.dp.installed_pairs() == pairs
