"""IP header helpers for the hot path: just enough parsing and building for ESP/AH, never a
general packet library. Offsets are the RFC 791 / RFC 8200 ones."""

from __future__ import annotations

import struct

IPPROTO_ICMP = 1
IPPROTO_IPIP = 4
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_IPV6 = 41
IPPROTO_ESP = 50
IPPROTO_AH = 51
IPPROTO_NONE = 59  # RFC 4303 section 2.6: dummy packet, discard silently
IPPROTO_SCTP = 132

_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_IPV6 = struct.Struct("!IHBB16s16s")


def checksum(data: bytes | memoryview) -> int:
    """RFC 1071 Internet checksum."""
    if len(data) % 2:
        data = bytes(data) + b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def build_ipv4(src: bytes, dst: bytes, protocol: int, payload_len: int, ident: int, ttl: int = 64) -> bytes:
    """A 20-byte IPv4 header (no DF, so the underlay may fragment) with its checksum."""
    hdr = build_ipv4_raw(src, dst, protocol, payload_len, ident, ttl)
    return hdr[:10] + checksum(hdr).to_bytes(2, "big") + hdr[12:]


def build_ipv4_raw(
    src: bytes, dst: bytes, protocol: int, payload_len: int, ident: int, ttl: int = 64
) -> bytes:
    """Header for an IP_HDRINCL raw socket: the kernel fills in the checksum, and the ID if 0."""
    return _IPV4.pack(0x45, 0, 20 + payload_len, ident & 0xFFFF, 0, ttl, protocol, 0, src, dst)


def build_ipv6(src: bytes, dst: bytes, next_header: int, payload_len: int, hop_limit: int = 64) -> bytes:
    return _IPV6.pack(0x60000000, payload_len, next_header, hop_limit, src, dst)


def addresses(pkt: bytes | memoryview) -> tuple[bytes, bytes] | None:
    """(src, dst) of an IPv4/IPv6 packet, or None if it is too short to be one."""
    v = pkt[0] >> 4 if len(pkt) else 0
    if v == 4 and len(pkt) >= 20:
        return bytes(pkt[12:16]), bytes(pkt[16:20])
    if v == 6 and len(pkt) >= 40:
        return bytes(pkt[8:24]), bytes(pkt[24:40])
    return None


def l4_info(pkt: bytes | memoryview) -> tuple[int, int, int, int]:
    """(protocol, offset of the L4 header, src port, dst port); ports are 0 for non-port protocols
    and non-first fragments. IPv6 extension headers are not walked (the next-header of the fixed
    header is used), which is what our own TUN traffic carries."""
    if pkt[0] >> 4 == 4:
        proto = pkt[9]
        off = (pkt[0] & 0x0F) * 4
        first = (pkt[6] & 0x1F) == 0 and pkt[7] == 0
    else:
        proto = pkt[6]
        off = 40
        first = True
    if first and proto in (IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP) and len(pkt) >= off + 4:
        return proto, off, (pkt[off] << 8) | pkt[off + 1], (pkt[off + 2] << 8) | pkt[off + 3]
    return proto, off, 0, 0
