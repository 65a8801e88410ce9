"""Hand-checked ESP packets (RFC 4303): SPI, sequence number, IV, padding, pad length, next
header and ICV, built by EspSender and checked byte by byte, then parsed by EspReceiver."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from meshsec.agent.dataplane.api import Encryption, Integrity
from meshsec.agent.dataplane.userspace.esp import Drop, EspReceiver, EspSender, SequenceExhausted
from meshsec.agent.dataplane.userspace.replay import ReplayWindow
from meshsec.agent.dataplane.userspace.transforms import make_esp_transform
from meshsec.common.secrets import Secret

KEY = bytes(range(16))
SALT = b"\xa1\xb2\xc3\xd4"
AUTH = bytes(range(100, 132))
IV = bytes(range(200, 216))


def gcm_pair(esn: bool) -> tuple[EspSender, EspReceiver]:
    enc = Encryption("aes-gcm-16", Secret(KEY + SALT), 128)
    return (EspSender(0x12345678, make_esp_transform(enc, None, esn), esn),
            EspReceiver(make_esp_transform(enc, None, esn), ReplayWindow(1024, esn)))


def cbc_pair(esn: bool) -> tuple[EspSender, EspReceiver]:
    enc = Encryption("aes-cbc", Secret(KEY))
    integ = Integrity("hmac-sha256", Secret(AUTH), 128)
    r = Cipher(algorithms.AES(KEY), modes.ECB()).decryptor().update(IV)  # first wire IV = IV
    return (EspSender(0x12345678, make_esp_transform(enc, integ, esn, lambda n: r * (n // 16)), esn),
            EspReceiver(make_esp_transform(enc, integ, esn), ReplayWindow(1024, esn)))


def test_gcm_packet_layout() -> None:
    tx, rx = gcm_pair(esn=False)
    payload = b"\x45" + bytes(20)  # 21 bytes: 21 + 2 trailer -> pad 1 to reach a 4-byte multiple
    pkt = tx.seal(payload, 4)
    assert pkt[:4] == bytes.fromhex("12345678")
    assert pkt[4:8] == bytes.fromhex("00000001")
    assert pkt[8:16] == bytes.fromhex("0000000000000001")  # explicit IV = sequence number
    plaintext = payload + b"\x01" + b"\x01" + b"\x04"  # padding 01, pad length 1, next header 4
    expected = AESGCM(KEY).encrypt(SALT + pkt[8:16], plaintext, pkt[:8])
    assert pkt[16:] == expected
    assert len(pkt) == 8 + 8 + 24 + 16
    assert rx.open(pkt) == (4, payload)
    assert tx.seal(payload, 4)[4:8] == bytes.fromhex("00000002")


def test_cbc_hmac_packet_layout_with_esn() -> None:
    tx, rx = cbc_pair(esn=True)
    tx.seq = (3 << 32) | 0xFFFFFFFF
    payload = bytes(range(30))  # 30 + 2 = 32: no padding
    pkt = tx.seal(payload, 41)
    assert pkt[4:8] == bytes.fromhex("00000000")  # low 32 bits of 4 << 32 on the wire
    assert pkt[8:24] == IV
    ct = pkt[24:-16]
    pt = Cipher(algorithms.AES(KEY), modes.CBC(IV)).decryptor().update(ct)
    assert pt == payload + b"\x00" + b"\x29"  # pad length 0, next header 41
    # ICV covers SPI..ciphertext then the implicit high sequence bits (RFC 4303 section 2.2.1).
    icv = hmac.new(AUTH, pkt[:-16] + (4).to_bytes(4, "big"), hashlib.sha256).digest()[:16]
    assert pkt[-16:] == icv
    rx.window.top = (3 << 32) | 0xFFFFFFF0
    assert rx.open(pkt) == (41, payload)
    assert rx.window.top == 4 << 32


def test_padding_is_monotonic_and_checked() -> None:
    tx, rx = cbc_pair(esn=False)
    pkt = tx.seal(b"x", 6)  # 1 + 2 -> 13 bytes of padding 1..13
    pt = Cipher(algorithms.AES(KEY), modes.CBC(IV)).decryptor().update(pkt[24:-16])
    assert pt == b"x" + bytes(range(1, 14)) + b"\x0d\x06"
    # Re-encrypt with broken padding but a valid ICV: dropped as BAD_PADDING, not delivered.
    bad = b"x" + bytes(range(1, 13)) + b"\x00" + b"\x0d\x06"
    ct = Cipher(algorithms.AES(KEY), modes.CBC(IV)).encryptor().update(bad)
    body = pkt[:8] + IV + ct
    forged = body + hmac.new(AUTH, body, hashlib.sha256).digest()[:16]
    assert rx.open(forged) == Drop.BAD_PADDING


@pytest.mark.parametrize("mk", [gcm_pair, cbc_pair])
def test_hostile_packets_are_classified(mk: object) -> None:
    tx, rx = mk(esn=True)  # type: ignore[operator]
    pkt = tx.seal(b"hello world", 17)
    assert rx.open(pkt[:20]) == Drop.MALFORMED
    tampered = bytearray(pkt)
    tampered[-1] ^= 0x80
    assert rx.open(bytes(tampered)) == Drop.INTEGRITY
    assert rx.window.top == 0  # a forged packet does not move the window
    assert rx.open(pkt) == (17, b"hello world")
    assert rx.open(pkt) == Drop.REPLAY


def test_sequence_number_never_cycles() -> None:
    tx, _ = gcm_pair(esn=False)
    tx.seq = (1 << 32) - 2
    tx.seal(b"a", 4)
    with pytest.raises(SequenceExhausted):
        tx.seal(b"a", 4)
