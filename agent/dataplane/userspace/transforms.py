"""ESP/AH cryptographic transforms: AES-GCM-16 (RFC 4106), ChaCha20-Poly1305 (RFC 7634), AES-CBC
(RFC 3602) with HMAC-SHA2 (RFC 4868), and NULL encryption with HMAC (RFC 2410), all precomputed
per SA.

A transform turns (ESP header, plaintext) into IV || ciphertext || ICV and back. The high-order
ESN bits (RFC 4304) are passed in by the caller because both the AEAD AAD (RFC 4106 section 5,
RFC 7634 section 2.1) and the HMAC input (RFC 4303 section 3.3.2.1) include them without sending them.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from meshsec.agent.dataplane.api import Encryption, Integrity, Unsupported

RandomSource = Callable[[int], bytes]

# RFC 4868 section 2.1: key length = hash output length, ICV = half of it.
_HMAC_SHA2 = {
    "hmac-sha256": ("sha256", 32, 128),
    "hmac-sha384": ("sha384", 48, 192),
    "hmac-sha512": ("sha512", 64, 256),
}


class IntegrityAlgorithm:
    """HMAC-SHA2 truncated per RFC 4868; the keyed state is computed once and copied per packet."""

    __slots__ = ("_base", "icv_size", "name")

    def __init__(self, integrity: Integrity) -> None:
        spec = _HMAC_SHA2.get(integrity.name)
        if spec is None:
            raise Unsupported(f"integrity algorithm {integrity.name!r} is not supported")
        digest, key_len, trunc_bits = spec
        if len(integrity.key) != key_len:
            raise ValueError(f"{integrity.name}: key must be {key_len} bytes, got {len(integrity.key)}")
        if integrity.truncation_bits != trunc_bits:
            raise ValueError(
                f"{integrity.name}: RFC 4868 truncation is {trunc_bits} bits, got {integrity.truncation_bits}"
            )
        self.name = integrity.name
        self._base = hmac.new(integrity.key.reveal(), digestmod=getattr(hashlib, digest))
        self.icv_size = trunc_bits // 8

    def icv(self, *parts: bytes | memoryview) -> bytes:
        h = self._base.copy()
        for part in parts:
            h.update(part)
        return h.digest()[: self.icv_size]


class EspTransform(Protocol):
    iv_size: int
    block_size: int  # alignment of plaintext + trailer (at least 4, RFC 4303 section 2.4)
    icv_size: int

    def seal(self, header: bytes, seq: int, seq_hi: bytes, plaintext: bytes) -> bytes:
        """The ESP packet: `header` (SPI || sequence) || IV || ciphertext || ICV."""

    def open(self, header: bytes, seq_hi: bytes, body: bytes | memoryview) -> bytes | None:
        """Padded plaintext, or None when the ICV does not verify. `body` may be a view into the
        received packet (no copy)."""


class _SaltedAead:
    """RFC 4106 / RFC 7634: key = cipher key || 4-byte salt; nonce = salt || 8-byte explicit IV.
    The explicit IV is the 64-bit sequence number, which the SA never repeats, so a nonce is never
    reused. The subclass names the algorithm and builds the AEAD from the key without the salt."""

    iv_size = 8
    block_size = 4
    icv_size = 16
    name: str
    key_sizes: tuple[int, ...]  # without the salt
    __slots__ = ("_aead", "_salt", "esn")

    def __init__(self, encryption: Encryption, esn: bool) -> None:
        key = encryption.key.reveal()
        if len(key) - 4 not in self.key_sizes:
            sizes = "/".join(str(n) for n in self.key_sizes)
            raise ValueError(f"{self.name}: key must be {sizes} bytes plus a 4-byte salt, got {len(key)}")
        if encryption.icv_bits not in (0, 128):
            raise Unsupported(f"{self.name}: only a 128-bit ICV is supported, got {encryption.icv_bits}")
        self._aead = self._make(key[:-4])
        self._salt = key[-4:]
        self.esn = esn

    @staticmethod
    def _make(key: bytes) -> AESGCM | ChaCha20Poly1305:
        raise NotImplementedError

    def seal(self, header: bytes, seq: int, seq_hi: bytes, plaintext: bytes) -> bytes:
        iv = seq.to_bytes(8, "big")
        # RFC 4106 section 5: with ESN the AAD is SPI || seq high || seq low, i.e. SPI || the IV.
        aad = header[:4] + iv if self.esn else header
        return header + iv + self._aead.encrypt(self._salt + iv, plaintext, aad)

    def open(self, header: bytes, seq_hi: bytes, body: bytes | memoryview) -> bytes | None:
        if len(body) < 8 + 16 + 4:
            return None
        aad = header[:4] + seq_hi + header[4:8] if self.esn else header
        try:
            return self._aead.decrypt(self._salt + body[:8], body[8:], aad)
        except InvalidTag:
            return None


class AesGcm16(_SaltedAead):
    name = "aes-gcm-16"
    key_sizes = (16, 24, 32)
    __slots__ = ()

    @staticmethod
    def _make(key: bytes) -> AESGCM:
        return AESGCM(key)


class ChaCha20Poly1305Esp(_SaltedAead):
    """RFC 7634 section 2: the same nonce, AAD and ICV rules as GCM with a 256-bit key. Block
    size 4: a stream cipher needs no padding beyond ESP's 4-byte alignment (section 2)."""

    name = "chacha20-poly1305"
    key_sizes = (32,)
    __slots__ = ()

    @staticmethod
    def _make(key: bytes) -> ChaCha20Poly1305:
        return ChaCha20Poly1305(key)


class _IvPool:
    """Random 16-byte blocks drawn from the random source in bulk, so the hot path does not make
    one getrandom() call per packet."""

    __slots__ = ("_buf", "_pos", "_random")
    _CHUNK = 16 * 256

    def __init__(self, random: RandomSource) -> None:
        self._random = random
        self._buf = b""
        self._pos = 0

    def take(self) -> bytes:
        pos = self._pos
        if pos >= len(self._buf):
            self._buf = self._random(self._CHUNK)
            pos = 0
        self._pos = pos + 16
        return self._buf[pos : pos + 16]


class AesCbcHmac:
    """RFC 3602 AES-CBC with an RFC 4868 HMAC-SHA2 ICV over SPI..ciphertext (+ ESN high bits).

    Creating a cipher context per packet costs more than the encryption itself, so each SA keeps
    one running CBC encryptor and one decryptor. Encryption feeds a fresh random block R first:
    its ciphertext E_K(R xor C_prev) becomes the packet's IV, and CBC chaining then encrypts the
    payload under exactly that IV. The IV is a block-cipher output on a random input, hence
    unpredictable as RFC 3602 section 2.4 requires (the construction of NIST SP 800-38A
    appendix C with a random rather than a unique input). Decryption feeds IV || ciphertext and
    discards the first output block; CBC decryption of block i depends only on blocks i-1 and i,
    so every packet decrypts independently of the ones before it, even corrupted ones.
    """

    iv_size = 16
    block_size = 16
    __slots__ = ("_dec", "_enc", "_integ", "_ivs", "esn", "icv_size")

    def __init__(self, encryption: Encryption, integrity: Integrity, esn: bool, random: RandomSource) -> None:
        key = encryption.key.reveal()
        if len(key) not in (16, 24, 32):
            raise ValueError(f"aes-cbc: key must be 16, 24 or 32 bytes, got {len(key)}")
        algo = algorithms.AES(key)
        self._enc = Cipher(algo, modes.CBC(bytes(16))).encryptor()
        self._dec = Cipher(algo, modes.CBC(bytes(16))).decryptor()
        self._integ = IntegrityAlgorithm(integrity)
        self.icv_size = self._integ.icv_size
        self._ivs = _IvPool(random)
        self.esn = esn

    def seal(self, header: bytes, seq: int, seq_hi: bytes, plaintext: bytes) -> bytes:
        body = self._enc.update(self._ivs.take() + plaintext)  # IV || ciphertext, see class doc
        icv = self._integ.icv(header, body, seq_hi) if self.esn else self._integ.icv(header, body)
        return b"".join((header, body, icv))

    def open(self, header: bytes, seq_hi: bytes, body: bytes | memoryview) -> bytes | None:
        n = len(body) - 16 - self.icv_size
        if n < 16 or n % 16:
            return None
        signed = body[: 16 + n]
        expected = self._integ.icv(header, signed, seq_hi) if self.esn else self._integ.icv(header, signed)
        if not hmac.compare_digest(expected, body[16 + n :]):
            return None
        return self._dec.update(signed)[16:]


class NullHmac:
    """RFC 2410 NULL encryption with an HMAC ICV (integrity-only ESP, NAT-friendly unlike AH)."""

    iv_size = 0
    block_size = 4
    __slots__ = ("_integ", "esn", "icv_size")

    def __init__(self, integrity: Integrity, esn: bool) -> None:
        self._integ = IntegrityAlgorithm(integrity)
        self.icv_size = self._integ.icv_size
        self.esn = esn

    def seal(self, header: bytes, seq: int, seq_hi: bytes, plaintext: bytes) -> bytes:
        icv = self._integ.icv(header, plaintext, seq_hi) if self.esn else self._integ.icv(header, plaintext)
        return b"".join((header, plaintext, icv))

    def open(self, header: bytes, seq_hi: bytes, body: bytes | memoryview) -> bytes | None:
        n = len(body) - self.icv_size
        if n < 4:
            return None
        signed = body[:n]
        expected = self._integ.icv(header, signed, seq_hi) if self.esn else self._integ.icv(header, signed)
        if not hmac.compare_digest(expected, body[n:]):
            return None
        return bytes(signed)


_AEADS: dict[str, type[_SaltedAead]] = {"aes-gcm-16": AesGcm16, "chacha20-poly1305": ChaCha20Poly1305Esp}


def make_esp_transform(
    encryption: Encryption | None, integrity: Integrity | None, esn: bool, random: RandomSource = os.urandom
) -> EspTransform:
    """The transform for an SA's algorithms; raises ValueError/Unsupported naming the bad field."""
    if encryption is None:
        raise ValueError("ESP SA needs an encryption algorithm (use 'null' for integrity-only ESP)")
    aead = _AEADS.get(encryption.name)
    if aead is not None:
        if integrity is not None:
            raise ValueError(
                f"{encryption.name} is an AEAD: the SA must not carry a separate integrity algorithm")
        return aead(encryption, esn)
    if encryption.name in ("aes-cbc", "null"):
        if integrity is None:
            raise ValueError(f"{encryption.name} needs an integrity algorithm")
        if encryption.name == "null":
            return NullHmac(integrity, esn)
        return AesCbcHmac(encryption, integrity, esn, random)
    raise Unsupported(f"encryption algorithm {encryption.name!r} is not supported")
