"""RFC 9370 key derivation with additional key exchanges and RFC 9242 IntAuth, against an
independent computation written here with hashlib/hmac (not agent/ike/crypto.py's prf+)."""

from __future__ import annotations

import hashlib
import hmac
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from meshsec.agent.ike.constants import IKE_HEADER_LEN
from meshsec.agent.ike.crypto import PRFS, AesGcm16
from meshsec.agent.ike.intauth import intauth_octets, intauth_step
from meshsec.agent.ike.keys import (
    derive_child_keys,
    derive_ike_keys,
    rekey_skeyseed,
    update_ike_keys,
)

SHA256_PRF = 5


def _prf(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def _prf_plus(key: bytes, seed: bytes, length: int) -> bytes:
    out, t, n = b"", b"", 1
    while len(out) < length:
        t = _prf(key, t + seed + bytes([n]))
        out += t
        n += 1
    return out[:length]


def _split_ike(km: bytes, e: int) -> list[bytes]:
    # AEAD: SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr with empty SK_a (RFC 7296 2.14).
    sizes = [32, 0, 0, e, e, 32, 32]
    parts, off = [], 0
    for n in sizes:
        parts.append(km[off : off + n])
        off += n
    return parts


nonce = st.binary(min_size=16, max_size=64)
spi = st.binary(min_size=8, max_size=8)
secret = st.binary(min_size=32, max_size=128)


@settings(max_examples=40, deadline=None)
@given(ni=nonce, nr=nonce, spi_i=spi, spi_r=spi, sk0=secret, extra=st.lists(secret, min_size=1, max_size=4))
def test_ike_intermediate_chain(
    ni: bytes, nr: bytes, spi_i: bytes, spi_r: bytes, sk0: bytes, extra: list[bytes]
) -> None:
    prf, cipher = PRFS[SHA256_PRF](), AesGcm16(256)
    e = cipher.key_size
    keys = derive_ike_keys(prf, cipher, None, ni, nr, sk0, spi_i, spi_r)
    # Independent: SKEYSEED(0) = prf(Ni | Nr, SK(0)), then for every n
    # SKEYSEED(n) = prf(SK_d(n-1), SK(n) | Ni | Nr), SK_*(n) = prf+(SKEYSEED(n), Ni | Nr | SPIi | SPIr).
    expect = _split_ike(_prf_plus(_prf(ni + nr, sk0), ni + nr + spi_i + spi_r, 96 + 2 * e), e)
    for sk_n in extra:
        keys = update_ike_keys(prf, cipher, None, keys, sk_n, ni, nr, spi_i, spi_r)
        seed = _prf(expect[0], sk_n + ni + nr)
        expect = _split_ike(_prf_plus(seed, ni + nr + spi_i + spi_r, 96 + 2 * e), e)
    got = [keys.sk_d, keys.sk_ai, keys.sk_ar, keys.sk_ei, keys.sk_er, keys.sk_pi, keys.sk_pr]
    assert [k.reveal() for k in got] == expect


@settings(max_examples=40, deadline=None)
@given(sk_d=secret, ni=nonce, nr=nonce, sk0=secret, extra=st.lists(secret, max_size=4))
def test_ike_rekey_skeyseed_with_followup_key_exchanges(
    sk_d: bytes, ni: bytes, nr: bytes, sk0: bytes, extra: list[bytes]
) -> None:
    # SKEYSEED = prf(SK_d, SK(0) | Ni | Nr | SK(1) | ... | SK(n))  (RFC 9370 2.2.4)
    want = _prf(sk_d, sk0 + ni + nr + b"".join(extra))
    assert rekey_skeyseed(PRFS[SHA256_PRF](), sk_d, ni, nr, sk0, tuple(extra)) == want


@settings(max_examples=40, deadline=None)
@given(sk_d=secret, ni=nonce, nr=nonce, sk0=st.binary(max_size=64), extra=st.lists(secret, max_size=4))
def test_child_keymat_with_followup_key_exchanges(
    sk_d: bytes, ni: bytes, nr: bytes, sk0: bytes, extra: list[bytes]
) -> None:
    # KEYMAT = prf+(SK_d, SK(0) | Ni | Nr | SK(1) | ... | SK(n)); AES-256-GCM: 36 bytes a side.
    keys = derive_child_keys(PRFS[SHA256_PRF](), sk_d, ni, nr, 36, None, sk0, tuple(extra))
    km = _prf_plus(sk_d, sk0 + ni + nr + b"".join(extra), 72)
    assert keys.initiator_to_responder.encr.reveal() == km[:36]
    assert keys.responder_to_initiator.encr.reveal() == km[36:]


def test_without_additional_exchanges_the_rfc7296_values_stay() -> None:
    prf = PRFS[SHA256_PRF]()
    ni, nr, sk_d, g = b"n" * 32, b"m" * 32, b"d" * 32, b"g" * 32
    assert rekey_skeyseed(prf, sk_d, ni, nr, g) == _prf(sk_d, g + ni + nr)
    plain = derive_child_keys(prf, sk_d, ni, nr, 36, None, g)
    assert plain.initiator_to_responder.encr.reveal() == _prf_plus(sk_d, g + ni + nr, 72)[:36]


def _header(length: int, mid: int) -> bytes:
    return b"I" * 8 + b"R" * 8 + bytes([46, 0x20, 43, 0x08]) + struct.pack("!II", mid, length)


@settings(max_examples=40, deadline=None)
@given(
    sk_pi=secret,
    inners=st.lists(st.binary(min_size=1, max_size=1200), min_size=1, max_size=3),
    wire_len=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_intauth_chain_over_adjusted_messages(sk_pi: bytes, inners: list[bytes], wire_len: int) -> None:
    prf = PRFS[SHA256_PRF]()
    ours, theirs = b"", b""
    for n, inner in enumerate(inners, start=1):
        # The on-wire Length (fragment or whole, with IV/ICV) must not matter.
        ours = intauth_step(prf, sk_pi, ours, _header(wire_len, n), b"", 34, inner)
        a = _header(IKE_HEADER_LEN + 4 + len(inner), n) + struct.pack("!BBH", 34, 0, 4 + len(inner))
        theirs = _prf(sk_pi, theirs + a + inner)
    assert ours == theirs


def test_intauth_octets() -> None:
    assert intauth_octets(b"", b"", 3) == b""
    assert intauth_octets(b"\xaa", b"\xbb", 2) == b"\xaa\xbb\x00\x00\x00\x02"
