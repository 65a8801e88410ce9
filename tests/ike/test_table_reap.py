"""The table forgets closed IKE SAs entirely: neither refused IKE_SA_INITs (unauthenticated, as
many as anyone sends) nor SAs deleted after their life may stay referenced by it."""

from __future__ import annotations

import gc
import weakref

from meshsec.agent.ike.random import DeterministicRandom
from meshsec.agent.ike.sa import IkeSa

from .peers import I_ADDR, R_ADDR, Pair, ike_config, responder_config


def _drain(p: Pair, now: float) -> None:
    """What an adapter does after every input: send, dispatch events, re-arm its timer."""
    p.table.datagrams_to_send()
    p.table.events()
    p.table.next_timer()
    p.table.handle_timers(now)


def test_refused_ike_sa_inits_leave_nothing_behind() -> None:
    p = Pair(ike_config(), [responder_config()])
    refused: list[weakref.ref[IkeSa]] = []
    for n in range(50):
        # The responder accepts no MODP group: NO_PROPOSAL_CHOSEN, the SA closes at once.
        sa = IkeSa(ike_config(proposals="aes128-sha256-modp2048"), I_ADDR, R_ADDR, initiator=True,
                   rnd=DeterministicRandom(f"spoofed {n}"))  # fmt: skip
        sa.initiate(p.now)
        (d,) = sa.datagrams_to_send()
        made = p.table.receive(d.data, R_ADDR, I_ADDR, p.now)
        assert made is not None and made.closed
        refused.append(weakref.ref(made))
        del made
        _drain(p, p.now)
    gc.collect()
    assert len(p.table) == 0
    assert [r for r in refused if r() is not None] == []


def test_a_deleted_sa_is_released_once_its_timers_are_past() -> None:
    p = Pair(ike_config(), [responder_config()])
    p.connect()
    gone = weakref.ref(p.responder)
    p.initiator.delete(p.now)
    p.pump()
    assert p.initiator.closed and len(p.table) == 0
    p.advance(24 * 3600.0)  # any heap entries it had fall due and are discarded
    _drain(p, p.now)
    gc.collect()
    assert gone() is None
