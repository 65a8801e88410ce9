"""CHILD_SA rekeying (RFC 7296 1.3.3, 2.8, 2.8.1, 2.25.1) between two in-process agents with a
fake clock, traffic flowing in the data-plane model the whole time."""

from __future__ import annotations

from meshsec.agent.ike.config import IkeConfig
from meshsec.agent.ike.constants import ExchangeType
from meshsec.agent.ike.events import (
    ChildSaDeleted,
    ChildSaEstablished,
    ChildSaRekeyed,
    IkeSaDeleted,
    IkeSaFailed,
    RekeyFailed,
)
from meshsec.agent.ike.parse import parse_header
from meshsec.agent.ike.sa import ChildState

from .lifecycle import B, Net
from .peers import child, ike_config


def configs(
    a_child: dict[str, object] | None = None, b_child: dict[str, object] | None = None, **kw: object
) -> tuple[IkeConfig, IkeConfig]:
    a = ike_config(children=(child(**(a_child or {})),), **kw)  # type: ignore[arg-type]
    b = ike_config(
        local_id="bob.example",
        remote_id="alice.example",
        children=(child(local="198.19.2.0/24", remote="198.19.1.0/24", **(b_child or {})),),
        **kw,  # type: ignore[arg-type]
    )
    return a, b


def connected(a_child: dict[str, object] | None = None, b_child: dict[str, object] | None = None,
              **kw: object) -> Net:  # fmt: skip
    a_cfg, b_cfg = configs(a_child, b_child, **kw)
    net = Net([a_cfg], [b_cfg])
    net.a.connect(a_cfg, B, net.now)
    net.settle()
    net.assert_mirrored()
    # The IKE_AUTH responder may send before the initiator has the response (as with any
    # IKE implementation); the rekey tests count from an established pair on.
    net.traffic.clear()
    return net


def test_soft_lifetime_rekeys_repeatedly_without_loss() -> None:
    # A rekeys first (no jitter, shorter lifetime); B's timers are far away.
    net = connected({"rekey_time": 30, "life_time": 40, "rand_time": 0},
                    {"rekey_time": 1000, "life_time": 1100})  # fmt: skip
    first = net.a.sa().children.copy()
    net.advance(100)
    rekeys = net.a.of_type(ChildSaRekeyed)
    assert len(rekeys) == 3, rekeys  # at 30, 60, 90 s
    assert len(net.b.of_type(ChildSaRekeyed)) == 3  # B switched outbound after each DELETE
    net.assert_mirrored()
    assert not set(first) & set(net.a.sa().children)
    net.assert_no_loss()
    # Each replaced pair was deleted on both sides; nobody failed.
    assert len(net.a.of_type(ChildSaDeleted)) == 3 and len(net.b.of_type(ChildSaDeleted)) == 3
    assert not net.a.of_type(IkeSaFailed) and not net.b.of_type(IkeSaFailed)
    # The new pairs reuse the old pairs' place: 'replaces' chains them.
    established = net.a.of_type(ChildSaEstablished)
    assert [e.replaces for e in established[1:]] == [e.spi_in for e in established[:-1]]


def test_responder_side_rekeys_and_pfs_runs_a_new_dh() -> None:
    net = connected({"rekey_time": 1000, "life_time": 1100},
                    {"rekey_time": 20, "life_time": 30, "rand_time": 0})  # fmt: skip
    keys_before = {c.keys_in for c in net.a.sa().children.values()}
    net.advance(65)
    assert len(net.b.of_type(ChildSaRekeyed)) == 3
    net.assert_mirrored()
    net.assert_no_loss()
    # The default child proposals carry x25519: every rekey ran a DH (RFC 7296 1.3.3).
    new = net.a.of_type(ChildSaEstablished)[1:]
    assert all(e.algorithms.dh is not None for e in new)
    assert not keys_before & {c.keys_in for c in net.a.sa().children.values()}
    # The held outbound SA: A (responder of the rekey) switched only after B's DELETE.
    assert all(not e.outbound_active for e in new)


def test_rekey_without_pfs_when_proposals_have_no_group() -> None:
    net = connected({"proposals": "aes128gcm16", "rekey_time": 10, "life_time": 20, "rand_time": 0},
                    {"proposals": "aes128gcm16"})  # fmt: skip
    net.advance(12)
    new = net.a.of_type(ChildSaEstablished)[-1]
    assert new.replaces is not None and new.algorithms.dh is None
    net.assert_mirrored()
    net.assert_no_loss()


def test_jitter_spreads_rekey_times() -> None:
    times = set()
    for seed in range(6):
        a_cfg, b_cfg = configs({"rekey_time": 100, "life_time": 150}, {"rekey_time": 1000, "life_time": 1100})
        net = Net([a_cfg], [b_cfg], flow=False)
        net.a.rnd.__init__(f"seed-{seed}")  # type: ignore[misc]
        net.a.connect(a_cfg, B, net.now)
        net.settle()
        (c,) = net.a.sa().children.values()
        assert c.rekey_at is not None
        assert net.now + 50 <= c.rekey_at <= net.now + 100
        times.add(round(c.rekey_at - net.now, 3))
    assert len(times) == 6


def _both_rekey_at_once(net: Net) -> None:
    (ca,) = net.a.sa().children.values()
    (cb,) = net.b.sa().children.values()
    net.a.sa().rekey_child(ca.spi_in, net.now)
    net.b.sa().rekey_child(cb.spi_in, net.now)
    net.settle()


def test_simultaneous_rekey_lowest_nonce_loses_both_outcomes() -> None:
    """Both ends rekey the same CHILD_SA at once; the requests cross. One redundant pair is
    deleted by the initiator of the exchange with the lowest nonce, the old pair by the
    winner; afterwards exactly one pair remains and no packet was lost (2.8.1)."""
    winners = set()
    for seed in range(8):
        net = connected(a_child={"rekey_time": 1000}, b_child={"rekey_time": 1000})
        net.reseed(seed)
        _both_rekey_at_once(net)
        sa_a, sa_b = net.a.sa(), net.b.sa()
        won = [side for side, sa in (("a", sa_a), ("b", sa_b)) if sa.stats["rekey_collision_won"]]
        lost = [side for side, sa in (("a", sa_a), ("b", sa_b)) if sa.stats["rekey_collision_lost"]]
        assert len(won) == 1 and len(lost) == 1 and won != lost, (sa_a.stats, sa_b.stats)
        winners.add(won[0])
        net.assert_mirrored()
        net.assert_no_loss()
        # Three pairs existed (old + two new); two are gone on both sides.
        assert len(net.a.of_type(ChildSaDeleted)) == 2 and len(net.b.of_type(ChildSaDeleted)) == 2
        # Traffic keeps flowing on the survivor afterwards.
        net.advance(5)
        net.assert_no_loss()
    assert winners == {"a", "b"}


def test_rekey_crossing_a_delete() -> None:
    """A rekeys the pair while B deletes it: B answers TEMPORARY_FAILURE (it is closing the
    pair), A answers B's DELETE; nothing remains and A does not retry (2.25.1)."""
    net = connected()
    (ca,) = net.a.sa().children.values()
    (cb,) = net.b.sa().children.values()
    net.a.sa().rekey_child(ca.spi_in, net.now)
    net.b.sa().delete_child(cb.spi_in, net.now)
    net.settle()
    assert net.a.sa().children == {} and net.b.sa().children == {}
    assert net.a.dp.installed_pairs() == 0 and net.b.dp.installed_pairs() == 0
    assert net.b.sa().stats["rekey_temporary_failure"] + net.b.sa().stats["rekey_child_not_found"] == 1
    net.advance(120)
    assert net.a.sa().children == {} and net.a.sa().stats["rekey_retry_scheduled"] == 0
    assert net.a.of_type(RekeyFailed) == []  # TEMPORARY_FAILURE is part of the crossing, not a failure


def test_rekey_of_a_pair_the_peer_lost_creates_a_fresh_one() -> None:
    net = connected()
    (cb,) = net.b.sa().children.values()
    del net.b.sa().children[cb.spi_in]  # B forgot it (e.g. removed by hand), without telling A
    (ca,) = net.a.sa().children.values()
    net.a.sa().rekey_child(ca.spi_in, net.now)
    net.settle()
    assert net.a.sa().stats["rekey_child_not_found"] == 1
    assert net.b.sa().stats["rekey_child_not_found"] == 1
    new_a = list(net.a.sa().children.values())
    assert len(new_a) == 1 and new_a[0].spi_in != ca.spi_in
    assert len(net.b.sa().children) == 1


def test_refused_rekey_retries_with_backoff_then_hard_lifetime_deletes() -> None:
    # B no longer accepts any proposal for the pair's rekey (A insists on PFS with ecp384).
    net = connected({"proposals": "aes128gcm16-ecp384", "rekey_time": 20, "life_time": 60, "rand_time": 0},
                    {"proposals": "aes128gcm16", "rekey_time": 1000, "life_time": 1100})  # fmt: skip
    net.advance(61)
    sa = net.a.sa()
    assert sa.stats["rekey_retry_scheduled"] >= 3
    # Every refusal is reported (the agent's rekey failure counter), none as an IKE SA failure.
    refusals = net.a.of_type(RekeyFailed)
    assert len(refusals) == sa.stats["rekey_retry_scheduled"]  # the hard lifetime ends it first
    assert {(r.sa, r.name, r.reason) for r in refusals} == {("child", "net", "NO_PROPOSAL_CHOSEN")}
    assert sa.children == {} and net.b.sa().children == {}
    assert net.b.sa().stats["rekey_temporary_failure"] == 0  # refused by proposal, not by state
    assert net.a.dp.installed_pairs() == 0 and net.b.dp.installed_pairs() == 0


def test_data_plane_expire_events_drive_rekey_and_delete() -> None:
    net = connected({"rekey_time": 1000, "life_time": 1100}, {"rekey_time": 1000, "life_time": 1100})
    (ca,) = net.a.sa().children.values()
    net.a.sa().child_expired(ca.spi_out, hard=False, now=net.now)  # e.g. rekey_bytes reached
    net.settle()
    assert len(net.a.of_type(ChildSaRekeyed)) == 1
    net.assert_mirrored()
    net.assert_no_loss()
    (new,) = net.a.sa().children.values()
    net.a.sa().child_expired(new.spi_in, hard=True, now=net.now)  # life_packets reached
    net.settle()
    assert net.a.sa().children == {} and net.b.sa().children == {}
    net.a.sa().child_expired(new.spi_in, hard=True, now=net.now)  # already gone: counted only
    assert net.a.sa().stats["expire_unknown_child"] == 1


def test_lost_messages_during_rekey_are_retransmitted() -> None:
    net = connected({"rekey_time": 30, "life_time": 100, "rand_time": 0}, {"rekey_time": 1000})
    dropped: list[int] = []

    def drop_first_of_each(direction: str, d: object) -> bool:
        header = parse_header(d.data)  # type: ignore[attr-defined]
        key = (direction, header.exchange, header.message_id)
        if header.exchange in (ExchangeType.CREATE_CHILD_SA, ExchangeType.INFORMATIONAL) and key not in seen:
            seen.add(key)
            dropped.append(header.exchange)
            return False
        return True

    seen: set[tuple[str, int, int]] = set()
    net.filter = drop_first_of_each
    net.advance(55)
    # Request and response of the CREATE_CHILD_SA and of the DELETE each lost once.
    assert dropped == [ExchangeType.CREATE_CHILD_SA] * 2 + [ExchangeType.INFORMATIONAL] * 2
    assert len(net.a.of_type(ChildSaRekeyed)) == 1
    net.assert_mirrored()
    net.assert_no_loss()


def test_rekey_state_machine_marks_old_pair() -> None:
    net = connected()
    (ca,) = net.a.sa().children.values()
    net.a.sa().rekey_child(ca.spi_in, net.now)
    # Request in flight: the old pair is REKEYING.
    assert ca.state is ChildState.REKEYING
    net.deliver_one()  # request reaches B; B answers and holds its new outbound SA
    (old_b,) = [c for c in net.b.sa().children.values() if c.spi_out == ca.spi_in]
    assert old_b.state is ChildState.REKEYED and old_b.replaced_by is not None
    assert net.b.sa().children[old_b.replaced_by].outbound_pending
    net.settle()
    net.assert_mirrored()
    net.assert_no_loss()
    assert not net.a.of_type(IkeSaDeleted)
