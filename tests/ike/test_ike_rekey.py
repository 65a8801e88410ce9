"""IKE SA rekeying (RFC 7296 1.3.2, 2.8.2, 2.18, 2.25.2) between two in-process agents with a
fake clock: new SPIs and keys, CHILD_SAs moving to the new SA without losing a packet of the
data-plane model, simultaneous rekeys, a CHILD_SA rekey crossing an IKE rekey."""

from __future__ import annotations

import hashlib
import hmac

from meshsec.agent.ike.crypto import PRFS
from meshsec.agent.ike.events import ChildSaDeleted, ChildSaRekeyed, IkeSaDeleted, IkeSaFailed, IkeSaRekeyed
from meshsec.agent.ike.keys import rekey_skeyseed
from meshsec.agent.ike.sa import IkeSa

from .lifecycle import B, Net
from .test_child_rekey import configs


def connected(a_kw: dict[str, object] | None = None, b_kw: dict[str, object] | None = None,
              child_kw: dict[str, object] | None = None) -> Net:  # fmt: skip
    a_cfg, _ = configs(child_kw, child_kw, **(a_kw or {}))
    _, b_cfg = configs(child_kw, child_kw, **(b_kw or {}))
    net = Net([a_cfg], [b_cfg])
    net.a.connect(a_cfg, B, net.now)
    net.settle()
    net.assert_mirrored()
    net.traffic.clear()
    return net


def _assert_one_ike_sa(net: Net) -> tuple[IkeSa, IkeSa]:
    sa_a, sa_b = net.a.sa(), net.b.sa()
    assert (sa_a.spi_i, sa_a.spi_r) == (sa_b.spi_i, sa_b.spi_r)
    assert sa_a.initiator != sa_b.initiator
    assert sa_a.keys is not None and sa_b.keys is not None
    assert sa_a.keys.sk_d.reveal() == sa_b.keys.sk_d.reveal()
    assert len(net.a.table) == 1 and len(net.b.table) == 1  # replaced SAs are gone
    return sa_a, sa_b


def test_periodic_ike_rekey_moves_children_without_loss() -> None:
    net = connected({"rekey_time": 100, "rand_time": 0}, {"rekey_time": 10000})
    first = net.a.sa()
    children = set(first.children)
    spis = {(first.spi_i, first.spi_r)}
    sk_d = {first.keys.sk_d.reveal()}  # type: ignore[union-attr]
    for _ in range(3):
        net.advance(100)
        sa_a, _ = _assert_one_ike_sa(net)
        assert sa_a.initiator  # the rekey initiator is the new SA's initiator
        spis.add((sa_a.spi_i, sa_a.spi_r))
        sk_d.add(sa_a.keys.sk_d.reveal())  # type: ignore[union-attr]
        assert set(sa_a.children) == children  # the same CHILD_SAs, not re-created
        assert sa_a.next_request_id <= 1  # message IDs restarted on the new SA
    assert len(spis) == 4 and len(sk_d) == 4
    assert len(net.a.of_type(IkeSaRekeyed)) == 3 and len(net.b.of_type(IkeSaRekeyed)) == 3
    # The old SAs closed quietly: no CHILD_SA was deleted, nothing failed.
    assert len(net.a.of_type(IkeSaDeleted)) == 3 and len(net.b.of_type(IkeSaDeleted)) == 3
    assert not net.a.of_type(ChildSaDeleted) and not net.b.of_type(ChildSaDeleted)
    assert not net.a.of_type(IkeSaFailed) and not net.b.of_type(IkeSaFailed)
    net.assert_mirrored()
    net.assert_no_loss()


def test_responder_rekeys_and_becomes_initiator_of_new_sa() -> None:
    net = connected({"rekey_time": 10000}, {"rekey_time": 50, "rand_time": 0})
    net.advance(60)
    sa_a, sa_b = _assert_one_ike_sa(net)
    assert sa_b.initiator and not sa_a.initiator
    net.assert_mirrored()
    # CHILD_SA exchanges keep working on the new SA, in both directions.
    (ca,) = sa_a.children.values()
    sa_a.rekey_child(ca.spi_in, net.now)
    net.settle()
    (cb,) = net.b.sa().children.values()
    net.b.sa().rekey_child(cb.spi_in, net.now)
    net.settle()
    assert len(net.a.of_type(ChildSaRekeyed)) == 2
    net.assert_mirrored()
    net.assert_no_loss()
    # And a liveness check and the final delete run on the new SA too.
    net.a.sa().delete(net.now)
    net.settle()
    assert len(net.a.sas()) == 0 and len(net.b.sas()) == 0


def test_child_sa_rekey_after_ike_rekey_uses_new_sk_d() -> None:
    net = connected({"rekey_time": 30, "rand_time": 0}, {"rekey_time": 10000},
                    child_kw={"rekey_time": 45, "life_time": 60, "rand_time": 0})  # fmt: skip
    net.advance(50)  # IKE rekey at 30, CHILD_SA rekey at 45 under the new IKE SA
    assert len(net.a.of_type(IkeSaRekeyed)) == 1
    assert len(net.a.of_type(ChildSaRekeyed)) == 1
    net.assert_mirrored()
    net.assert_no_loss()


def test_simultaneous_ike_rekey_lowest_nonce_loses_both_outcomes() -> None:
    outcomes = set()
    for seed in range(8):
        net = connected()
        net.reseed(seed)
        children_a = set(net.a.sa().children)
        net.a.sa().rekey(net.now)
        net.b.sa().rekey(net.now)
        net.settle()
        sa_a, _ = _assert_one_ike_sa(net)
        stats = [sa.stats for sa in (*net.a.events_sas(), *net.b.events_sas())]
        won = sum(s["ike_rekey_collision_won"] for s in stats)
        lost = sum(s["ike_rekey_collision_lost"] for s in stats)
        assert (won, lost) == (1, 1), stats
        outcomes.add(sa_a.initiator)
        assert set(sa_a.children) == children_a
        net.assert_mirrored()
        net.assert_no_loss()
        net.advance(5)
        net.assert_no_loss()
    assert outcomes == {True, False}  # either side's exchange survived, depending on nonces


def test_child_rekey_crossing_ike_rekey_gets_temporary_failure_and_retries() -> None:
    net = connected()
    (cb,) = net.b.sa().children.values()
    net.a.sa().rekey(net.now)
    net.b.sa().rekey_child(cb.spi_in, net.now)
    net.settle()
    refused = sum(
        sa.stats["ike_rekey_temporary_failure"] for sa in net.a.events_sas() + net.b.events_sas()
    ) + sum(sa.stats["rekey_retry_scheduled"] for sa in net.a.events_sas() + net.b.events_sas())
    assert refused >= 1
    net.advance(120)  # back-off retries succeed
    _assert_one_ike_sa(net)
    assert len(net.b.of_type(IkeSaRekeyed)) >= 1
    assert len(net.b.of_type(ChildSaRekeyed)) >= 1
    net.assert_mirrored()
    net.assert_no_loss()


def test_rekey_skeyseed_formula() -> None:
    # SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr), RFC 7296 2.18, with HMAC-SHA256.
    prf = PRFS[5]()  # PRF_HMAC_SHA2_256
    sk_d, shared, ni, nr = b"d" * 32, b"g" * 32, b"i" * 32, b"r" * 32
    expect = hmac.new(sk_d, shared + ni + nr, hashlib.sha256).digest()
    assert rekey_skeyseed(prf, sk_d, ni, nr, shared) == expect
