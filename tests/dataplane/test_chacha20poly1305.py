"""ChaCha20-Poly1305 in userspace ESP (RFC 7634 section 2): the RFC's ESP example (Appendix B,
values copied from the RFC, not from our output) through the receive path, sealing with the
sequence number as IV, ESN in the AAD, and round trips through EspSender/EspReceiver."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from meshsec.agent.dataplane.api import Encryption, Integrity, Unsupported
from meshsec.agent.dataplane.userspace.esp import Drop, EspReceiver, EspSender
from meshsec.agent.dataplane.userspace.mtu import Suite, inner_mtu
from meshsec.agent.dataplane.userspace.replay import ReplayWindow
from meshsec.agent.dataplane.userspace.transforms import ChaCha20Poly1305Esp, make_esp_transform
from meshsec.common.secrets import Secret

H = bytes.fromhex

# RFC 7634 Appendix B, "ESP Example": KEYMAT = 32-byte key || 4-byte salt; SPI 0x01020304,
# sequence number 5, IV 0x1011121314151617; the plaintext is an ICMP echo request plus ESP
# padding 01 02, pad length 02 and next header 04 (IPv4).
RFC_KEYMAT = H("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f" "a0a1a2a3")
RFC_SPI, RFC_SEQ = 0x01020304, 5
RFC_IV = H("1011121314151617")
RFC_INNER = H(
    "45000054a6f200004001e778c6336405c000020508005b7a3a080000553bec10"
    "000736270809" + bytes(range(0x0A, 0x38)).hex()
)
RFC_TRAILER = H("01020204")
RFC_CIPHERTEXT_AND_TAG = H(
    "24039428b97f417e3c13753a4f05087b67c352e6a7fab1b982d466ef407ae5c6"
    "14ee8099d52844eb61aa95dfab4c02f72aa71e7c4c4f64c9befe2facc638e8f3"
    "cbec163fac469b502773f6fb94e664da9165b82829f641e076aaa8266b7fb0f7"
    "b11b369907e1ad43"
)


def chacha(keymat: bytes = RFC_KEYMAT, esn: bool = False, icv_bits: int = 128) -> ChaCha20Poly1305Esp:
    t = make_esp_transform(Encryption("chacha20-poly1305", Secret(keymat), icv_bits), None, esn)
    assert isinstance(t, ChaCha20Poly1305Esp)
    return t


def rfc_packet() -> bytes:
    header = RFC_SPI.to_bytes(4, "big") + RFC_SEQ.to_bytes(4, "big")
    return header + RFC_IV + RFC_CIPHERTEXT_AND_TAG


def test_rfc7634_esp_example_is_received_and_unpadded() -> None:
    assert len(RFC_INNER) == 84
    rx = EspReceiver(chacha(), ReplayWindow(64, esn=False))
    assert rx.open(rfc_packet()) == (4, RFC_INNER)
    # The same packet again is a replay.
    assert rx.open(rfc_packet()) == Drop.REPLAY


def test_rfc7634_esp_example_fails_with_a_changed_byte_salt_or_aad() -> None:
    for index in (0, 7, 8 + 8, len(rfc_packet()) - 1):  # SPI, sequence (AAD), ciphertext, tag
        bad = bytearray(rfc_packet())
        bad[index] ^= 0x80
        assert chacha().open(bytes(bad[:8]), b"", memoryview(bytes(bad))[8:]) is None
    wrong_salt = RFC_KEYMAT[:-1] + b"\0"
    rx = EspReceiver(chacha(wrong_salt), ReplayWindow(64, esn=False))
    assert rx.open(rfc_packet()) == Drop.INTEGRITY


def test_seal_uses_the_sequence_number_as_iv_and_spi_seq_as_aad() -> None:
    t = chacha()
    header = RFC_SPI.to_bytes(4, "big") + (7).to_bytes(4, "big")
    plaintext = RFC_INNER + RFC_TRAILER
    sealed = t.seal(header, 7, b"", plaintext)
    iv = (7).to_bytes(8, "big")
    assert sealed[:16] == header + iv
    # RFC 7634 section 2: nonce = salt || IV, key = the first 32 KEYMAT bytes, ICV of 16 bytes.
    reference = ChaCha20Poly1305(RFC_KEYMAT[:32]).encrypt(RFC_KEYMAT[32:] + iv, plaintext, header)
    assert sealed[16:] == reference
    assert len(sealed) == 8 + 8 + len(plaintext) + 16
    assert t.open(header, b"", sealed[8:]) == plaintext


def test_esn_high_bits_are_authenticated_but_not_sent() -> None:
    t = chacha(esn=True)
    seq = (3 << 32) | 9
    header = RFC_SPI.to_bytes(4, "big") + (9).to_bytes(4, "big")
    sealed = t.seal(header, seq, (3).to_bytes(4, "big"), b"abcd")
    aad = RFC_SPI.to_bytes(4, "big") + (3).to_bytes(4, "big") + (9).to_bytes(4, "big")  # section 2.1
    assert sealed[16:] == ChaCha20Poly1305(RFC_KEYMAT[:32]).encrypt(RFC_KEYMAT[32:] + seq.to_bytes(8, "big"),
                                                                     b"abcd", aad)
    assert t.open(header, (2).to_bytes(4, "big"), sealed[8:]) is None
    assert t.open(header, (3).to_bytes(4, "big"), sealed[8:]) == b"abcd"


@pytest.mark.parametrize("esn", [False, True])
def test_sender_and_receiver_round_trip_with_4_byte_alignment(esn: bool) -> None:
    keymat = bytes(range(36))
    tx = EspSender(0xC0FFEE01, chacha(keymat, esn), esn)
    rx = EspReceiver(chacha(keymat, esn), ReplayWindow(1024, esn))
    for size in (0, 1, 2, 3, 64, 1399):
        payload = bytes((size + i) % 256 for i in range(size))
        packet = tx.seal(payload, 41)
        # SPI, seq, IV, then ciphertext padded to 4 bytes (a stream cipher needs no more), ICV.
        assert (len(packet) - 8 - 8 - 16) % 4 == 0 and len(packet) - 32 - size - 2 <= 3
        assert rx.open(packet) == (41, payload)
    other = EspReceiver(chacha(bytes(range(1, 37)), esn), ReplayWindow(1024, esn))
    assert other.open(tx.seal(b"secret", 4)) == Drop.INTEGRITY


def test_bad_parameters_are_rejected_with_a_message() -> None:
    with pytest.raises(ValueError, match="32 bytes plus a 4-byte salt, got 32"):
        chacha(RFC_KEYMAT[:32])
    with pytest.raises(ValueError, match="got 20"):
        chacha(RFC_KEYMAT[:20])
    with pytest.raises(Unsupported, match="128-bit ICV"):
        chacha(icv_bits=96)
    with pytest.raises(ValueError, match="AEAD"):
        make_esp_transform(Encryption("chacha20-poly1305", Secret(RFC_KEYMAT), 128),
                           Integrity("hmac-sha256", Secret(b"k" * 32), 128), False)


def test_tun_mtu_counts_iv_icv_and_4_byte_alignment() -> None:
    # 1500 - 20 (IPv4) - 8 (UDP) - 8 (ESP header) - 8 (IV) - 16 (ICV) = 1440, aligned, minus 2.
    assert inner_mtu(1500, Suite("esp", "chacha20-poly1305", None), False, True) == 1438
    assert inner_mtu(1500, Suite("esp", "chacha20-poly1305", None), False, True) == inner_mtu(
        1500, Suite("esp", "aes-gcm-16", None), False, True)
