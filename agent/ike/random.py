"""The injectable random source: the engine never reads global randomness itself."""

from __future__ import annotations

import hashlib
import os
from typing import Protocol


class Random(Protocol):
    def bytes(self, n: int) -> bytes: ...


class SystemRandom:
    """Production source: the kernel CSPRNG."""

    def bytes(self, n: int) -> bytes:
        return os.urandom(n)


class DeterministicRandom:
    """SHA-256 in counter mode over a seed, for reproducible tests only."""

    def __init__(self, seed: bytes | str) -> None:
        self._seed = seed.encode() if isinstance(seed, str) else seed
        self._counter = 0

    def bytes(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            self._counter += 1
            out += hashlib.sha256(self._seed + self._counter.to_bytes(8, "big")).digest()
        return bytes(out[:n])
