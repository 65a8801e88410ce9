"""TCP MSS clamping on SYN and SYN-ACK with an incremental checksum update (RFC 1624)."""

from __future__ import annotations

import struct

import pytest

from meshsec.agent.dataplane.userspace.mss import clamp_mss, is_tcp_syn
from meshsec.agent.dataplane.userspace.packet import build_ipv4, build_ipv6, checksum

SRC, DST = bytes([198, 19, 1, 1]), bytes([198, 19, 2, 1])


def tcp_segment(flags: int, options: bytes, src: bytes, dst: bytes) -> bytes:
    hlen = 20 + len(options)
    header = struct.pack("!HHIIBBHHH", 40000, 80, 1, 0, (hlen // 4) << 4, flags, 65535, 0, 0)
    tcp = bytearray(header + options)
    pseudo = src + dst + (b"\0\x06" if len(src) == 4 else b"") + len(tcp).to_bytes(
        2 if len(src) == 4 else 4, "big") + (b"\0\0\0\x06" if len(src) == 16 else b"")
    tcp[16:18] = checksum(pseudo + tcp).to_bytes(2, "big")
    return bytes(tcp)


def tcp_ok(pkt: bytes | bytearray, v6: bool) -> bool:
    if v6:
        tcp = pkt[40:]
        pseudo = pkt[8:40] + len(tcp).to_bytes(4, "big") + b"\0\0\0\x06"
    else:
        tcp = pkt[20:]
        pseudo = pkt[12:20] + b"\0\x06" + len(tcp).to_bytes(2, "big")
    return checksum(bytes(pseudo) + bytes(tcp)) == 0


@pytest.mark.parametrize("flags", [0x02, 0x12], ids=["syn", "syn-ack"])
@pytest.mark.parametrize("options", [
    b"\x02\x04\x05\xb4" + b"\x01\x03\x03\x07",  # MSS first, word-aligned
    b"\x01\x02\x04\x05\xb4\x01\x01\x01",  # NOP then MSS: value straddles two 16-bit words
], ids=["aligned", "odd-offset"])
def test_clamp_ipv4(flags: int, options: bytes) -> None:
    tcp = tcp_segment(flags, options, SRC, DST)
    pkt = bytearray(build_ipv4(SRC, DST, 6, len(tcp), 1) + tcp)
    assert is_tcp_syn(pkt) and tcp_ok(pkt, v6=False)
    assert clamp_mss(pkt, 1350, 1330)
    i = pkt.index(b"\x02\x04", 40)
    assert int.from_bytes(pkt[i + 2 : i + 4], "big") == 1350
    assert tcp_ok(pkt, v6=False)
    assert not clamp_mss(pkt, 1400, 1380)  # already below the limit: untouched


def test_clamp_ipv6() -> None:
    s6, d6 = bytes.fromhex("20010db8" + "00" * 11 + "01"), bytes.fromhex("20010db8" + "00" * 11 + "02")
    tcp = tcp_segment(0x02, b"\x02\x04\xff\xc4", s6, d6)
    pkt = bytearray(build_ipv6(s6, d6, 6, len(tcp)) + tcp)
    assert tcp_ok(pkt, v6=True)
    assert clamp_mss(pkt, 1350, 1330)
    assert pkt[62:64] == (1330).to_bytes(2, "big") and tcp_ok(pkt, v6=True)


def test_non_syn_and_malformed_options_untouched() -> None:
    ack = bytearray(build_ipv4(SRC, DST, 6, 24, 1) + tcp_segment(0x10, b"\x02\x04\x05\xb4", SRC, DST))
    assert not is_tcp_syn(ack) and not clamp_mss(ack, 1000, 1000)
    bad = tcp_segment(0x02, b"\x03\x09\x00\x00", SRC, DST)  # option length runs past the header
    pkt = bytearray(build_ipv4(SRC, DST, 6, len(bad), 1) + bad)
    before = bytes(pkt)
    assert not clamp_mss(pkt, 1000, 1000) and bytes(pkt) == before
