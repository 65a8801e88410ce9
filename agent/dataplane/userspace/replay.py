"""Anti-replay window (RFC 4303 section 3.4.3) with ESN inference (RFC 4303 Appendix A2.1).

The window is a bitmap held in one Python int: bit i set means sequence number `top - i` was
received. `infer` maps the 32 bits on the wire to the full 64-bit number without touching state;
`accept` records it only after the ICV verified, so a forged packet cannot move the window.
"""

from __future__ import annotations

MIN_WINDOW = 64
_LOW = 0xFFFFFFFF


class ReplayWindow:
    __slots__ = ("_mask", "bitmap", "esn", "size", "top")

    def __init__(self, size: int, esn: bool) -> None:
        self.size = max(size, MIN_WINDOW)
        self.esn = esn
        self.top = 0  # highest authenticated sequence number (64-bit with ESN)
        self.bitmap = 0
        self._mask = (1 << self.size) - 1

    def infer(self, seq_low: int) -> int:
        """The full sequence number for `seq_low`, or -1 when it is a replay or left the window."""
        if not self.esn:
            seq = seq_low
        else:
            top_low = self.top & _LOW
            top_high = self.top >> 32
            w = self.size
            if top_low >= w - 1:
                # Window inside one 2^32 subspace: anything below its bottom belongs to the next one.
                seq_high = top_high if seq_low >= top_low - w + 1 else top_high + 1
            else:
                # Window straddles two subspaces: numbers above its (wrapped) bottom are the old one.
                seq_high = top_high - 1 if seq_low >= ((top_low - w + 1) & _LOW) else top_high
            if seq_high < 0:
                seq_high = 0
            seq = (seq_high << 32) | seq_low
        if seq == 0:
            return -1
        top = self.top
        if seq > top:
            return seq
        diff = top - seq
        if diff >= self.size or (self.bitmap >> diff) & 1:
            return -1
        return seq

    def accept(self, seq: int) -> bool:
        """Record an authenticated `seq`; False if it was already recorded (a racing duplicate)."""
        top = self.top
        if seq > top:
            shift = seq - top
            self.bitmap = ((self.bitmap << shift) | 1) & self._mask if shift < self.size else 1
            self.top = seq
            return True
        diff = top - seq
        if diff >= self.size:
            return False
        bit = 1 << diff
        if self.bitmap & bit:
            return False
        self.bitmap |= bit
        return True
