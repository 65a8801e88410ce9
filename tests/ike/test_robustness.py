"""Hostile input against the engine's public entry points: nothing may raise, bad input is
counted, authenticated-but-malformed requests get the notify RFC 7296 prescribes, and the SA
keeps working afterwards."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshsec.agent.ike.address import Address
from meshsec.agent.ike.build import build_message
from meshsec.agent.ike.constants import ExchangeType, NotifyType, PayloadType
from meshsec.agent.ike.events import LivenessChecked
from meshsec.agent.ike.parse import parse_message
from meshsec.agent.ike.payloads import (
    Header,
    KePayload,
    NoncePayload,
    NotifyPayload,
    Payload,
    SaPayload,
    UnknownPayload,
)
from meshsec.agent.ike.sa import IkeSa

from .peers import I_ADDR, R_ADDR, Pair, ike_config, of_type, responder_config
from .test_codec import CORPUS


def established_pair() -> Pair:
    p = Pair(ike_config(), [responder_config()])
    p.connect()
    assert p.initiator.established and p.responder.established
    return p


def seal_request(sa: IkeSa, payloads: list[Payload], exchange: int = ExchangeType.INFORMATIONAL) -> bytes:
    assert sa.protection is not None
    header = Header(sa.spi_i, sa.spi_r, 0, exchange, 0x08, sa.next_request_id, 0)
    return sa.protection.seal(header, payloads, sa.rnd)


def responder_answer(p: Pair) -> list[Payload]:
    out = p.table.datagrams_to_send()
    assert len(out) == 1
    assert p.initiator.protection is not None
    msg = parse_message(out[0].data)
    assert msg.header.is_response
    return p.initiator.protection.open(out[0].data, msg.payloads[-1])  # type: ignore[arg-type]


def assert_still_alive(p: Pair) -> None:
    p.table.datagrams_to_send()
    p.initiator.check_liveness(p.now)
    p.pump()
    assert of_type(p.events_i, LivenessChecked)[-1] == LivenessChecked(True)
    assert p.initiator.stats["internal_error"] == 0 and p.responder.stats["internal_error"] == 0


@pytest.mark.parametrize(("name", "data"), [(c[0], c[1]) for c in CORPUS], ids=[c[0] for c in CORPUS])
def test_corpus_against_front_door_and_established_sas(name: str, data: bytes) -> None:
    p = established_pair()
    p.table.receive(data, R_ADDR, I_ADDR, p.now)
    p.initiator.receive(data, I_ADDR, R_ADDR, p.now)
    # The same garbage carrying the SA's real SPIs reaches the SA objects themselves.
    if len(data) >= 16:
        for sa in (p.initiator, p.responder):
            p.table.receive(sa.spi_i + sa.spi_r + data[16:], R_ADDR, I_ADDR, p.now)
            sa.receive(sa.spi_i + sa.spi_r + data[16:], R_ADDR, I_ADDR, p.now)
    assert p.initiator.datagrams_to_send() == []
    assert_still_alive(p)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300), st.booleans())
def test_fuzz_never_raises(junk: bytes, with_spis: bool) -> None:
    p = established_pair()
    for sa in (p.initiator, p.responder):
        data = (sa.spi_i + sa.spi_r + junk) if with_spis else junk
        sa.receive(data, I_ADDR, R_ADDR, p.now)
        p.table.receive(data, R_ADDR, I_ADDR, p.now)
    assert p.initiator.stats["internal_error"] == 0 and p.responder.stats["internal_error"] == 0
    assert p.responder_front.stats["internal_error"] == 0


@pytest.mark.parametrize("suite", ["aes256gcm16-prfsha256-x25519", "aes128-sha256-ecp256"])
def test_garbage_in_sk_payload_is_dropped(suite: str) -> None:
    p = Pair(ike_config(proposals=suite), [responder_config(proposals=suite)])
    p.connect()
    good = bytearray(seal_request(p.initiator, []))
    for pos in (40, len(good) - 20, len(good) - 1):
        bad = bytearray(good)
        bad[pos] ^= 0x55
        p.table.receive(bytes(bad), R_ADDR, I_ADDR, p.now)
    assert p.responder.stats["dropped_integrity"] == 3
    assert p.table.datagrams_to_send() == []
    assert_still_alive(p)


def test_authenticated_unknown_critical_payload_answered() -> None:
    p = established_pair()
    request = seal_request(p.initiator, [UnknownPayload(200, True, b"x")])
    p.table.receive(request, R_ADDR, I_ADDR, p.now)
    answer = responder_answer(p)
    assert answer == [NotifyPayload(NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD, bytes((200,)))]


def test_unknown_status_notify_and_non_critical_payload_ignored() -> None:
    p = established_pair()
    request = seal_request(p.initiator, [NotifyPayload(40001, b"?"), UnknownPayload(200, False, b"x")])
    p.table.receive(request, R_ADDR, I_ADDR, p.now)
    assert responder_answer(p) == []


def test_authenticated_malformed_inner_payload_gets_invalid_syntax() -> None:
    p = established_pair()
    mid = p.initiator.next_request_id
    # A Delete whose header claims two 4-byte SPIs but carries one, inside a valid SK payload.
    inner = struct.pack("!BBH", 0, 0, 12) + struct.pack("!BBH", 3, 4, 2) + b"abcd"
    hdr = Header(p.initiator.spi_i, p.initiator.spi_r, 0, ExchangeType.INFORMATIONAL, 0x08, mid, 0)
    p.table.receive(_seal_raw(p.initiator, hdr, PayloadType.DELETE, inner), R_ADDR, I_ADDR, p.now)
    assert responder_answer(p) == [NotifyPayload(NotifyType.INVALID_SYNTAX)]
    # The message ID was consumed; the SA goes on with the next one.
    hdr = Header(p.initiator.spi_i, p.initiator.spi_r, 0, ExchangeType.INFORMATIONAL, 0x08, mid + 1, 0)
    assert p.initiator.protection is not None
    p.table.receive(p.initiator.protection.seal(hdr, [], p.initiator.rnd), R_ADDR, I_ADDR, p.now)
    assert responder_answer(p) == []
    assert p.responder.established and p.responder.stats["internal_error"] == 0


def _seal_raw(sa: IkeSa, hdr: Header, first: int, inner: bytes) -> bytes:
    """Seals arbitrary inner bytes (the builder cannot produce malformed payloads)."""
    assert sa.protection is not None
    return sa.protection.seal_encoded(hdr, first, inner, sa.rnd)


def test_init_with_unknown_critical_payload_is_answered_statelessly() -> None:
    p = Pair(ike_config(), [responder_config()])
    hdr = Header(b"\x42" * 8, bytes(8), 0, ExchangeType.IKE_SA_INIT, 0x08, 0, 0)
    data = build_message(hdr, [UnknownPayload(222, True, b"zz"), NoncePayload(bytes(32))])
    p.table.receive(data, R_ADDR, Address("198.18.0.9", 500), p.now)
    out = p.table.datagrams_to_send()
    assert len(out) == 1
    msg = parse_message(out[0].data)
    assert msg.payloads == [NotifyPayload(NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD, bytes((222,)))]
    p.table.events()
    assert len(p.table) == 0


def test_init_missing_payloads_and_bad_ke() -> None:
    p = Pair(ike_config(), [responder_config()])
    cfg = ike_config()
    proposals = tuple(spec.to_proposal(i + 1, b"") for i, spec in enumerate(cfg.specs))
    cases = [
        [SaPayload(proposals), NoncePayload(bytes(32))],  # no KE
        [SaPayload(proposals), KePayload(31, b"short"), NoncePayload(bytes(32))],  # invalid X25519 value
        [SaPayload(proposals), KePayload(31, bytes(32)), NoncePayload(bytes(32))],  # low-order point
    ]
    for n, payloads in enumerate(cases):
        hdr = Header(bytes((n + 1,)) * 8, bytes(8), 0, ExchangeType.IKE_SA_INIT, 0x08, 0, 0)
        p.table.receive(build_message(hdr, payloads), R_ADDR, Address("198.18.0.9", 500), p.now)
        (answer,) = p.table.datagrams_to_send()
        assert parse_message(answer.data).payloads == [NotifyPayload(NotifyType.INVALID_SYNTAX)]
    p.table.events()
    assert len(p.table) == 0


def test_responses_and_requests_with_wrong_message_ids_are_dropped() -> None:
    p = established_pair()
    future = Header(p.initiator.spi_i, p.initiator.spi_r, 0, ExchangeType.INFORMATIONAL, 0x08, 7, 0)
    assert p.initiator.protection is not None
    p.table.receive(p.initiator.protection.seal(future, [], p.initiator.rnd), R_ADDR, I_ADDR, p.now)
    assert p.responder.stats["dropped_bad_message_id"] == 1
    # A forged response with no request outstanding
    resp = Header(p.initiator.spi_i, p.initiator.spi_r, 0, ExchangeType.INFORMATIONAL, 0x20, 1, 0)
    p.initiator.receive(build_message(resp, []), I_ADDR, R_ADDR, p.now)
    assert p.initiator.stats["dropped_unexpected_response"] == 1
    assert_still_alive(p)


def test_requests_out_of_place_are_dropped() -> None:
    p = established_pair()
    r = p.responder
    assert r.protection is not None
    # The responder may never send IKE_AUTH requests to the initiator.
    hdr = Header(r.spi_i, r.spi_r, 0, ExchangeType.IKE_AUTH, 0, 0, 0)
    p.initiator.receive(r.protection.seal(hdr, [], r.rnd), I_ADDR, R_ADDR, p.now)
    assert p.initiator.stats["dropped_unexpected_request"] == 1
    assert p.initiator.datagrams_to_send() == []
    assert_still_alive(p)
