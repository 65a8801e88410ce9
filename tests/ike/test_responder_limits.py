"""Half-open limits of the responder front door, per source address and in total (issue 18):
one address that answers COOKIEs must not take every half-open slot, and a spoofer must not
lock out the address it spoofs. Sans-IO with a fake clock: tables exchange datagrams directly."""

from __future__ import annotations

from meshsec.agent.ike.address import Address
from meshsec.agent.ike.constants import ExchangeType
from meshsec.agent.ike.parse import parse_header
from meshsec.agent.ike.random import DeterministicRandom
from meshsec.agent.ike.responder import Responder, ResponderSettings
from meshsec.agent.ike.sa import IkeSa, State
from meshsec.agent.ike.table import IkeSaTable

from .peers import ike_config, responder_config

RESPONDER = Address("198.18.7.1", 500)
ATTACKER = Address("198.18.7.2", 500)  # receives our COOKIEs and answers them
PEER = Address("198.18.7.3", 500)
NOW = 100.0


def _responder(settings: ResponderSettings) -> IkeSaTable:
    cfg = responder_config(remote_id="%any")
    return IkeSaTable(Responder(lambda local, remote: [cfg], rnd=DeterministicRandom("r"), settings=settings))


def _exchange(table: IkeSaTable, sa: IkeSa, now: float, rounds: int = 4) -> None:
    """Runs `sa` against `table`; with `sa` an attacker that never sends IKE_AUTH it stops
    after IKE_SA_INIT (its IKE_AUTH is dropped), leaving the responder's SA half-open."""
    for _ in range(rounds):
        out = sa.datagrams_to_send()
        sent = [d for d in out if parse_header(d.data).exchange == ExchangeType.IKE_SA_INIT]
        if not sent:
            return
        for d in sent:
            table.receive(d.data, d.remote, d.local, now)
        for d in table.datagrams_to_send():
            if d.remote == sa.local:
                sa.receive(d.data, d.remote, d.local, now)
        table.events()


def _half_open_attacker(table: IkeSaTable, addr: Address, seed: str) -> IkeSa:
    sa = IkeSa(ike_config(), addr, RESPONDER, initiator=True, rnd=DeterministicRandom(seed))
    sa.initiate(NOW)
    _exchange(table, sa, NOW)
    return sa


def _spoofed_init(table: IkeSaTable, addr: Address, seed: str) -> None:
    """An IKE_SA_INIT from an address that never sees our answers (a spoofed source)."""
    sa = IkeSa(ike_config(), addr, RESPONDER, initiator=True, rnd=DeterministicRandom(seed))
    sa.initiate(NOW)
    (d,) = sa.datagrams_to_send()
    table.receive(d.data, d.remote, d.local, NOW)
    table.datagrams_to_send()  # our answer goes to nobody


def _connect_peer(table: IkeSaTable) -> IkeSa:
    peer = IkeSa(ike_config(), PEER, RESPONDER, initiator=True, rnd=DeterministicRandom("peer"))
    peer.initiate(NOW)
    for _ in range(6):
        for d in peer.datagrams_to_send():
            table.receive(d.data, d.remote, d.local, NOW)
        for d in table.datagrams_to_send():
            if d.remote == PEER:
                peer.receive(d.data, d.remote, d.local, NOW)
        table.events()
    return peer


def test_one_cookie_answering_address_cannot_take_every_half_open_slot() -> None:
    settings = ResponderSettings(cookie_threshold=10, block_threshold=40)
    table = _responder(settings)
    assert table.responder is not None
    for n in range(30):  # a spoofed flood from many addresses
        _spoofed_init(table, Address(f"198.18.8.{n + 1}", 500), f"spoof{n}")
    attackers = [_half_open_attacker(table, ATTACKER, f"atk{n}") for n in range(60)]
    peer = _connect_peer(table)  # on its first try, no retransmission needed
    assert peer.established and peer.stats["retransmits"] == 0
    held = sum(1 for sa in attackers if sa.state is State.AUTHENTICATING)
    total, from_attacker = table.half_open_counts(ATTACKER.host)
    assert held == from_attacker == settings.block_threshold_per_address
    assert table.responder.stats["dropped_overload_address"] == 60 - held
    assert total == 10 + held  # spoofers got COOKIEs once 10 were half-open: no state for them


def test_the_global_limit_still_holds() -> None:
    settings = ResponderSettings(cookie_threshold=2, block_threshold=6, block_threshold_per_address=5)
    table = _responder(settings)
    assert table.responder is not None
    for n in range(3):
        for k in range(3):
            _half_open_attacker(table, Address(f"198.18.9.{n + 1}", 500), f"atk{n}-{k}")
    assert table.half_open() == 6 and table.responder.stats["dropped_overload"] == 3


def test_cookies_per_address_keep_a_spoofer_from_locking_out_the_address_it_spoofs() -> None:
    """Below the global COOKIE threshold a spoofer could open half-open SAs in a victim's name
    until the victim's address is blocked; from cookie_threshold_per_address on, that address
    must answer a COOKIE, which only the real owner receives."""
    table = _responder(ResponderSettings(cookie_threshold=10, cookie_threshold_per_address=3))
    assert table.responder is not None
    for n in range(8):
        _spoofed_init(table, PEER, f"spoof{n}")
    assert table.half_open_counts(PEER.host) == (3, 3)
    assert table.responder.stats["cookie_sent"] == 5
    peer = _connect_peer(table)
    assert peer.established and table.responder.stats["cookie_accepted"] == 1


def test_a_half_open_slot_frees_when_the_attacker_sa_times_out() -> None:
    table = _responder(ResponderSettings(block_threshold_per_address=2, cookie_threshold_per_address=10))
    for n in range(3):
        _half_open_attacker(table, ATTACKER, f"atk{n}")
    assert table.half_open_counts(ATTACKER.host)[1] == 2
    table.handle_timers(NOW + 31)
    table.events()
    assert table.half_open_counts(ATTACKER.host)[1] == 0
    assert _half_open_attacker(table, ATTACKER, "late").state is State.AUTHENTICATING
