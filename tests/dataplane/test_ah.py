"""AH (RFC 4302) ICV over the outer header with mutable fields zeroed, checked by hand."""

from __future__ import annotations

import hashlib
import hmac

from meshsec.agent.dataplane.api import Integrity
from meshsec.agent.dataplane.userspace.ah import (
    AhReceiver,
    AhSender,
    ah_length,
    zero_mutable_ipv4,
    zero_mutable_ipv6,
)
from meshsec.agent.dataplane.userspace.esp import Drop
from meshsec.agent.dataplane.userspace.packet import build_ipv4, build_ipv6
from meshsec.agent.dataplane.userspace.replay import ReplayWindow
from meshsec.agent.dataplane.userspace.transforms import IntegrityAlgorithm
from meshsec.common.secrets import Secret

KEY = bytes(range(32))
SRC, DST = bytes([198, 18, 0, 1]), bytes([198, 18, 0, 2])


def integ() -> IntegrityAlgorithm:
    return IntegrityAlgorithm(Integrity("hmac-sha256", Secret(KEY), 128))


def test_ipv4_mutable_fields_zeroed() -> None:
    hdr = bytearray(build_ipv4(SRC, DST, 51, 100, 0x1234, ttl=63))
    hdr[1] = 0xB8  # DSCP EF
    hdr[6] = 0x40  # DF
    z = zero_mutable_ipv4(hdr)
    assert z[1] == 0 and z[6:8] == b"\0\0" and z[8] == 0 and z[10:12] == b"\0\0"
    # Immutable: version/IHL, total length, identification, protocol, addresses.
    assert z[0] == 0x45 and z[2:4] == (120).to_bytes(2, "big") and z[4:6] == b"\x12\x34"
    assert z[9] == 51 and z[12:16] == SRC and z[16:20] == DST


def test_ipv6_mutable_fields_zeroed() -> None:
    hdr = bytearray(build_ipv6(b"\x20" * 16, b"\x30" * 16, 51, 64, hop_limit=17))
    hdr[0:4] = b"\x6b\x81\x23\x45"  # traffic class and flow label set
    z = zero_mutable_ipv6(hdr)
    assert z[0:4] == b"\x60\0\0\0" and z[7] == 0
    assert z[4:6] == (64).to_bytes(2, "big") and z[6] == 51 and z[8:40] == hdr[8:40]


def test_ah_ipv4_icv_by_hand_and_in_transit_changes_are_tolerated() -> None:
    payload = b"\x45" + bytes(19) + b"inner"
    tx = AhSender(0xAABBCCDD, integ(), esn=False, ipv6=False)
    assert tx.ah_len == 28  # 12 + 16-byte ICV, already 32-bit aligned
    outer = build_ipv4(SRC, DST, 51, tx.ah_len + len(payload), 0x4242)
    ah = tx.seal(zero_mutable_ipv4(outer), payload, 4)
    assert ah[:4] == bytes([4, 28 // 4 - 2, 0, 0])
    assert ah[4:8] == bytes.fromhex("aabbccdd") and ah[8:12] == (1).to_bytes(4, "big")
    by_hand = hmac.new(KEY, zero_mutable_ipv4(outer) + ah[:12] + bytes(16) + payload, hashlib.sha256)
    assert ah[12:28] == by_hand.digest()[:16]

    # A router decrements TTL, rewrites DSCP and recomputes the checksum: ICV still valid.
    wire = bytearray(outer + ah + payload)
    wire[8] -= 1
    wire[1] = 0x20
    rx = AhReceiver(integ(), ReplayWindow(64, esn=False), ipv6=False)
    res = rx.open(zero_mutable_ipv4(wire[:20]), bytes(wire[20:]))
    assert not isinstance(res, Drop) and res[0] == 4 and bytes(res[1]) == payload

    # Changing an immutable field (the IP ID) breaks it.
    wire[5] ^= 1
    rx2 = AhReceiver(integ(), ReplayWindow(64, esn=False), ipv6=False)
    assert rx2.open(zero_mutable_ipv4(wire[:20]), bytes(wire[20:])) == Drop.INTEGRITY


def test_ah_ipv6_alignment_and_esn() -> None:
    assert ah_length(16, ipv6=True) == 32  # 28 padded to 64 bits
    assert ah_length(24, ipv6=True) == 40 and ah_length(24, ipv6=False) == 36
    tx = AhSender(7, integ(), esn=True, ipv6=True)
    tx.seq = 5 << 32
    payload = b"\x60" + bytes(39)
    zeroed = build_ipv6(b"\x20" * 16, b"\x30" * 16, 51, 32 + len(payload), hop_limit=0)
    ah = tx.seal(zeroed, payload, 41)
    assert len(ah) == 32 and ah[1] == 32 // 4 - 2 and ah[28:32] == bytes(4)
    by_hand = hmac.new(KEY, zeroed + ah[:12] + bytes(20) + payload + (5).to_bytes(4, "big"), hashlib.sha256)
    assert ah[12:28] == by_hand.digest()[:16]
    rx = AhReceiver(integ(), ReplayWindow(64, esn=True), ipv6=True)
    rx.window.top = (4 << 32) | 0xFFFFFFFF
    res = rx.open(zeroed, ah + payload)
    assert not isinstance(res, Drop) and res[0] == 41
    assert rx.open(zeroed, ah + payload) == Drop.REPLAY
