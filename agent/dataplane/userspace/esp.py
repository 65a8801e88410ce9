"""ESP packet build and parse (RFC 4303), sans-IO: bytes in, bytes out, no sockets or clocks.

Wire format: SPI(4) | Sequence Number(4) | IV | ciphertext(payload | padding | pad length |
next header) | ICV. Padding is the monotonic 1, 2, 3, ... of section 2.4 and is checked on
receipt, which catches decryption with a wrong key even for transforms without integrity.
"""

from __future__ import annotations

import enum

from meshsec.agent.dataplane.userspace.replay import ReplayWindow
from meshsec.agent.dataplane.userspace.transforms import EspTransform

_PAD = bytes(range(1, 256))
_NO_HI = b""
# Padding || pad length || next header for every (pad length, next header) a sender can need,
# so sealing appends one precomputed trailer instead of building it per packet.
_TRAILERS = [[_PAD[:pad] + bytes((pad, nh)) for nh in range(256)] for pad in range(16)]


class Drop(enum.IntEnum):
    """Why a packet was discarded (index into the engine's drop counters)."""

    MALFORMED = 0
    UNKNOWN_SPI = 1
    REPLAY = 2
    INTEGRITY = 3
    BAD_PADDING = 4
    POLICY = 5
    DUMMY = 6
    EXPIRED = 7
    # outbound
    NO_POLICY = 8
    NO_SA = 9
    BLOCKED = 10
    SEND_ERROR = 11


class SequenceExhausted(Exception):
    """The SA sent 2^32 (2^64 with ESN) packets; RFC 4303 section 3.3.3 forbids cycling."""


class EspSender:
    __slots__ = ("_block", "_limit", "_spi", "esn", "seq", "transform")

    def __init__(self, spi: int, transform: EspTransform, esn: bool) -> None:
        self._spi = spi.to_bytes(4, "big")
        self.transform = transform
        self.esn = esn
        self.seq = 0
        self._limit = (1 << 64) - 1 if esn else (1 << 32) - 1
        self._block = transform.block_size

    def seal(self, payload: bytes | bytearray, next_header: int) -> bytes:
        seq = self.seq + 1
        if seq > self._limit:
            raise SequenceExhausted
        self.seq = seq
        header = self._spi + (seq & 0xFFFFFFFF).to_bytes(4, "big")
        seq_hi = (seq >> 32).to_bytes(4, "big") if self.esn else _NO_HI
        plaintext = bytes(payload) + _TRAILERS[-(len(payload) + 2) % self._block][next_header]
        return self.transform.seal(header, seq, seq_hi, plaintext)


class EspReceiver:
    __slots__ = ("_min_len", "esn", "transform", "window")

    def __init__(self, transform: EspTransform, window: ReplayWindow) -> None:
        self.transform = transform
        self.window = window
        self.esn = window.esn
        self._min_len = 8 + transform.iv_size + transform.icv_size + 4

    def open(self, packet: bytes) -> tuple[int, bytes] | Drop:
        """(next header, payload) for a verified packet that starts at its SPI, or the reason
        for dropping it. The replay window moves only after the ICV verified."""
        if len(packet) < self._min_len:
            return Drop.MALFORMED
        header = packet[:8]
        seq = self.window.infer(int.from_bytes(header[4:], "big"))
        if seq < 0:
            return Drop.REPLAY
        seq_hi = (seq >> 32).to_bytes(4, "big") if self.esn else _NO_HI
        plaintext = self.transform.open(header, seq_hi, memoryview(packet)[8:])
        if plaintext is None:
            return Drop.INTEGRITY
        if not self.window.accept(seq):
            return Drop.REPLAY
        pad_len = plaintext[-2]
        end = len(plaintext) - 2 - pad_len
        if end < 0 or plaintext[end:-2] != _PAD[:pad_len]:
            return Drop.BAD_PADDING
        return plaintext[-1], plaintext[:end]
