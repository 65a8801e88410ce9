"""IKE SA rekeys with RFC 9370 additional key exchanges (CREATE_CHILD_SA + IKE_FOLLOWUP_KE,
2.2.4) between two in-process agents on a fake clock: the key schedule against an independent
computation, CHILD_SAs moving without loss, a lost follow-up, simultaneous rekeys, a CHILD_SA
rekey crossing the IKE rekey, an unknown link (STATE_NOT_FOUND) and an abandoned follow-up."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from meshsec.agent.ike.constants import DhId, ExchangeType, NotifyType
from meshsec.agent.ike.events import (
    ChildSaDeleted,
    ChildSaFailed,
    ChildSaRekeyed,
    IkeSaFailed,
    IkeSaRekeyed,
    RekeyFailed,
)
from meshsec.agent.ike.exchanges.ike_followup import FOLLOWUP_TIMEOUT, respond_ike_followup_ke
from meshsec.agent.ike.exchanges.ike_rekey import IkeRekeyFollowup
from meshsec.agent.ike.failures import FailureReason
from meshsec.agent.ike.parse import parse_header
from meshsec.agent.ike.payloads import Header, KePayload, Message, NotifyPayload

from .lifecycle import Net
from .test_ike_rekey import _assert_one_ike_sa, connected

HYBRID = {"proposals": "aes256gcm16-prfsha256-x25519-ke1_mlkem768"}
TWO = {"proposals": "aes256gcm16-prfsha384-ecp384-ke1_mlkem1024-ke2_mlkem768"}


def test_periodic_hybrid_ike_rekey_runs_followup_and_moves_children_without_loss() -> None:
    net = connected({**HYBRID, "rekey_time": 100, "rand_time": 0}, {**HYBRID, "rekey_time": 10000})
    children = set(net.a.sa().children)
    sk_d = {net.a.sa().keys.sk_d.reveal()}  # type: ignore[union-attr]
    for _ in range(3):
        net.advance(100)
        sa_a, _ = _assert_one_ike_sa(net)
        assert set(sa_a.children) == children
        sk_d.add(sa_a.keys.sk_d.reveal())  # type: ignore[union-attr]
    assert len(sk_d) == 4
    assert len(net.a.of_type(IkeSaRekeyed)) == 3 and len(net.b.of_type(IkeSaRekeyed)) == 3
    assert not net.a.of_type(ChildSaDeleted) and not net.a.of_type(IkeSaFailed)
    assert not net.a.of_type(RekeyFailed) and not net.b.of_type(RekeyFailed)
    # A CHILD_SA rekey under the newest SA: both derived the same SK_d.
    (cb,) = net.b.sa().children.values()
    net.b.sa().rekey_child(cb.spi_in, net.now)
    net.settle()
    assert len(net.a.of_type(ChildSaRekeyed)) == 1
    net.assert_mirrored()
    net.assert_no_loss()


def test_the_rekeyed_sk_d_is_rfc9370s_formula() -> None:
    # SKEYSEED = prf(SK_d, SK(0) | Ni | Nr | SK(1) | SK(2)) (RFC 9370 2.2.4), recomputed here from
    # the secrets both ends hold, with hmac/hashlib rather than the engine's prf.
    net = connected(TWO, TWO)
    old = net.a.sa()
    assert old.keys is not None
    old_sk_d = old.keys.sk_d.reveal()
    captured: list[tuple[bytes, bytes, list[bytes]]] = []
    from meshsec.agent.ike.exchanges import ike_rekey

    real = ike_rekey.rekey_skeyseed

    def spy(prf, sk_d, ni, nr, shared, additional=()):  # type: ignore[no-untyped-def]
        captured.append((ni, nr, [shared, *additional]))
        return real(prf, sk_d, ni, nr, shared, additional)

    ike_rekey.rekey_skeyseed = spy  # type: ignore[assignment]
    try:
        old.rekey(net.now)
        net.settle()
    finally:
        ike_rekey.rekey_skeyseed = real  # type: ignore[assignment]
    (ni, nr, secrets), (ni2, nr2, secrets2) = captured
    assert (ni, nr, secrets) == (ni2, nr2, secrets2) and len(secrets) == 3
    seed = hmac.new(old_sk_d, secrets[0] + ni + nr + secrets[1] + secrets[2], hashlib.sha384).digest()
    new = net.a.sa()
    assert new.keys is not None and new is not old
    km = b""
    t = b""
    n = 1
    while len(km) < 48:
        t = hmac.new(seed, t + ni + nr + new.spi_i + new.spi_r + bytes([n]), hashlib.sha384).digest()
        km += t
        n += 1
    assert new.keys.sk_d.reveal() == km[:48]


def _drop_first(net: Net, exchange: int, response: bool) -> list[bytes]:
    dropped: list[bytes] = []

    def lossy(direction: str, d: object) -> bool:
        data = d.data  # type: ignore[attr-defined]
        h = parse_header(data)
        if not dropped and h.exchange == exchange and h.is_response == response:
            dropped.append(data)
            return False
        return True

    net.filter = lossy  # type: ignore[assignment]
    return dropped


def test_a_lost_followup_request_or_answer_is_retransmitted() -> None:
    for response in (False, True):
        net = connected(HYBRID, HYBRID)
        dropped = _drop_first(net, ExchangeType.IKE_FOLLOWUP_KE, response)
        first = net.a.sa()
        first.rekey(net.now)
        net.settle()
        net.advance(10)
        assert dropped
        _assert_one_ike_sa(net)
        assert net.a.sa() is not first and first.stats["retransmits"] == 1
        net.assert_mirrored()
        net.assert_no_loss()


def test_simultaneous_hybrid_rekeys_leave_one_sa() -> None:
    outcomes = set()
    for seed in range(6):
        net = connected(HYBRID, HYBRID)
        net.a.rnd.__init__(f"a-{seed}")  # type: ignore[misc]
        net.b.rnd.__init__(f"b-{seed}")  # type: ignore[misc]
        net.a.sa().rekey(net.now)
        net.b.sa().rekey(net.now)
        net.settle()
        net.advance(60)
        sa_a, _ = _assert_one_ike_sa(net)
        stats = [sa.stats for sa in (*net.a.events_sas(), *net.b.events_sas())]
        won = sum(st["ike_rekey_collision_won"] for st in stats)
        lost = sum(st["ike_rekey_collision_lost"] for st in stats)
        refused = sum(st["ike_rekey_temporary_failure"] for st in stats)
        # Either the two exchanges crossed (one wins by nonce) or one was held off and retried.
        assert (won, lost) == (1, 1) or refused >= 1, stats
        outcomes.add((sa_a.initiator, refused >= 1))
        net.assert_mirrored()
        net.assert_no_loss()
    assert len(outcomes) >= 2, outcomes


def test_child_rekey_crossing_hybrid_ike_rekey() -> None:
    net = connected(HYBRID, HYBRID)
    (cb,) = net.b.sa().children.values()
    net.a.sa().rekey(net.now)
    net.b.sa().rekey_child(cb.spi_in, net.now)
    net.settle()
    net.advance(120)
    _assert_one_ike_sa(net)
    assert len(net.b.of_type(IkeSaRekeyed)) >= 1
    assert len(net.b.of_type(ChildSaRekeyed)) >= 1
    net.assert_mirrored()
    net.assert_no_loss()


@pytest.mark.parametrize("child_rekeyer", ["a", "b"])
def test_child_rekey_crossing_hybrid_ike_rekey_at_every_step(child_rekeyer: str) -> None:
    # A's hybrid IKE SA rekey (CREATE_CHILD_SA, IKE_FOLLOWUP_KE whose request is two fragments)
    # against a CHILD_SA rekey by either side, started 0..6 datagrams into it: at each step the
    # crossing ends with one IKE SA, one rekey of each kind, only TEMPORARY_FAILURE refusals
    # (retried), and the pair works under the successor (same SK_d both sides). B's request,
    # sent while it holds A's half-done rekey, is answered (TEMPORARY_FAILURE) only after the
    # follow-up moved the pair to the successor: the pair must not stay REKEYING there.
    paths, moved = set(), 0
    for stagger in range(7):
        net = connected(HYBRID, HYBRID)
        first = net.a.sa()
        first.rekey(net.now)
        for _ in range(stagger):
            net.deliver_one()
        rekeyer = net.a if child_rekeyer == "a" else net.b
        holder = next(sa for sa in rekeyer.sas() if sa.children)  # old or, late enough, new SA
        (c,) = holder.children.values()
        holder.rekey_child(c.spi_in, net.now)
        net.settle()
        net.advance(120)  # a refused side retries after its back-off
        moved += holder.stats["rekey_answered_after_ike_rekey"]
        sa_a, sa_b = _assert_one_ike_sa(net)
        assert sa_a is not first, stagger
        assert len(net.a.of_type(IkeSaRekeyed)) == 1 and len(net.b.of_type(IkeSaRekeyed)) == 1, stagger
        assert len(net.a.of_type(ChildSaRekeyed)) == 1 and len(net.b.of_type(ChildSaRekeyed)) == 1, stagger
        assert not net.a.of_type(IkeSaFailed) and not net.b.of_type(IkeSaFailed)
        codes = {e.code for e in (*net.a.of_type(RekeyFailed), *net.b.of_type(RekeyFailed))}
        codes |= {e.code for e in (*net.a.of_type(ChildSaFailed), *net.b.of_type(ChildSaFailed))}
        assert codes <= {FailureReason.TEMPORARY_FAILURE}, (stagger, codes)
        paths.add(bool(codes))
        net.assert_mirrored()
        net.assert_no_loss()
        (cb,) = sa_b.children.values()
        sa_b.rekey_child(cb.spi_in, net.now)
        net.settle()
        assert len(net.a.of_type(ChildSaRekeyed)) == 2
        net.assert_mirrored()
        net.assert_no_loss()
    # A queues its CHILD_SA rekey behind its own IKE rekey; B's crossed it head-on at some steps.
    assert paths == ({False} if child_rekeyer == "a" else {True, False}), paths
    assert (moved > 0) is (child_rekeyer == "b"), moved


def test_followup_with_an_unknown_link_gets_state_not_found() -> None:
    net = connected(HYBRID, HYBRID)
    sa_b = net.b.sa()
    header = Header(sa_b.spi_i, sa_b.spi_r, 0, ExchangeType.IKE_FOLLOWUP_KE, 0x08, 5, 0, 0x20)
    msg = Message(
        header,
        [
            KePayload(DhId.ML_KEM_768, b"\0" * 1184),
            NotifyPayload(NotifyType.ADDITIONAL_KEY_EXCHANGE, b"x" * 8),
        ],
    )
    (answer,) = respond_ike_followup_ke(sa_b, msg, net.now)
    assert isinstance(answer, NotifyPayload) and answer.notify_type == NotifyType.STATE_NOT_FOUND


def test_an_abandoned_followup_holds_rekeys_off_until_it_expires() -> None:
    net = connected(HYBRID, HYBRID)
    a, b = net.a.sa(), net.b.sa()
    # b answered a rekey of a's whose IKE_FOLLOWUP_KE never came (a restarted, say).
    assert b.chosen is not None
    b.followup = IkeRekeyFollowup(b"link0000", [b"k" * 32], list(b.chosen.addke), net.now + FOLLOWUP_TIMEOUT,
                                  b.chosen, b"n" * 32, b"m" * 32, b"s" * 8)  # fmt: skip
    a.rekey(net.now)
    net.settle()
    assert b.stats["followup_pending_temporary_failure"] == 1 and net.a.sa() is a
    net.advance(FOLLOWUP_TIMEOUT + 120)  # a's back-off retry after the state expired
    _assert_one_ike_sa(net)
    assert net.a.sa() is not a
    net.assert_no_loss()
