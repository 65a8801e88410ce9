"""Payload codec: property-based round trips, header handling and a malformed-input corpus."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshsec.agent.ike.build import build_chain, build_message
from meshsec.agent.ike.constants import IKE_HEADER_LEN, ExchangeType, NotifyType, PayloadType
from meshsec.agent.ike.parse import ParseError, parse_chain, parse_message
from meshsec.agent.ike.payloads import (
    AuthPayload,
    CertPayload,
    CertReqPayload,
    CpPayload,
    DeletePayload,
    EapPayload,
    EncryptedPayload,
    Header,
    IdPayload,
    KePayload,
    NoncePayload,
    NotifyPayload,
    Payload,
    Proposal,
    SaPayload,
    TrafficSelector,
    Transform,
    TsPayload,
    UnknownPayload,
    VendorIdPayload,
)

u8 = st.integers(0, 255)
u16 = st.integers(0, 65535)
blob = st.binary(max_size=64)

transforms = st.builds(Transform, st.integers(1, 5), u16, st.one_of(st.none(), u16))
proposals = st.builds(
    Proposal,
    u8,
    st.integers(1, 3),
    st.sampled_from([b"", b"\x01\x02\x03\x04", bytes(8)]),
    st.lists(transforms, min_size=1, max_size=6).map(tuple),
)


@st.composite
def selectors(draw: st.DrawFn) -> TrafficSelector:
    v6 = draw(st.booleans())
    n = 16 if v6 else 4
    return TrafficSelector(
        8 if v6 else 7,
        draw(u8),
        draw(u16),
        draw(u16),
        draw(st.binary(min_size=n, max_size=n)),
        draw(st.binary(min_size=n, max_size=n)),
    )


@st.composite
def deletes(draw: st.DrawFn) -> DeletePayload:
    size = draw(st.sampled_from([0, 4, 8]))
    spis = draw(st.lists(st.binary(min_size=size, max_size=size), max_size=0 if size == 0 else 5))
    return DeletePayload(draw(st.integers(1, 3)), tuple(spis))


payloads: st.SearchStrategy[Payload] = st.one_of(
    st.builds(SaPayload, st.lists(proposals, min_size=1, max_size=4).map(tuple)),
    st.builds(KePayload, u16, blob),
    st.builds(IdPayload, st.sampled_from([PayloadType.IDi, PayloadType.IDr]), u8, blob),
    st.builds(CertPayload, u8, blob),
    st.builds(CertReqPayload, u8, blob),
    st.builds(AuthPayload, u8, blob),
    st.builds(NoncePayload, st.binary(min_size=16, max_size=256)),
    st.builds(NotifyPayload, u16, blob, st.integers(0, 3), st.sampled_from([b"", b"abcd", bytes(8)])),
    deletes(),
    st.builds(VendorIdPayload, blob),
    st.builds(
        TsPayload,
        st.sampled_from([PayloadType.TSi, PayloadType.TSr]),
        st.lists(selectors(), max_size=4).map(tuple),
    ),
    st.builds(CpPayload, u8, st.lists(st.tuples(st.integers(0, 0x7FFF), blob), max_size=4).map(tuple)),
    st.builds(EapPayload, blob),
    st.builds(UnknownPayload, st.integers(1, 32), st.just(False), blob),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(payloads, max_size=8), st.one_of(st.none(), st.builds(EncryptedPayload, u8, blob)))
def test_chain_round_trip(chain: list[Payload], sk: EncryptedPayload | None) -> None:
    full: list[Payload] = [*chain, sk] if sk is not None else list(chain)
    data = build_chain(full)
    first = int(full[0].payload_type) if full else 0
    assert parse_chain(first, memoryview(data)) == full


@settings(max_examples=100, deadline=None)
@given(
    st.lists(payloads, max_size=5),
    st.binary(min_size=8, max_size=8),
    st.binary(min_size=8, max_size=8),
    st.sampled_from(list(ExchangeType)),
    st.sampled_from([0, 0x08, 0x20, 0x28]),
    st.integers(0, 2**32 - 1),
)
def test_message_round_trip(
    chain: list[Payload], spi_i: bytes, spi_r: bytes, exch: int, flags: int, mid: int
) -> None:
    data = build_message(Header(spi_i, spi_r, 0, exch, flags, mid, 0), chain)
    msg = parse_message(data)
    assert msg.payloads == chain
    assert (
        msg.header.spi_i,
        msg.header.spi_r,
        msg.header.exchange,
        msg.header.flags,
        msg.header.message_id,
    ) == (
        spi_i,
        spi_r,
        exch,
        flags,
        mid,
    )
    assert msg.header.length == len(data)


@settings(max_examples=300, deadline=None)
@given(st.lists(payloads, min_size=1, max_size=5), st.data())
def test_any_truncation_or_corruption_raises_parse_error_only(
    chain: list[Payload], data: st.DataObject
) -> None:
    raw = bytearray(build_chain(chain))
    first = int(chain[0].payload_type)
    if data.draw(st.booleans()):
        raw = raw[: data.draw(st.integers(0, max(0, len(raw) - 1)))]
    else:
        pos = data.draw(st.integers(0, len(raw) - 1))
        raw[pos] = data.draw(u8)
    with contextlib.suppress(ParseError):
        parse_chain(first, memoryview(bytes(raw)))


def _hdr(next_payload: int, body: bytes, length: int | None = None) -> bytes:
    total = IKE_HEADER_LEN + len(body) if length is None else length
    return struct.pack("!8s8sBBBBII", b"\x11" * 8, bytes(8), next_payload, 0x20, 34, 0x08, 0, total) + body


CORPUS: list[tuple[str, bytes, int]] = [
    ("empty", b"", NotifyType.INVALID_SYNTAX),
    ("truncated header", _hdr(0, b"")[:20], NotifyType.INVALID_SYNTAX),
    ("length larger than datagram", _hdr(0, b"", 40), NotifyType.INVALID_SYNTAX),
    ("length smaller than datagram", _hdr(0, b"\0\0\0\0", 28), NotifyType.INVALID_SYNTAX),
    ("major version 3", _hdr(0, b"").replace(b"\x20\x22", b"\x30\x22", 1), NotifyType.INVALID_MAJOR_VERSION),
    ("payload header cut", _hdr(PayloadType.NONCE, b"\0\0"), NotifyType.INVALID_SYNTAX),
    ("payload length zero (would loop)", _hdr(PayloadType.NONCE, b"\0\0\0\0"), NotifyType.INVALID_SYNTAX),
    ("payload length 3", _hdr(PayloadType.NONCE, b"\0\0\0\3"), NotifyType.INVALID_SYNTAX),
    ("payload overruns message", _hdr(PayloadType.VENDOR, b"\0\0\0\x40abcd"), NotifyType.INVALID_SYNTAX),
    (
        "chain points past the end",
        _hdr(PayloadType.VENDOR, struct.pack("!BBH", PayloadType.VENDOR, 0, 4)),
        NotifyType.INVALID_SYNTAX,
    ),
    (
        "trailing garbage",
        _hdr(PayloadType.VENDOR, struct.pack("!BBH", 0, 0, 4) + b"zz"),
        NotifyType.INVALID_SYNTAX,
    ),
    (
        "unknown critical payload",
        _hdr(99, struct.pack("!BBH", 0, 0x80, 4)),
        NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD,
    ),
    (
        "short nonce",
        _hdr(PayloadType.NONCE, struct.pack("!BBH", 0, 0, 8) + b"abcd"),
        NotifyType.INVALID_SYNTAX,
    ),
    (
        "SK not last",
        _hdr(PayloadType.SK, struct.pack("!BBH", 0, 0, 4) + struct.pack("!BBH", 0, 0, 4)),
        NotifyType.INVALID_SYNTAX,
    ),
    (
        "proposal with bad last flag",
        _hdr(PayloadType.SA, struct.pack("!BBH", 0, 0, 12) + struct.pack("!BBHBBBB", 7, 0, 8, 1, 1, 0, 0)),
        NotifyType.INVALID_SYNTAX,
    ),
    (
        "transform count mismatch",
        _hdr(
            PayloadType.SA,
            struct.pack("!BBH", 0, 0, 20)
            + struct.pack("!BBHBBBB", 0, 0, 16, 1, 1, 0, 2)
            + struct.pack("!BBHBBH", 0, 0, 8, 1, 0, 12),
        ),
        NotifyType.INVALID_SYNTAX,
    ),
    (
        "traffic selector bad length",
        _hdr(
            PayloadType.TSi,
            struct.pack("!BBH", 0, 0, 16)
            + b"\x01\0\0\0"
            + struct.pack("!BBHHH", 7, 0, 12, 0, 0)
            + b"\0\0\0\0",
        ),
        NotifyType.INVALID_SYNTAX,
    ),
    (
        "delete spi count mismatch",
        _hdr(PayloadType.DELETE, struct.pack("!BBH", 0, 0, 12) + struct.pack("!BBH", 3, 4, 2) + b"abcd"),
        NotifyType.INVALID_SYNTAX,
    ),
    (
        "notify spi overrun",
        _hdr(PayloadType.NOTIFY, struct.pack("!BBH", 0, 0, 8) + struct.pack("!BBH", 3, 9, 1)),
        NotifyType.INVALID_SYNTAX,
    ),
]


@pytest.mark.parametrize(("name", "data", "notify"), CORPUS, ids=[c[0] for c in CORPUS])
def test_malformed_corpus(name: str, data: bytes, notify: int) -> None:
    with pytest.raises(ParseError) as info:
        parse_message(data)
    assert info.value.notify == notify


def test_unknown_non_critical_payload_is_kept() -> None:
    data = _hdr(
        99, struct.pack("!BBH", PayloadType.VENDOR, 0, 6) + b"xy" + struct.pack("!BBH", 0, 0, 5) + b"v"
    )
    msg = parse_message(data)
    assert msg.payloads == [UnknownPayload(99, False, b"xy"), VendorIdPayload(b"v")]


def test_key_length_attribute_encoding() -> None:
    # RFC 7296 3.3.5: Key Length is a TV attribute, type 14 with the AF bit set.
    sa = SaPayload((Proposal(1, 1, b"", (Transform(1, 12, 256),)),))
    wire = build_chain([sa])
    assert wire.endswith(struct.pack("!HH", 0x800E, 256))
