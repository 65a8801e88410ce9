"""CHILD_SAs with RFC 9370 additional key exchanges in CREATE_CHILD_SA + IKE_FOLLOWUP_KE (2.2.4)
between two in-process agents on a fake clock, traffic flowing in the data-plane model the whole
time: KEYMAT against an independent computation, periodic rekeys, a new CHILD_SA, simultaneous
rekeys, a CHILD_SA rekey crossing a (hybrid) IKE SA rekey, a lost follow-up request or answer,
a follow-up refused with STATE_NOT_FOUND and one the initiator abandons."""

from __future__ import annotations

import hashlib
import hmac
from collections import Counter

import pytest

from meshsec.agent.ike.config import ChildConfig
from meshsec.agent.ike.constants import DhId, ExchangeType, NotifyType, TransformType
from meshsec.agent.ike.events import (
    ChildSaDeleted,
    ChildSaEstablished,
    ChildSaFailed,
    ChildSaRekeyed,
    IkeSaFailed,
    IkeSaRekeyed,
    RekeyFailed,
)
from meshsec.agent.ike.exchanges import child_sa
from meshsec.agent.ike.exchanges.child_sa import ChildFollowup
from meshsec.agent.ike.exchanges.ike_followup import FOLLOWUP_TIMEOUT
from meshsec.agent.ike.failures import FailureReason
from meshsec.agent.ike.parse import parse_header
from meshsec.agent.ike.states import ChildState

from .lifecycle import B, Net
from .peers import child, ike_config
from .test_child_rekey import connected
from .test_ike_rekey import _assert_one_ike_sa

HYBRID_IKE = "aes256gcm16-prfsha256-x25519-ke1_mlkem768"
HYBRID_ESP = "aes256gcm16-x25519-ke1_mlkem768"
TWO_ESP = "aes256gcm16-ecp384-ke1_mlkem1024-ke2_mlkem768"


def _hybrid(a: dict[str, object] | None = None, b: dict[str, object] | None = None, *,
            esp: str = HYBRID_ESP, ike: str = HYBRID_IKE) -> Net:  # fmt: skip
    """Both ends run hybrid CHILD PFS; their own CHILD_SA timers are far away unless `a` / `b`
    say otherwise."""
    far = {"proposals": esp, "rekey_time": 1000, "life_time": 1100}
    return connected({**far, **(a or {})}, {**far, **(b or {})}, proposals=ike)


def _followups(net: Net) -> list[tuple[str, bool]]:
    """(direction, is_response) of every IKE_FOLLOWUP_KE message from now on (a fragmented one
    once)."""
    seen: list[tuple[str, bool]] = []
    messages: set[tuple[str, bool, int]] = set()

    def watch(direction: str, d: object) -> bool:
        h = parse_header(d.data)  # type: ignore[attr-defined]
        key = (direction, h.is_response, h.message_id)
        if h.exchange == ExchangeType.IKE_FOLLOWUP_KE and key not in messages:
            messages.add(key)
            seen.append((direction, h.is_response))
        return True

    net.filter = watch  # type: ignore[assignment]
    return seen


def test_child_rekeys_run_the_additional_key_exchange_and_lose_nothing() -> None:
    net = _hybrid({"rekey_time": 30, "life_time": 40, "rand_time": 0})
    seen = _followups(net)
    first = set(net.a.sa().children)
    fragmented, received = net.a.sa().stats["messages_fragmented"], net.b.sa().stats["fragments_received"]
    net.advance(100)  # three rekeys of A's
    rekeyed = net.a.of_type(ChildSaRekeyed)
    assert len(rekeyed) == 3 and rekeyed[0].old_spi_in in first
    assert seen == [("a->b", False), ("b->a", True)] * 3
    # Each follow-up request carries the 1184-byte ML-KEM-768 key: sent as RFC 7383 fragments.
    assert net.a.sa().stats["messages_fragmented"] - fragmented == 3
    assert net.b.sa().stats["fragments_received"] - received == 6
    (ca,) = net.a.sa().children.values()
    assert ca.chosen.addke == ((TransformType.ADDKE1, DhId.ML_KEM_768),)
    (est,) = [e for e in net.b.of_type(ChildSaEstablished) if e.spi_in == ca.spi_out]
    assert est.algorithms.dh == DhId.CURVE25519 and est.algorithms.additional_ke == (DhId.ML_KEM_768,)
    assert not net.a.of_type(RekeyFailed) and not net.b.of_type(RekeyFailed)
    assert not net.a.sa().followup and not net.b.sa().followup
    net.assert_mirrored()
    net.assert_no_loss()


def test_keymat_is_rfc9370s_formula_with_two_additional_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    # KEYMAT = prf+(SK_d, SK(0) | Ni | Nr | SK(1) | SK(2)) (RFC 9370 2.2.4), recomputed here with
    # hmac/hashlib from the secrets both ends derived, rather than with the engine's prf+.
    net = _hybrid(esp=TWO_ESP)
    sa_a = net.a.sa()
    assert sa_a.keys is not None
    sk_d = sa_a.keys.sk_d.reveal()
    captured: list[tuple[bytes, bytes, bytes, tuple[bytes, ...]]] = []
    real = child_sa.derive_child_keys

    def spy(prf, sk_d, ni, nr, size, integ, shared=b"", additional=()):  # type: ignore[no-untyped-def]
        captured.append((ni, nr, shared, additional))
        return real(prf, sk_d, ni, nr, size, integ, shared, additional)

    monkeypatch.setattr(child_sa, "derive_child_keys", spy)
    (ca,) = sa_a.children.values()
    sa_a.rekey_child(ca.spi_in, net.now)
    net.settle()
    (ni, nr, shared, additional), again = captured
    assert again == (ni, nr, shared, additional) and len(additional) == 2 and len(shared) == 48  # ECP-384
    assert len(additional[0]) == len(additional[1]) == 32  # ML-KEM shared secrets
    seed = shared + ni + nr + additional[0] + additional[1]
    km, t, n = b"", b"", 1
    while len(km) < 2 * 36:  # AES-256-GCM: 32-byte key and 4-byte salt per direction
        t = hmac.new(sk_d, t + seed + bytes([n]), hashlib.sha256).digest()
        km += t
        n += 1
    (new,) = net.a.sa().children.values()
    assert new.keys_out.encr.reveal() == km[:36] and new.keys_in.encr.reveal() == km[36:72]
    net.assert_mirrored()
    net.assert_no_loss()


def test_a_second_child_sa_with_hybrid_pfs_exists_only_after_its_followup() -> None:
    # The first CHILD_SA comes with IKE_AUTH (no key exchange of its own); the second is a
    # CREATE_CHILD_SA with PFS, so it runs the additional key exchange before it exists.
    def children(side: str) -> tuple[ChildConfig, ...]:
        a_side = {"net": ("198.19.1.0/24", "198.19.2.0/24"), "second": ("198.19.11.0/24", "198.19.12.0/24")}
        return tuple(
            child(name, *(nets if side == "a" else nets[::-1]), proposals=HYBRID_ESP)
            for name, nets in a_side.items()
        )

    a_cfg = ike_config(children=children("a"), proposals=HYBRID_IKE)
    b_cfg = ike_config(local_id="bob.example", remote_id="alice.example", children=children("b"),
                       proposals=HYBRID_IKE)  # fmt: skip
    net = Net([a_cfg], [b_cfg])
    seen = _followups(net)
    net.a.connect(a_cfg, B, net.now)
    while not seen:
        assert net.deliver_one()
    # B answered the CREATE_CHILD_SA of "second" and holds it until the follow-up.
    assert isinstance(net.b.sa().followup, ChildFollowup)
    assert [e.name for e in net.b.of_type(ChildSaEstablished)] == ["net"]
    net.settle()
    assert seen == [("a->b", False), ("b->a", True)]
    assert [e.name for e in net.a.of_type(ChildSaEstablished)] == ["net", "second"]
    assert [e.name for e in net.b.of_type(ChildSaEstablished)] == ["net", "second"]
    net.traffic.clear()
    net.advance(2)
    net.assert_mirrored(pairs=2)
    net.assert_no_loss()


def test_simultaneous_hybrid_child_rekeys_leave_one_pair_either_way() -> None:
    winners = set()
    for seed in range(8):
        net = _hybrid()
        net.reseed(seed)
        (ca,) = net.a.sa().children.values()
        (cb,) = net.b.sa().children.values()
        net.a.sa().rekey_child(ca.spi_in, net.now)
        net.b.sa().rekey_child(cb.spi_in, net.now)
        net.settle()
        net.advance(5)
        sa_a, sa_b = net.a.sa(), net.b.sa()
        won = [side for side, sa in (("a", sa_a), ("b", sa_b)) if sa.stats["rekey_collision_won"]]
        lost = [side for side, sa in (("a", sa_a), ("b", sa_b)) if sa.stats["rekey_collision_lost"]]
        assert len(won) == 1 and len(lost) == 1 and won != lost, (sa_a.stats, sa_b.stats)
        winners.add(won[0])
        assert len(net.a.of_type(ChildSaDeleted)) == 2 and len(net.b.of_type(ChildSaDeleted)) == 2
        net.assert_mirrored()
        net.assert_no_loss()
    assert winners == {"a", "b"}


def test_hybrid_child_rekey_crossing_a_hybrid_ike_rekey() -> None:
    # Both orders of the crossing: A's CHILD_SA rekey (CREATE_CHILD_SA + IKE_FOLLOWUP_KE) against
    # B's IKE SA rekey (CREATE_CHILD_SA + IKE_FOLLOWUP_KE), started together or one message apart.
    paths = set()
    for stagger in (0, 1, 2, 3, 4):
        net = _hybrid()
        first = net.a.sa()
        (ca,) = first.children.values()
        first.rekey_child(ca.spi_in, net.now)
        for _ in range(stagger):
            net.deliver_one()
        net.b.sa().rekey(net.now)
        net.settle()
        net.advance(120)  # a refused side retries after its back-off
        sa_a, _ = _assert_one_ike_sa(net)
        assert sa_a is not first and len(net.a.of_type(IkeSaRekeyed)) == 1
        assert len(net.a.of_type(ChildSaRekeyed)) == 1, stagger
        assert not net.a.of_type(IkeSaFailed) and not net.b.of_type(IkeSaFailed)
        # A refused crossing exchange is retried, not a failure (TEMPORARY_FAILURE, RFC 7296 2.25).
        failed = [e.code for e in (*net.a.of_type(ChildSaFailed), *net.b.of_type(ChildSaFailed))]
        assert set(failed) <= {FailureReason.TEMPORARY_FAILURE}
        assert not net.a.of_type(RekeyFailed) and not net.b.of_type(RekeyFailed)
        stats = Counter[str]()
        for sa in (*net.a.events_sas(), *net.b.events_sas()):
            stats.update(sa.stats)
        paths.add(tuple(k for k in sorted(stats) if k.endswith("temporary_failure")))
        net.assert_mirrored()
        net.assert_no_loss()
        # The CHILD_SA rekeys again under the new IKE SA: both derived the same SK_d.
        (ca,) = sa_a.children.values()
        sa_a.rekey_child(ca.spi_in, net.now)
        net.settle()
        assert len(net.a.of_type(ChildSaRekeyed)) == 2
        net.assert_mirrored()
        net.assert_no_loss()
    # Crossed head-on, B's IKE rekey met A's CHILD_SA exchanges (TEMPORARY_FAILURE, retried);
    # started late enough, it ran after them.
    assert paths == {("ike_rekey_temporary_failure",), ()}, paths


def _drop_first_followup(net: Net, response: bool) -> list[bytes]:
    dropped: list[bytes] = []

    def lossy(direction: str, d: object) -> bool:
        h = parse_header(d.data)  # type: ignore[attr-defined]
        if not dropped and h.exchange == ExchangeType.IKE_FOLLOWUP_KE and h.is_response == response:
            dropped.append(d.data)  # type: ignore[attr-defined]
            return False
        return True

    net.filter = lossy  # type: ignore[assignment]
    return dropped


@pytest.mark.parametrize("response", [False, True], ids=["request-lost", "answer-lost"])
def test_a_lost_followup_request_or_answer_is_retransmitted(response: bool) -> None:
    net = _hybrid()
    dropped = _drop_first_followup(net, response)
    sa_a = net.a.sa()
    (ca,) = sa_a.children.values()
    sa_a.rekey_child(ca.spi_in, net.now)
    net.settle()
    net.advance(10)
    assert dropped and sa_a.stats["retransmits"] == 1
    # A retransmitted request is answered from the cache: B made the pair once.
    assert len(net.b.of_type(ChildSaEstablished)) == 2 and len(net.a.of_type(ChildSaRekeyed)) == 1
    net.assert_mirrored()
    net.assert_no_loss()


def test_followup_refused_with_state_not_found_retries_the_rekey() -> None:
    net = _hybrid()
    sa_a, sa_b = net.a.sa(), net.b.sa()
    (ca,) = sa_a.children.values()
    (cb,) = sa_b.children.values()
    sa_a.rekey_child(ca.spi_in, net.now)
    net.deliver_one()  # B answers the CREATE_CHILD_SA and keeps the state ...
    assert isinstance(sa_b.followup, ChildFollowup) and cb.state is ChildState.REKEYED
    net.now += FOLLOWUP_TIMEOUT  # ... which has expired by the time the follow-up arrives
    net.settle()
    assert sa_b.stats["followup_state_not_found"] == 1 and sa_b.followup is None
    assert cb.state is ChildState.INSTALLED and cb.replaced_by is None  # the old pair goes on
    (failed,) = net.a.of_type(RekeyFailed)
    assert failed.code.notify_type == NotifyType.STATE_NOT_FOUND
    assert ca.state is ChildState.INSTALLED and sa_a.stats["rekey_retry_scheduled"] == 1
    net.advance(60)  # the back-off retry succeeds
    assert len(net.a.of_type(ChildSaRekeyed)) == 1
    net.assert_mirrored()
    net.assert_no_loss()


def test_a_followup_that_never_comes_is_dropped_on_the_timer_and_the_old_pair_goes_on() -> None:
    net = _hybrid()
    sa_a, sa_b = net.a.sa(), net.b.sa()
    (cb,) = sa_b.children.values()

    def no_followup(direction: str, d: object) -> bool:
        return parse_header(d.data).exchange != ExchangeType.IKE_FOLLOWUP_KE  # type: ignore[attr-defined]

    net.filter = no_followup  # type: ignore[assignment]
    (ca,) = sa_a.children.values()
    sa_a.rekey_child(ca.spi_in, net.now)
    net.settle()
    assert isinstance(sa_b.followup, ChildFollowup) and cb.state is ChildState.REKEYED
    net.advance(FOLLOWUP_TIMEOUT - 1)
    assert sa_b.followup is not None
    net.advance(2)  # B's timer drops the state (RFC 9370 2.2.4: 5-20 s)
    assert sa_b.stats["followup_abandoned"] == 1 and sa_b.followup is None
    assert cb.state is ChildState.INSTALLED and cb.replaced_by is None
    assert [e.spi_in for e in net.b.of_type(ChildSaEstablished)] == [cb.spi_in]  # nothing half-made
    net.assert_no_loss()  # the old pair carried the traffic throughout


def test_our_ike_rekey_waits_while_the_peers_child_followup_is_due() -> None:
    # B holds A's half-done CHILD_SA rekey when B's IKE SA rekey comes due: B does not start it
    # (the pair would be made on an SA whose CHILD_SAs moved away) but retries after a back-off.
    net = _hybrid()
    sa_a, sa_b = net.a.sa(), net.b.sa()
    (ca,) = sa_a.children.values()
    sa_a.rekey_child(ca.spi_in, net.now)
    net.deliver_one()  # B answers A's CREATE_CHILD_SA and waits for the follow-up
    assert isinstance(sa_b.followup, ChildFollowup)
    sa_b.rekey(net.now)
    assert sa_b.stats["ike_rekey_deferred_for_followup"] == 1 and not sa_b.rekeying_ike()
    net.settle()
    assert len(net.a.of_type(ChildSaRekeyed)) == 1
    net.advance(120)
    _assert_one_ike_sa(net)
    assert len(net.b.of_type(IkeSaRekeyed)) == 1
    net.assert_mirrored()
    net.assert_no_loss()
