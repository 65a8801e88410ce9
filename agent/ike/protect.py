"""The SK payload (RFC 7296 3.14, RFC 5282): sealing an inner payload chain into a message and
opening a received one. One object per IKE SA holds both directions' keys."""

from __future__ import annotations

import hmac as _hmac
import struct
from collections.abc import Sequence

from meshsec.agent.ike.build import build_chain, build_header
from meshsec.agent.ike.constants import IKE_HEADER_LEN, PayloadType
from meshsec.agent.ike.crypto import CryptoError, Integ, SkCipher
from meshsec.agent.ike.keys import IkeKeys
from meshsec.agent.ike.parse import parse_chain
from meshsec.agent.ike.payloads import EncryptedPayload, Header, Payload
from meshsec.agent.ike.random import Random


class SkProtection:
    def __init__(self, cipher: SkCipher, integ: Integ | None, keys: IkeKeys, initiator: bool) -> None:
        self._cipher = cipher
        self._integ = integ
        # Outbound uses our role's keys, inbound the peer's.
        if initiator:
            self._ek, self._ak = keys.sk_ei.reveal(), keys.sk_ai.reveal()
            self._dk, self._vk = keys.sk_er.reveal(), keys.sk_ar.reveal()
        else:
            self._ek, self._ak = keys.sk_er.reveal(), keys.sk_ar.reveal()
            self._dk, self._vk = keys.sk_ei.reveal(), keys.sk_ai.reveal()
        self._icv = 0 if cipher.aead else (integ.icv_size if integ else 0)

    def seal(self, header: Header, payloads: Sequence[Payload], rnd: Random) -> bytes:
        first = int(payloads[0].payload_type) if payloads else PayloadType.NONE
        return self.seal_encoded(header, first, build_chain(payloads), rnd)

    def seal_encoded(self, header: Header, first: int, inner: bytes, rnd: Random) -> bytes:
        """An SK message around an already encoded inner chain whose first payload is `first`
        (tests and fuzzers seal chains the builder would refuse to produce)."""
        return self._seal(header, PayloadType.SK, first, b"", inner, rnd)

    def overhead(self) -> int:
        """Bytes an Encrypted Fragment message adds around its share of the inner chain, at most."""
        tag = self._cipher.icv_size if self._cipher.aead else 0
        return IKE_HEADER_LEN + 8 + self._cipher.iv_size + self._cipher.block_size() + tag + self._icv

    def sealed_size(self, inner_len: int) -> int:
        """Bytes of the SK message `seal_encoded` makes around an inner chain of `inner_len`
        bytes: what decides whether a message goes out whole or in fragments, known without
        encrypting it."""
        return IKE_HEADER_LEN + self._sk_size(0, self._padded(inner_len))

    def _padded(self, inner_len: int) -> int:
        """The plaintext's length: the inner chain, its padding and the Pad Length byte."""
        bs = self._cipher.block_size()
        return inner_len + (bs - (inner_len + 1) % bs) % bs + 1

    def _sk_size(self, extra_len: int, plaintext_len: int) -> int:
        tag = self._cipher.icv_size if self._cipher.aead else 0
        return 4 + extra_len + self._cipher.iv_size + plaintext_len + tag + self._icv

    def seal_fragments(
        self, header: Header, payloads: Sequence[Payload], rnd: Random, max_len: int
    ) -> list[bytes]:
        """RFC 7383: the inner chain split into Encrypted Fragment (SKF) messages of at most
        `max_len` bytes each; only the first names the first inner payload."""
        first = int(payloads[0].payload_type) if payloads else PayloadType.NONE
        return self.seal_fragments_encoded(header, first, build_chain(payloads), rnd, max_len)

    def seal_fragments_encoded(
        self, header: Header, first: int, inner: bytes, rnd: Random, max_len: int
    ) -> list[bytes]:
        """`seal_fragments` of an already encoded inner chain whose first payload is `first`."""
        room = max(16, max_len - self.overhead())
        chunks = [inner[i : i + room] for i in range(0, len(inner), room)] or [b""]
        total = len(chunks)
        return [
            self._seal(
                header, PayloadType.SKF, first if n == 1 else 0, struct.pack("!HH", n, total), chunk, rnd
            )
            for n, chunk in enumerate(chunks, 1)
        ]

    def _seal(self, header: Header, ptype: int, first: int, extra: bytes, inner: bytes, rnd: Random) -> bytes:
        pad = self._padded(len(inner)) - len(inner) - 1
        plaintext = inner + bytes(pad) + bytes((pad,))
        iv = rnd.bytes(self._cipher.iv_size)
        sk_len = self._sk_size(len(extra), len(plaintext))
        total = IKE_HEADER_LEN + sk_len
        hdr = build_header(
            Header(
                header.spi_i,
                header.spi_r,
                ptype,
                header.exchange,
                header.flags,
                header.message_id,
                total,
                header.version,
            )
        )
        # AAD: everything before the IV (RFC 5282 for SK; RFC 7383 2.5 adds the fragment fields).
        aad = hdr + struct.pack("!BBH", first, 0, sk_len) + extra
        ct = self._cipher.encrypt(self._ek, iv, plaintext, aad)
        msg = aad + iv + ct
        if self._icv and self._integ is not None:
            msg += self._integ.sign(self._ak, msg)
        return msg

    def open_fragment(self, data: bytes) -> tuple[int, int, int, bytes]:
        """One Encrypted Fragment message -> (fragment number, total, first inner payload type,
        its share of the inner chain). Raises CryptoError if it does not verify."""
        start = IKE_HEADER_LEN
        if len(data) < start + 8:
            raise CryptoError("SKF message too short")
        first, _, length, number, total = struct.unpack_from("!BBHHH", data, start)
        if length != len(data) - start or not 1 <= number <= total:
            raise CryptoError("malformed SKF payload")
        body = data[start + 8 :]
        return number, total, first, self._decrypt(data, body, start + 8)

    def open(self, data: bytes, sk: EncryptedPayload) -> list[Payload]:
        """Verifies and decrypts; raises CryptoError on a bad ICV/tag/padding and ParseError on a
        malformed inner chain."""
        return self.open_plain(data, sk)[0]

    def open_plain(self, data: bytes, sk: EncryptedPayload) -> tuple[list[Payload], bytes]:
        """`open`, also returning the inner chain's bytes (IKE_INTERMEDIATE's IntAuth covers them)."""
        plaintext = self._decrypt(data, sk.data, len(data) - len(sk.data))
        return parse_chain(sk.first_inner, memoryview(plaintext)), plaintext

    def _decrypt(self, data: bytes, body: bytes, body_start: int) -> bytes:
        """`body` (IV, ciphertext, ICV) starts at `body_start` in `data`; returns the plaintext
        without its padding."""
        iv_size = self._cipher.iv_size
        if len(body) < iv_size + self._icv + (self._cipher.icv_size if self._cipher.aead else 1):
            raise CryptoError("SK payload too short")
        if self._icv and self._integ is not None:
            expect = self._integ.sign(self._vk, data[: len(data) - self._icv])
            if not _hmac.compare_digest(expect, data[len(data) - self._icv :]):
                raise CryptoError("integrity check failed")
        iv = body[:iv_size]
        ct = body[iv_size : len(body) - self._icv]
        plaintext = self._cipher.decrypt(self._dk, iv, ct, data[:body_start])
        if not plaintext:
            raise CryptoError("empty plaintext")
        pad = plaintext[-1]
        if pad + 1 > len(plaintext):
            raise CryptoError("pad length exceeds plaintext")
        return plaintext[: len(plaintext) - pad - 1]
