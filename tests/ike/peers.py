"""In-memory initiator/responder pair with a fake clock, used by the exchange tests."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from meshsec.agent.ike.address import Address
from meshsec.agent.ike.config import ChildConfig, IkeConfig
from meshsec.agent.ike.events import Event
from meshsec.agent.ike.random import DeterministicRandom
from meshsec.agent.ike.responder import Responder, ResponderSettings
from meshsec.agent.ike.sa import IkeSa, OutgoingDatagram
from meshsec.agent.ike.table import IkeSaTable
from meshsec.agent.ike.ts import Ts
from meshsec.common.secrets import Secret

I_ADDR = Address("198.18.0.1", 500)
R_ADDR = Address("198.18.0.2", 500)


def child(
    name: str = "net", local: str = "198.19.1.0/24", remote: str = "198.19.2.0/24", **kw: object
) -> ChildConfig:
    return ChildConfig(name, (Ts.from_cidr(local),), (Ts.from_cidr(remote),), **kw)  # type: ignore[arg-type]


def responder_config(**kw: object) -> IkeConfig:
    """The mirror image of the default initiator configuration."""
    kw.setdefault("children", (child(local="198.19.2.0/24", remote="198.19.1.0/24"),))
    kw.setdefault("local_id", "bob.example")
    kw.setdefault("remote_id", "alice.example")
    return ike_config(**kw)  # type: ignore[arg-type]


def ike_config(
    name: str = "conn",
    local_id: str = "alice.example",
    remote_id: str = "bob.example",
    psk: str | None = "s3cret-psk",
    children: tuple[ChildConfig, ...] | None = None,
    **kw: object,
) -> IkeConfig:
    if children is None:
        children = (child(),)
    secret = Secret(psk) if psk is not None else None
    return IkeConfig(name, local_id, remote_id, secret, children=children, **kw)  # type: ignore[arg-type]


# A datagram filter decides what the network does: return a list of datagrams to deliver.
Filter = Callable[[str, OutgoingDatagram], list[OutgoingDatagram]]


@dataclass
class Pair:
    init_cfg: IkeConfig
    resp_cfgs: list[IkeConfig]
    settings: ResponderSettings = field(default_factory=ResponderSettings)
    now: float = 1000.0
    nat_i: Address | None = None  # if set, the responder sees the initiator at this address
    filter: Filter | None = None

    def __post_init__(self) -> None:
        self.rnd_i = DeterministicRandom("initiator")
        self.rnd_r = DeterministicRandom("responder")
        self.initiator = IkeSa(self.init_cfg, I_ADDR, R_ADDR, initiator=True, rnd=self.rnd_i)
        self.responder_front = Responder(
            lambda local, remote: self.resp_cfgs, rnd=self.rnd_r, settings=self.settings
        )
        self.table = IkeSaTable(self.responder_front)
        self.events_i: list[Event] = []
        self.events_r: list[Event] = []
        self.wire: list[tuple[str, OutgoingDatagram]] = []

    @property
    def responder(self) -> IkeSa:
        sas = list(self.table)
        assert len(sas) == 1, sas
        return sas[0]

    def _deliver_to_responder(self, d: OutgoingDatagram) -> None:
        src = d.local
        if self.nat_i is not None:
            src = Address(self.nat_i.host, self.nat_i.port + (d.local.port - 500))
        self.table.receive(d.data, Address(R_ADDR.host, d.remote.port), src, self.now)

    def _deliver_to_initiator(self, d: OutgoingDatagram) -> None:
        local = Address(I_ADDR.host, d.remote.port - (self.nat_i.port - 500) if self.nat_i else d.remote.port)
        self.initiator.receive(d.data, local, d.local, self.now)

    def pump(self, rounds: int = 50) -> None:
        for _ in range(rounds):
            moved = False
            for d in self.initiator.datagrams_to_send():
                moved = True
                for x in self._filter("i->r", d):
                    if not x.keepalive:
                        self._deliver_to_responder(x)
            for d in self.table.datagrams_to_send():
                moved = True
                for x in self._filter("r->i", d):
                    self._deliver_to_initiator(x)
            self._drain()
            if not moved:
                return

    def _filter(self, direction: str, d: OutgoingDatagram) -> list[OutgoingDatagram]:
        self.wire.append((direction, d))
        return self.filter(direction, d) if self.filter else [d]

    def _drain(self) -> None:
        while (e := self.initiator.next_event()) is not None:
            self.events_i.append(e)
        self.events_r += [e for _, e in self.table.events()]

    def advance(self, seconds: float) -> None:
        """Moves the fake clock forward, firing every timer that falls due on the way."""
        end = self.now + seconds
        while True:
            deadlines = [d for d in (self.initiator.next_timer(), self.table.next_timer()) if d is not None]
            nxt = min(deadlines) if deadlines else None
            if nxt is None or nxt > end:
                break
            self.now = max(self.now, nxt)
            self.initiator.handle_timer(self.now)
            self.table.handle_timers(self.now)
            self.pump()
        self.now = end

    def connect(self) -> None:
        self.initiator.initiate(self.now)
        self.pump()


def of_type(events: list[Event], cls: type) -> list:  # type: ignore[type-arg]
    return [e for e in events if isinstance(e, cls)]
