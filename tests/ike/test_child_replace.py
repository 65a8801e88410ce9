"""CHILD_SA replacement (IkeSa.replace_child): a pair negotiated with a changed configuration
takes over from the old one make-before-break, with a rekey's succession, between two
in-process agents with a fake clock and traffic flowing the whole time."""

from __future__ import annotations

import dataclasses

from meshsec.agent.ike.child import ChildSa
from meshsec.agent.ike.events import ChildSaDeleted, ChildSaEstablished, ChildSaFailed, ChildSaRekeyed
from meshsec.agent.ike.failures import FailureReason
from meshsec.agent.ike.sa import ChildState
from meshsec.agent.ike.ts import Ts

from .lifecycle import Net
from .test_child_rekey import connected

NARROWER = (Ts.from_cidr("198.19.1.0/25"),)


def _replace_on_a(net: Net, local_ts: tuple[Ts, ...] = NARROWER) -> ChildSa:
    sa = net.a.sa()
    (old,) = sa.children.values()
    assert old.config is not None
    config = dataclasses.replace(old.config, local_ts=local_ts)
    sa.replace_child(old.spi_in, config, net.now)
    return old


def test_replacement_takes_over_make_before_break() -> None:
    net = connected()
    old = _replace_on_a(net)
    b_old = next(iter(net.b.sa().children))
    net.settle()
    net.packets()
    net.assert_mirrored()
    net.assert_no_loss()
    (a_new,) = net.a.sa().children.values()
    assert a_new.ts_local == NARROWER and a_new.state is ChildState.INSTALLED
    # Both ends install the new pair in the old one's place (same reqid) ...
    (ea,) = net.a.of_type(ChildSaEstablished)[1:]
    (eb,) = net.b.of_type(ChildSaEstablished)[1:]
    assert ea.replaces == old.spi_in and ea.outbound_active
    assert eb.replaces == b_old and not eb.outbound_active  # held until A deleted the old pair
    # ... then outbound moves and the old pair goes, on both sides.
    assert [e.old_spi_in for e in net.a.of_type(ChildSaRekeyed)] == [old.spi_in]
    assert [e.old_spi_in for e in net.b.of_type(ChildSaRekeyed)] == [b_old]
    assert [e.spi_in for e in net.a.of_type(ChildSaDeleted)] == [old.spi_in]
    assert [e.spi_in for e in net.b.of_type(ChildSaDeleted)] == [b_old]
    assert net.b.sa().stats["replaced_by_peer"] == 1


def test_refused_replacement_keeps_the_old_pair() -> None:
    net = connected()
    old = _replace_on_a(net, local_ts=(Ts.from_cidr("198.19.9.0/24"),))  # outside B's selectors
    net.settle()
    net.packets()
    (failed,) = net.a.of_type(ChildSaFailed)
    assert failed.code is FailureReason.TS_UNACCEPTABLE
    assert list(net.a.sa().children) == [old.spi_in] and old.state is ChildState.INSTALLED
    assert not net.a.of_type(ChildSaDeleted) and not net.b.of_type(ChildSaDeleted)
    net.assert_mirrored()
    net.assert_no_loss()
    # It can be rekeyed and replaced again afterwards.
    net.a.sa().rekey_child(old.spi_in, net.now)
    net.settle()
    net.assert_mirrored()


def test_both_ends_replace_at_once_one_pair_survives() -> None:
    """The requests cross: a collision of RFC 7296 2.8.1 decided by the lowest nonce; both
    outcomes happen over the seeds and each time exactly one pair remains, without loss."""
    winners = set()
    for seed in range(8):
        net = connected()
        net.reseed(seed)
        _replace_on_a(net)
        (b_old,) = net.b.sa().children.values()
        assert b_old.config is not None
        net.b.sa().replace_child(b_old.spi_in, dataclasses.replace(b_old.config, remote_ts=NARROWER), net.now)
        net.settle()
        net.packets()
        net.assert_mirrored()
        net.assert_no_loss()
        sa_a, sa_b = net.a.sa(), net.b.sa()
        won = [s for s, sa in (("a", sa_a), ("b", sa_b)) if sa.stats["rekey_collision_won"]]
        lost = [s for s, sa in (("a", sa_a), ("b", sa_b)) if sa.stats["rekey_collision_lost"]]
        assert len(won) == 1 and len(lost) == 1 and won != lost, (sa_a.stats, sa_b.stats)
        winners.add(won[0])
        assert len(net.a.of_type(ChildSaDeleted)) == 2 and len(net.b.of_type(ChildSaDeleted)) == 2
        net.advance(5)
        net.assert_no_loss()
    assert winners == {"a", "b"}


def test_replacement_crossing_the_peers_rekey() -> None:
    """A replaces the pair while B rekeys it. However the nonces fall, one pair remains on both
    ends: if A wins it deletes B's rekeyed pair itself (B could not tell the two collided)."""
    outcomes = set()
    for seed in range(8):
        net = connected(a_child={"rekey_time": 1000}, b_child={"rekey_time": 1000})
        net.reseed(seed)
        _replace_on_a(net)
        (b_old,) = net.b.sa().children.values()
        net.b.sa().rekey_child(b_old.spi_in, net.now)
        net.settle()
        net.packets()
        net.assert_mirrored()
        net.assert_no_loss()
        (a_child,) = net.a.sa().children.values()
        outcomes.add(a_child.ts_local == NARROWER)
        net.advance(5)
        net.assert_no_loss()
    assert outcomes == {True, False}


def test_replace_of_a_pair_being_deleted_is_refused() -> None:
    net = connected()
    sa = net.a.sa()
    (old,) = sa.children.values()
    sa.delete_child(old.spi_in, net.now)
    assert old.config is not None
    sa.replace_child(old.spi_in, old.config, net.now)
    net.settle()
    assert sa.stats["replace_not_possible"] == 1 and not sa.children
