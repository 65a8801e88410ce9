"""Wire -> payload objects. Every failure is a ParseError carrying the notify the RFC asks for;
callers (the engine's public entry points) turn it into a reply or a silent drop."""

from __future__ import annotations

import struct

from meshsec.agent.ike.constants import (
    IKE_HEADER,
    IKE_HEADER_LEN,
    KEY_LENGTH_ATTRIBUTE,
    NotifyType,
    PayloadType,
)
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
    Message,
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

_GEN = struct.Struct("!BBH")
_KNOWN = frozenset(int(p) for p in PayloadType if p not in (PayloadType.NONE, PayloadType.SKF))


class ParseError(Exception):
    """A message we cannot accept; `notify` says which error notify the RFC prescribes."""

    def __init__(self, notify: int, detail: str, data: bytes = b"") -> None:
        super().__init__(detail)
        self.notify = notify
        self.data = data


def _syntax(detail: str) -> ParseError:
    return ParseError(NotifyType.INVALID_SYNTAX, detail)


def parse_header(data: bytes) -> Header:
    if len(data) < IKE_HEADER_LEN:
        raise _syntax("shorter than the IKE header")
    spi_i, spi_r, nxt, version, exch, flags, mid, length = IKE_HEADER.unpack_from(data)
    if version >> 4 != 2:
        raise ParseError(NotifyType.INVALID_MAJOR_VERSION, f"major version {version >> 4}")
    if length != len(data):
        raise _syntax(f"header length {length} != datagram length {len(data)}")
    return Header(spi_i, spi_r, nxt, exch, flags, mid, length, version)


def parse_message(data: bytes) -> Message:
    header = parse_header(data)
    payloads = parse_chain(header.next_payload, memoryview(data)[IKE_HEADER_LEN:])
    return Message(header, payloads)


def parse_chain(first: int, buf: memoryview) -> list[Payload]:
    """Walks a payload chain. Every payload must advance by >= 4 bytes, so a chain cannot loop;
    the SK payload must be last (RFC 7296 3.14) and its own chain is parsed after decryption."""
    out: list[Payload] = []
    nxt = first
    off = 0
    end = len(buf)
    while nxt != PayloadType.NONE:
        if end - off < 4:
            raise _syntax("payload header truncated")
        following, crit, plen = _GEN.unpack_from(buf, off)
        if plen < 4 or off + plen > end:
            raise _syntax(f"payload {nxt} length {plen} out of bounds")
        body = bytes(buf[off + 4 : off + plen])
        if nxt == PayloadType.SK:
            if off + plen != end:
                raise _syntax("SK payload is not the last payload")
            out.append(EncryptedPayload(following, body))
            return out
        if nxt in _KNOWN:
            out.append(_parse_body(nxt, body))
        elif crit & 0x80:
            raise ParseError(NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD, f"payload {nxt}", bytes((nxt,)))
        else:
            out.append(UnknownPayload(nxt, False, body))
        off += plen
        nxt = following
    if off != end:
        raise _syntax("bytes after the last payload")
    return out


def _need(body: bytes, n: int, what: str) -> None:
    if len(body) < n:
        raise _syntax(f"{what} payload truncated")


def _parse_body(ptype: int, body: bytes) -> Payload:
    if ptype == PayloadType.SA:
        return parse_sa(body)
    if ptype == PayloadType.KE:
        _need(body, 4, "KE")
        return KePayload(struct.unpack_from("!H", body)[0], body[4:])
    if ptype in (PayloadType.IDi, PayloadType.IDr):
        _need(body, 4, "ID")
        return IdPayload(PayloadType(ptype), body[0], body[4:])
    if ptype == PayloadType.CERT:
        _need(body, 1, "CERT")
        return CertPayload(body[0], body[1:])
    if ptype == PayloadType.CERTREQ:
        _need(body, 1, "CERTREQ")
        return CertReqPayload(body[0], body[1:])
    if ptype == PayloadType.AUTH:
        _need(body, 4, "AUTH")
        return AuthPayload(body[0], body[4:])
    if ptype == PayloadType.NONCE:
        if not 16 <= len(body) <= 256:
            raise _syntax("nonce length outside 16..256")
        return NoncePayload(body)
    if ptype == PayloadType.NOTIFY:
        _need(body, 4, "Notify")
        proto, spi_size, ntype = struct.unpack_from("!BBH", body)
        _need(body, 4 + spi_size, "Notify")
        return NotifyPayload(ntype, body[4 + spi_size :], proto, body[4 : 4 + spi_size])
    if ptype == PayloadType.DELETE:
        return _parse_delete(body)
    if ptype == PayloadType.VENDOR:
        return VendorIdPayload(body)
    if ptype in (PayloadType.TSi, PayloadType.TSr):
        return _parse_ts(PayloadType(ptype), body)
    if ptype == PayloadType.CP:
        return _parse_cp(body)
    if ptype == PayloadType.EAP:
        return EapPayload(body)
    raise _syntax(f"unexpected payload {ptype}")  # pragma: no cover - _KNOWN guards this


def parse_sa(body: bytes) -> SaPayload:
    proposals: list[Proposal] = []
    off = 0
    last = 2
    while last == 2:
        if len(body) - off < 8:
            raise _syntax("proposal truncated")
        last, _, plen, num, proto, spi_size, ntrans = struct.unpack_from("!BBHBBBB", body, off)
        if last not in (0, 2) or plen < 8 + spi_size or off + plen > len(body):
            raise _syntax("bad proposal header")
        spi = body[off + 8 : off + 8 + spi_size]
        transforms = _parse_transforms(body[off + 8 + spi_size : off + plen], ntrans)
        proposals.append(Proposal(num, proto, spi, transforms))
        off += plen
    if off != len(body):
        raise _syntax("bytes after the last proposal")
    return SaPayload(tuple(proposals))


def _parse_transforms(buf: bytes, count: int) -> tuple[Transform, ...]:
    out: list[Transform] = []
    off = 0
    last = 3
    while last == 3:
        if len(buf) - off < 8:
            raise _syntax("transform truncated")
        last, _, tlen, ttype, _, tid = struct.unpack_from("!BBHBBH", buf, off)
        if last not in (0, 3) or tlen < 8 or off + tlen > len(buf):
            raise _syntax("bad transform header")
        key_length: int | None = None
        aoff = off + 8
        while aoff < off + tlen:
            if off + tlen - aoff < 4:
                raise _syntax("transform attribute truncated")
            atype, aval = struct.unpack_from("!HH", buf, aoff)
            if atype & 0x8000:
                if atype & 0x7FFF == KEY_LENGTH_ATTRIBUTE:
                    key_length = aval
                aoff += 4
            else:
                # TLV attributes are not defined for IKEv2 transforms; skip them by length.
                if aoff + 4 + aval > off + tlen:
                    raise _syntax("transform attribute length")
                aoff += 4 + aval
        out.append(Transform(ttype, tid, key_length))
        off += tlen
    if off != len(buf) or len(out) != count:
        raise _syntax("transform count or length mismatch")
    return tuple(out)


def _parse_delete(body: bytes) -> DeletePayload:
    _need(body, 4, "Delete")
    proto, spi_size, count = struct.unpack_from("!BBH", body)
    if len(body) != 4 + spi_size * count:
        raise _syntax("Delete payload SPI count/size mismatch")
    spis = tuple(body[4 + i * spi_size : 4 + (i + 1) * spi_size] for i in range(count))
    return DeletePayload(proto, spis)


def _parse_ts(kind: PayloadType, body: bytes) -> TsPayload:
    _need(body, 4, "TS")
    count = body[0]
    off = 4
    selectors: list[TrafficSelector] = []
    for _ in range(count):
        if len(body) - off < 8:
            raise _syntax("traffic selector truncated")
        ts_type, proto, slen, sport, eport = struct.unpack_from("!BBHHH", body, off)
        alen = (slen - 8) // 2
        if slen not in (16, 40) or off + slen > len(body) or (ts_type, alen) not in ((7, 4), (8, 16)):
            raise _syntax("bad traffic selector")
        start = body[off + 8 : off + 8 + alen]
        end = body[off + 8 + alen : off + slen]
        selectors.append(TrafficSelector(ts_type, proto, sport, eport, start, end))
        off += slen
    if off != len(body):
        raise _syntax("bytes after the last traffic selector")
    return TsPayload(kind, tuple(selectors))


def _parse_cp(body: bytes) -> CpPayload:
    _need(body, 4, "CP")
    attrs: list[tuple[int, bytes]] = []
    off = 4
    while off < len(body):
        if len(body) - off < 4:
            raise _syntax("CP attribute truncated")
        atype, alen = struct.unpack_from("!HH", body, off)
        if off + 4 + alen > len(body):
            raise _syntax("CP attribute length")
        attrs.append((atype & 0x7FFF, body[off + 4 : off + 4 + alen]))
        off += 4 + alen
    return CpPayload(body[0], tuple(attrs))
