"""Known-answer tests for the ESP transforms: McGrew-Viega GCM test cases, RFC 3602 AES-CBC,
RFC 4868 HMAC-SHA2 with truncation."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from meshsec.agent.dataplane.api import Encryption, Integrity, Unsupported
from meshsec.agent.dataplane.userspace.transforms import (
    AesCbcHmac,
    AesGcm16,
    IntegrityAlgorithm,
    make_esp_transform,
)
from meshsec.common.secrets import Secret

H = bytes.fromhex

# McGrew & Viega, "The Galois/Counter Mode of Operation", test cases 3 and 4 (AES-128).
MV_KEY = H("feffe9928665731c6d6a8f9467308308")
MV_IV = H("cafebabefacedbaddecaf888")
MV_P = H(
    "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
    "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255"
)
MV_C = H(
    "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e"
    "21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091473f5985"
)
MV_T3 = H("4d5c2af327cd64a62cf35abd2ba6fab4")
MV_A4 = H("feedfacedeadbeeffeedfacedeadbeefabaddad2")
MV_T4 = H("5bc94fbc3221a5db94fae95ae7121a47")


def body_of(header: bytes, packet: bytes) -> bytes:
    """A sealed ESP packet starts with the header it was given; the rest is IV || ct || ICV."""
    assert packet[:8] == header
    return packet[8:]


def _gcm(key: bytes, salt: bytes, esn: bool = False) -> AesGcm16:
    return AesGcm16(Encryption("aes-gcm-16", Secret(key + salt), 128), esn)


@pytest.mark.parametrize(
    ("plaintext", "aad", "expected"),
    [(MV_P, b"", MV_C + MV_T3), (MV_P[:60], MV_A4, MV_C[:60] + MV_T4)],
    ids=["mv-tc3", "mv-tc4"],
)
def test_gcm_mcgrew_viega(plaintext: bytes, aad: bytes, expected: bytes) -> None:
    # RFC 4106: the last 4 key bytes are the salt, which forms the first 4 nonce bytes.
    t = _gcm(MV_KEY, MV_IV[:4])
    assert t._aead.encrypt(t._salt + MV_IV[4:], plaintext, aad) == expected


def test_gcm_esp_iv_is_sequence_number_and_aad_is_spi_seq() -> None:
    t = _gcm(MV_KEY, MV_IV[:4])
    header = H("0000432100000007")
    sealed = body_of(header, t.seal(header, 7, b"", MV_P[:60]))
    assert sealed[:8] == (7).to_bytes(8, "big")
    assert sealed[8:] == t._aead.encrypt(MV_IV[:4] + sealed[:8], MV_P[:60], header)
    assert t.open(header, b"", sealed) == MV_P[:60]


def test_gcm_esn_puts_high_bits_in_aad() -> None:
    t = _gcm(MV_KEY, MV_IV[:4], esn=True)
    header = H("0000432100000007")
    seq = (5 << 32) | 7
    sealed = body_of(header, t.seal(header, seq, (5).to_bytes(4, "big"), b"abcd"))
    aad = H("00004321") + H("00000005") + H("00000007")  # RFC 4106 section 5
    assert sealed[8:] == t._aead.encrypt(MV_IV[:4] + seq.to_bytes(8, "big"), b"abcd", aad)
    assert t.open(header, (4).to_bytes(4, "big"), sealed) is None
    assert t.open(header, (5).to_bytes(4, "big"), sealed) == b"abcd"


# RFC 3602 section 4, cases 1 and 2.
@pytest.mark.parametrize(
    ("key", "iv", "plaintext", "ciphertext"),
    [
        (H("06a9214036b8a15b512e03d534120006"), H("3dafba429d9eb430b422da802c9fac41"),
         b"Single block msg", H("e353779c1079aeb82708942dbe77181a")),
        (H("c286696d887c9aa0611bbb3e2025a45a"), H("562e17996d093d28ddb3ba695a2e6f58"),
         bytes(range(32)), H("d296cd94c2cccf8a3a863028b5e1dc0a7586602d253cfff91b8266bea6d61ab1")),
    ],
    ids=["rfc3602-case1", "rfc3602-case2"],
)
def test_aes_cbc_rfc3602(key: bytes, iv: bytes, plaintext: bytes, ciphertext: bytes) -> None:
    integ = Integrity("hmac-sha256", Secret(b"\x0b" * 32), 128)
    # The transform's first IV is E_K(R xor 0^128) for the random block R (see AesCbcHmac); hand
    # it R = D_K(iv) so the RFC's IV comes out and the RFC's ciphertext must follow.
    r = Cipher(algorithms.AES(key), modes.ECB()).decryptor().update(iv)
    t = AesCbcHmac(Encryption("aes-cbc", Secret(key)), integ, False, lambda n: r * (n // 16))
    header = H("0000100000000001")
    sealed = body_of(header, t.seal(header, 1, b"", plaintext))
    assert sealed[:16] == iv
    assert sealed[16:-16] == ciphertext
    # ICV = HMAC-SHA-256-128 over SPI | seq | IV | ciphertext (RFC 4303 section 3.3.2.1)
    assert sealed[-16:] == IntegrityAlgorithm(integ).icv(header + iv + ciphertext)
    assert t.open(header, b"", sealed) == plaintext
    tampered = bytearray(sealed)
    tampered[20] ^= 1
    assert t.open(header, b"", bytes(tampered)) is None
    # Next packet: a different, unpredictable IV; still decrypts on its own.
    second = body_of(header, t.seal(header, 2, b"", plaintext))
    assert second[:16] != iv
    assert Cipher(algorithms.AES(key), modes.CBC(second[:16])).decryptor().update(second[16:-16]) == plaintext
    assert t.open(header, b"", second) == plaintext


# RFC 4868 section 2.7.2.1 authentication test vectors (key = 0x0b repeated, data "Hi There").
@pytest.mark.parametrize(
    ("name", "key_len", "bits", "expected"),
    [
        ("hmac-sha256", 32, 128, "198a607eb44bfbc69903a0f1cf2bbdc5"),
        ("hmac-sha384", 48, 192, "b6a8d5636f5c6a7224f9977dcf7ee6c7fb6d0c48cbdee973"),
        ("hmac-sha512", 64, 256, "637edc6e01dce7e6742a99451aae82df23da3e92439e590e43e761b33e910fb8"),
    ],
)
def test_hmac_sha2_rfc4868(name: str, key_len: int, bits: int, expected: str) -> None:
    alg = IntegrityAlgorithm(Integrity(name, Secret(b"\x0b" * key_len), bits))
    assert alg.icv(b"Hi ", b"There") == H(expected)


def test_bad_parameters_are_rejected_with_a_message() -> None:
    with pytest.raises(ValueError, match="truncation is 128"):
        IntegrityAlgorithm(Integrity("hmac-sha256", Secret(b"k" * 32), 96))
    with pytest.raises(ValueError, match="key must be 32 bytes"):
        IntegrityAlgorithm(Integrity("hmac-sha256", Secret(b"k" * 20), 128))
    with pytest.raises(Unsupported, match="hmac-md5"):
        IntegrityAlgorithm(Integrity("hmac-md5", Secret(b"k" * 16), 96))
    with pytest.raises(ValueError, match="salt"):
        make_esp_transform(Encryption("aes-gcm-16", Secret(b"k" * 16), 128), None, True)
    with pytest.raises(ValueError, match="AEAD"):
        make_esp_transform(Encryption("aes-gcm-16", Secret(b"k" * 20), 128),
                           Integrity("hmac-sha256", Secret(b"k" * 32), 128), True)
    with pytest.raises(ValueError, match="needs an integrity"):
        make_esp_transform(Encryption("aes-cbc", Secret(b"k" * 16)), None, True)
