"""AH (RFC 4302), sans-IO, integrity-only, IPv4 and IPv6 outer headers without options or
extension headers.

The ICV covers the outer IP header with its mutable fields zeroed (section 3.3.3.1: IPv4 TOS,
flags, fragment offset, TTL, header checksum; IPv6 traffic class, flow label, hop limit), the AH
header with a zero ICV field, the payload, and with ESN the high 32 sequence bits appended at the
end (section 3.3.3.2.1 / RFC 4304). ICV padding keeps the header a multiple of 32 bits (IPv4) or
64 bits (IPv6) and is part of the ICV input, as zeros.
"""

from __future__ import annotations

import hmac
import struct

from meshsec.agent.dataplane.userspace.esp import Drop, SequenceExhausted
from meshsec.agent.dataplane.userspace.replay import ReplayWindow
from meshsec.agent.dataplane.userspace.transforms import IntegrityAlgorithm

_FIXED = 12  # next header, payload len, reserved, SPI, sequence number


def ah_length(icv_size: int, ipv6: bool) -> int:
    """Bytes the AH header takes, ICV and padding included."""
    n = _FIXED + icv_size
    align = 8 if ipv6 else 4
    return n + (-n % align)


def zero_mutable_ipv4(header: bytes | memoryview) -> bytes:
    """The IPv4 header as the ICV sees it. Options are rejected by the caller."""
    h = bytearray(header)
    h[1] = 0  # TOS (DSCP/ECN)
    h[6:8] = b"\0\0"  # flags + fragment offset
    h[8] = 0  # TTL
    h[10:12] = b"\0\0"  # header checksum
    return bytes(h)


def zero_mutable_ipv6(header: bytes | memoryview) -> bytes:
    h = bytearray(header)
    h[0:4] = b"\x60\0\0\0"  # version kept; traffic class and flow label zeroed
    h[7] = 0  # hop limit
    return bytes(h)


class AhSender:
    __slots__ = ("_ipv6", "_limit", "_spi", "ah_len", "esn", "integ", "seq")

    def __init__(self, spi: int, integ: IntegrityAlgorithm, esn: bool, ipv6: bool) -> None:
        self._spi = spi.to_bytes(4, "big")
        self.integ = integ
        self.esn = esn
        self._ipv6 = ipv6
        self.ah_len = ah_length(integ.icv_size, ipv6)
        self.seq = 0
        self._limit = (1 << 64) - 1 if esn else (1 << 32) - 1

    def seal(self, zeroed_outer: bytes, payload: bytes, next_header: int) -> bytes:
        """AH header (with ICV) for `payload` behind an outer header whose mutable fields are
        already zeroed and whose length/protocol fields already account for AH."""
        seq = self.seq + 1
        if seq > self._limit:
            raise SequenceExhausted
        self.seq = seq
        fixed = struct.pack("!BBH", next_header, self.ah_len // 4 - 2, 0) + self._spi + (
            seq & 0xFFFFFFFF
        ).to_bytes(4, "big")
        zeros = bytes(self.ah_len - _FIXED)
        if self.esn:
            icv = self.integ.icv(zeroed_outer, fixed, zeros, payload, (seq >> 32).to_bytes(4, "big"))
        else:
            icv = self.integ.icv(zeroed_outer, fixed, zeros, payload)
        return fixed + icv + zeros[len(icv) :]


class AhReceiver:
    __slots__ = ("ah_len", "esn", "integ", "window")

    def __init__(self, integ: IntegrityAlgorithm, window: ReplayWindow, ipv6: bool) -> None:
        self.integ = integ
        self.window = window
        self.esn = window.esn
        self.ah_len = ah_length(integ.icv_size, ipv6)

    def open(self, zeroed_outer: bytes, packet: bytes) -> tuple[int, bytes] | Drop:
        """(next header, payload) for a verified AH packet starting at its first byte."""
        ah_len = self.ah_len
        if len(packet) < ah_len or (packet[1] + 2) * 4 != ah_len:
            return Drop.MALFORMED
        seq = self.window.infer(int.from_bytes(packet[8:12], "big"))
        if seq < 0:
            return Drop.REPLAY
        icv_size = self.integ.icv_size
        payload = packet[ah_len:]
        # Only the ICV is zeroed; alignment padding enters the ICV as received (as Linux does).
        parts: list[bytes] = [
            zeroed_outer, packet[:_FIXED], bytes(icv_size), packet[_FIXED + icv_size : ah_len], payload
        ]
        if self.esn:
            parts.append((seq >> 32).to_bytes(4, "big"))
        if not hmac.compare_digest(self.integ.icv(*parts), packet[_FIXED : _FIXED + icv_size]):
            return Drop.INTEGRITY
        if not self.window.accept(seq):
            return Drop.REPLAY
        return packet[0], payload
