"""IKE_INTERMEDIATE with RFC 9370 additional key exchanges, two in-memory engines on a fake clock:
the hybrid handshakes, every IKE_INTERMEDIATE message lost once (a retransmitted fragmented
request arrives after the responder moved to the new keys) or delivered twice, a tampered
exchange, a peer that breaks the order. Rekeys with additional key exchanges (IKE_FOLLOWUP_KE)
are in test_followup_ke.py."""

from __future__ import annotations

import pytest

from meshsec.agent.ike.constants import DhId, ExchangeType, NotifyType, PayloadType
from meshsec.agent.ike.events import ChildSaEstablished, IkeSaEstablished, IkeSaFailed
from meshsec.agent.ike.parse import parse_header
from meshsec.agent.ike.sa import OutgoingDatagram
from tests.ike.peers import Pair, ike_config, of_type, responder_config

HYBRID = "aes256gcm16-prfsha256-x25519-ke1_mlkem768"
TWO = "aes256gcm16-prfsha384-ecp384-ke1_mlkem1024-ke2_mlkem768"
CLASSIC = "aes256gcm16-prfsha256-x25519"


def _pair(init: str, resp: str, **kw: object) -> Pair:
    return Pair(ike_config(proposals=init), [responder_config(proposals=resp)], **kw)  # type: ignore[arg-type]


def _established(p: Pair) -> tuple[IkeSaEstablished, IkeSaEstablished]:
    (i,) = of_type(p.events_i, IkeSaEstablished)
    (r,) = of_type(p.events_r, IkeSaEstablished)
    (ci,) = of_type(p.events_i, ChildSaEstablished)
    (cr,) = of_type(p.events_r, ChildSaEstablished)
    assert ci.keys_in == cr.keys_out and ci.keys_out == cr.keys_in
    return i, r


def _exchanges(p: Pair) -> list[tuple[str, int, bool, int]]:
    out = []
    for direction, d in p.wire:
        h = parse_header(d.data)
        out.append((direction, h.exchange, h.is_response, h.message_id))
    return out


@pytest.mark.parametrize(
    ("proposal", "addke"),
    [(HYBRID, (DhId.ML_KEM_768,)), (TWO, (DhId.ML_KEM_1024, DhId.ML_KEM_768))],
)
def test_hybrid_handshake_runs_one_intermediate_per_additional_exchange(
    proposal: str, addke: tuple[int, ...]
) -> None:
    p = _pair(proposal, proposal)
    p.connect()
    i, r = _established(p)
    assert i.algorithms.additional_ke == r.algorithms.additional_ke == addke
    requests = [(x, mid) for d, x, resp, mid in _exchanges(p) if d == "i->r" and not resp]
    intermediates = [(ExchangeType.IKE_INTERMEDIATE, n) for n in range(1, len(addke) + 1)]
    auth = (ExchangeType.IKE_AUTH, len(addke) + 1)
    assert list(dict.fromkeys(requests)) == [(ExchangeType.IKE_SA_INIT, 0), *intermediates, auth]
    assert p.initiator.stats["messages_fragmented"] >= 1  # ML-KEM keys exceed fragment_size


def test_optional_addke_against_a_classical_responder_needs_no_intermediate() -> None:
    p = _pair(HYBRID + "-ke1_none", CLASSIC)
    p.connect()
    i, _ = _established(p)
    assert i.algorithms.additional_ke == ()
    assert ExchangeType.IKE_INTERMEDIATE not in {x for _, x, _, _ in _exchanges(p)}


def test_required_addke_against_a_classical_responder_fails_with_no_proposal_chosen() -> None:
    p = _pair(HYBRID, CLASSIC)
    p.connect()
    (failed,) = of_type(p.events_i, IkeSaFailed)
    assert "NO_PROPOSAL_CHOSEN" in failed.reason


def _drop_first(exchange: int, response: bool, fragment: int | None = None):  # type: ignore[no-untyped-def]
    """A filter dropping the first datagram (or the given fragment number) of one message."""
    dropped: list[OutgoingDatagram] = []

    def lossy(direction: str, d: OutgoingDatagram) -> list[OutgoingDatagram]:
        h = parse_header(d.data)
        if dropped or h.exchange != exchange or h.is_response != response:
            return [d]
        if fragment is not None and h.next_payload == PayloadType.SKF:
            number = int.from_bytes(d.data[32:34], "big")
            if number != fragment:
                return [d]
        dropped.append(d)
        return []

    return lossy, dropped


@pytest.mark.parametrize(
    ("response", "fragment"),
    [(False, 1), (False, 2), (True, 1)],
    ids=["request-fragment-1", "request-fragment-2", "response"],
)
def test_a_lost_intermediate_message_is_retransmitted(response: bool, fragment: int | None) -> None:
    lossy, dropped = _drop_first(ExchangeType.IKE_INTERMEDIATE, response, fragment)
    p = _pair(HYBRID, HYBRID, filter=lossy)
    p.connect()
    p.advance(10)
    assert dropped, "nothing was dropped"
    _established(p)
    assert p.initiator.stats["retransmits"] == 1
    if response:
        # The fragmented request came again under the keys the responder has since replaced:
        # recognised (previous_protection), and the cached answer, sealed with the old keys the
        # initiator still uses, went out again.
        assert p.responder.stats["duplicate_request_answered"] == 1
        assert p.responder.stats["dropped_integrity"] == 0


def test_a_tampered_intermediate_request_is_dropped_and_the_retransmission_completes() -> None:
    tampered: list[bool] = []

    def flip(direction: str, d: OutgoingDatagram) -> list[OutgoingDatagram]:
        h = parse_header(d.data)
        if h.exchange == ExchangeType.IKE_INTERMEDIATE and not h.is_response and not tampered:
            tampered.append(True)
            data = bytearray(d.data)
            data[-1] ^= 1
            return [OutgoingDatagram(bytes(data), d.local, d.remote, d.keepalive)]
        return [d]

    p = _pair(HYBRID, HYBRID, filter=flip)
    p.connect()
    p.advance(10)
    _established(p)
    assert p.responder.stats["dropped_integrity"] >= 1


def test_intermediate_notify_is_sent_only_with_additional_exchanges() -> None:
    for proposal, expect in ((HYBRID, True), (CLASSIC, False)):
        p = _pair(proposal, proposal)
        p.connect()
        init_request = p.wire[0][1].data
        present = NotifyType.INTERMEDIATE_EXCHANGE_SUPPORTED.to_bytes(2, "big") in init_request
        assert present is expect


@pytest.mark.parametrize("direction", ["i->r", "r->i"])
def test_every_intermediate_datagram_arriving_twice_changes_nothing(direction: str) -> None:
    # Two IKE_INTERMEDIATE exchanges (ML-KEM-1024, ML-KEM-768), every datagram of one direction
    # delivered twice, fragments included. Requests: a repeated first fragment arrives while
    # the message is still being reassembled, a repeated last one after the answer (not a
    # retransmission to answer again). Answers: the initiator drops each repeated one (it
    # expects the next message ID by then) instead of processing or failing on it.
    def twice(d_dir: str, d: OutgoingDatagram) -> list[OutgoingDatagram]:
        if d_dir == direction and parse_header(d.data).exchange == ExchangeType.IKE_INTERMEDIATE:
            return [d, d]
        return [d]

    p = _pair(TWO, TWO, filter=twice)
    p.connect()
    p.advance(10)
    _established(p)
    assert not of_type(p.events_i, IkeSaFailed) and not of_type(p.events_r, IkeSaFailed)
    assert p.initiator.stats["retransmits"] == 0 and p.responder.stats["duplicate_request_answered"] == 0
    dropped = p.initiator.stats["dropped_bad_message_id"] + p.initiator.stats["dropped_unexpected_response"]
    assert dropped == (2 if direction == "r->i" else 0)
