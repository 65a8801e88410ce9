"""Two agents, each with one IkeSaTable (initiator and responder roles mixed), exchanging
datagrams: routing by SPI, half-open accounting with COOKIEs, reaping closed SAs."""

from __future__ import annotations

from meshsec.agent.ike.address import Address
from meshsec.agent.ike.config import IkeConfig
from meshsec.agent.ike.events import ChildSaEstablished, Event, IkeSaDeleted, IkeSaEstablished
from meshsec.agent.ike.random import DeterministicRandom
from meshsec.agent.ike.responder import Responder, ResponderSettings
from meshsec.agent.ike.sa import IkeSa
from meshsec.agent.ike.table import IkeSaTable

from .peers import child, ike_config

A = Address("198.18.1.1", 500)
B = Address("198.18.1.2", 500)


class Agent:
    def __init__(
        self, name: str, addr: Address, configs: list[IkeConfig], cookie_threshold: int = 10
    ) -> None:
        self.addr = addr
        self.rnd = DeterministicRandom(name)
        self.configs = configs
        self.table = IkeSaTable(
            Responder(
                lambda local, remote: self.configs,
                rnd=self.rnd,
                settings=ResponderSettings(cookie_threshold=cookie_threshold),
            )
        )
        self.events: list[tuple[IkeSa, Event]] = []

    def connect(self, cfg: IkeConfig, peer: Address, now: float) -> IkeSa:
        sa = IkeSa(cfg, self.addr, peer, initiator=True, rnd=self.rnd)
        self.table.add(sa)
        sa.initiate(now)
        return sa


def run(a: Agent, b: Agent, now: float, hold_from_a: bool = False) -> list[object]:
    """Delivers everything until quiet; with hold_from_a, A's datagrams are returned instead."""
    held: list[object] = []
    for _ in range(50):
        moved = False
        for src, dst in ((a, b), (b, a)):
            for d in src.table.datagrams_to_send():
                moved = True
                if hold_from_a and src is a:
                    held.append(d)
                    continue
                dst.table.receive(d.data, d.remote, d.local, now)
            src.events += src.table.events()
        if not moved:
            break
    return held


def configs_for(me: str, peers: list[str]) -> list[IkeConfig]:
    return [
        ike_config(
            name=f"{me}-{p}",
            local_id=f"{me}.example",
            remote_id=f"{p}.example",
            psk=f"psk-{min(me, p)}-{max(me, p)}",
            children=(child(name=f"{me}-{p}", local="198.19.0.0/16", remote="198.19.0.0/16"),),
        )
        for p in peers
    ]


def test_many_sas_between_two_tables_with_cookies() -> None:
    now = 50.0
    b = Agent("b", B, configs_for("b", ["a1", "a2", "a3", "a4"]), cookie_threshold=2)
    a = Agent("a", A, [])
    sas = [
        a.connect(cfg, B, now)
        for cfg in configs_for("a1", ["b"])
        + configs_for("a2", ["b"])
        + configs_for("a3", ["b"])
        + configs_for("a4", ["b"])
    ]
    # All four IKE_SA_INITs arrive before any IKE_AUTH: the last two meet the half-open limit.
    for d in a.table.datagrams_to_send():
        b.table.receive(d.data, d.remote, d.local, now)
    assert b.table.half_open() == 2
    assert b.table.responder is not None and b.table.responder.stats["cookie_sent"] == 2
    for d in b.table.datagrams_to_send():
        a.table.receive(d.data, d.remote, d.local, now)
    run(a, b, now)
    assert all(sa.established for sa in sas)
    by_b = [e for _, e in b.events if isinstance(e, IkeSaEstablished)]
    assert sorted(e.connection for e in by_b) == ["b-a1", "b-a2", "b-a3", "b-a4"]
    assert len([e for _, e in a.events if isinstance(e, ChildSaEstablished)]) == 4
    assert len(b.table) == 4 and b.table.half_open() == 0
    assert b.table.responder.stats["cookie_accepted"] == 2

    # B also initiates towards A through the same table (A answers for "b" using its own config).
    a.configs = configs_for("a1", ["b"])
    back = b.connect(configs_for("b", ["a1"])[0], A, now)
    run(a, b, now)
    assert back.established and len(a.table) == 5 and len(b.table) == 5

    for sa in sas:
        sa.delete(now)
    run(a, b, now)
    assert len([e for _, e in b.events if isinstance(e, IkeSaDeleted) and e.by_peer]) == 4
    assert len(a.table) == 1 and len(b.table) == 1


def test_timers_through_the_table() -> None:
    b = Agent("b", B, configs_for("b", ["a"]))
    a = Agent("a", A, [])
    sa = a.connect(configs_for("a", ["b"])[0], B, 0.0)
    held = run(a, b, 0.0, hold_from_a=True)
    assert held and a.table.next_timer() == 4.0
    a.table.handle_timers(4.0)
    run(a, b, 4.0)
    assert sa.established and sa.stats["retransmits"] == 1


def test_overload_drops_new_initiators() -> None:
    b = Agent("b", B, configs_for("b", ["a1", "a2"]))
    assert b.table.responder is not None
    b.table.responder.settings = ResponderSettings(cookie_threshold=10, block_threshold=1)
    a = Agent("a", A, [])
    first, second = (a.connect(cfg, B, 0.0) for cfg in configs_for("a1", ["b"]) + configs_for("a2", ["b"]))
    for d in a.table.datagrams_to_send():
        b.table.receive(d.data, d.remote, d.local, 0.0)
    assert b.table.responder.stats["dropped_overload"] == 1 and len(b.table) == 1
    run(a, b, 0.0)
    assert first.established and not second.established
    a.table.handle_timers(4.0)  # the half-open slot is free again: the retransmission gets in
    run(a, b, 4.0)
    assert second.established


def test_cookie_secret_rotation() -> None:
    from meshsec.agent.ike.responder import COOKIE_SECRET_LIFETIME, CookieJar

    jar = CookieJar(DeterministicRandom("jar"))
    jar.maybe_rotate(0.0)
    args = (b"n" * 32, bytes(4), b"s" * 8)
    cookie = jar.make(*args)
    assert jar.verify(cookie, *args) and not jar.verify(cookie, b"m" * 32, *args[1:])
    jar.maybe_rotate(COOKIE_SECRET_LIFETIME)
    assert jar.verify(cookie, *args)  # the previous secret is still honoured
    jar.maybe_rotate(2 * COOKIE_SECRET_LIFETIME)
    assert not jar.verify(cookie, *args)
    assert not jar.verify(cookie[:-1], *args)
