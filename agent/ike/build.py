"""Payload objects -> wire. Kept apart from parse.py so each side stays small and obvious."""

from __future__ import annotations

import struct
from collections.abc import Sequence

from meshsec.agent.ike.constants import IKE_HEADER, IKE_HEADER_LEN, KEY_LENGTH_ATTRIBUTE, PayloadType
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
    TsPayload,
    UnknownPayload,
    VendorIdPayload,
)


def build_header(header: Header) -> bytes:
    return IKE_HEADER.pack(
        header.spi_i,
        header.spi_r,
        header.next_payload,
        header.version,
        header.exchange,
        header.flags,
        header.message_id,
        header.length,
    )


def build_chain(payloads: Sequence[Payload], trailing: int = PayloadType.NONE) -> bytes:
    """Encodes a payload chain; `trailing` is the next-payload value of the last element."""
    parts: list[bytes] = []
    n = len(payloads)
    for i, p in enumerate(payloads):
        if isinstance(p, EncryptedPayload):
            nxt = p.first_inner
        else:
            nxt = int(payloads[i + 1].payload_type) if i + 1 < n else trailing
        body = build_body(p)
        crit = 0x80 if isinstance(p, UnknownPayload) and p.critical else 0
        parts.append(struct.pack("!BBH", nxt, crit, len(body) + 4))
        parts.append(body)
    return b"".join(parts)


def build_message(header: Header, payloads: Sequence[Payload]) -> bytes:
    chain = build_chain(payloads)
    first = int(payloads[0].payload_type) if payloads else PayloadType.NONE
    hdr = Header(
        header.spi_i,
        header.spi_r,
        first,
        header.exchange,
        header.flags,
        header.message_id,
        IKE_HEADER_LEN + len(chain),
        header.version,
    )
    return build_header(hdr) + chain


def build_sa(sa: SaPayload) -> bytes:
    out: list[bytes] = []
    for i, prop in enumerate(sa.proposals):
        body = _build_proposal(prop)
        last = 2 if i + 1 < len(sa.proposals) else 0
        out.append(struct.pack("!BBH", last, 0, len(body) + 4) + body)
    return b"".join(out)


def _build_proposal(prop: Proposal) -> bytes:
    trans: list[bytes] = []
    for i, t in enumerate(prop.transforms):
        attrs = (
            b"" if t.key_length is None else struct.pack("!HH", 0x8000 | KEY_LENGTH_ATTRIBUTE, t.key_length)
        )
        last = 3 if i + 1 < len(prop.transforms) else 0
        trans.append(struct.pack("!BBHBBH", last, 0, 8 + len(attrs), t.type, 0, t.id) + attrs)
    return (
        struct.pack("!BBBB", prop.number, prop.protocol, len(prop.spi), len(prop.transforms))
        + prop.spi
        + b"".join(trans)
    )


def build_body(p: Payload) -> bytes:
    if isinstance(p, SaPayload):
        return build_sa(p)
    if isinstance(p, KePayload):
        return struct.pack("!HH", p.group, 0) + p.data
    if isinstance(p, IdPayload):
        return p.body_for_auth()
    if isinstance(p, CertPayload | CertReqPayload):
        return bytes((p.encoding,)) + p.data
    if isinstance(p, AuthPayload):
        return bytes((p.method, 0, 0, 0)) + p.data
    if isinstance(p, NoncePayload | VendorIdPayload | EapPayload | EncryptedPayload | UnknownPayload):
        return p.data
    if isinstance(p, NotifyPayload):
        return struct.pack("!BBH", p.protocol, len(p.spi), p.notify_type) + p.spi + p.data
    if isinstance(p, DeletePayload):
        size = len(p.spis[0]) if p.spis else 0
        return struct.pack("!BBH", p.protocol, size, len(p.spis)) + b"".join(p.spis)
    if isinstance(p, TsPayload):
        sel = b"".join(
            struct.pack(
                "!BBHHH", s.ts_type, s.ip_protocol, 8 + 2 * len(s.start_addr), s.start_port, s.end_port
            )
            + s.start_addr
            + s.end_addr
            for s in p.selectors
        )
        return struct.pack("!BBH", len(p.selectors), 0, 0) + sel
    if isinstance(p, CpPayload):
        attrs = b"".join(struct.pack("!HH", t, len(v)) + v for t, v in p.attributes)
        return struct.pack("!BBH", p.cfg_type, 0, 0) + attrs
    raise TypeError(f"cannot encode {type(p).__name__}")
