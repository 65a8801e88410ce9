"""TUN MTU formula (see mtu.py / docs/dataplane.md), checked against hand-computed overheads."""

from __future__ import annotations

import pytest

from meshsec.agent.dataplane.userspace.mtu import WORST_CASE_SUITES, Suite, inner_mtu, mss_for, tun_mtu


@pytest.mark.parametrize(
    ("suite", "ipv6", "encap", "expected"),
    [
        # 1500 - 20 IPv4 - 8 ESP - 8 IV - 16 ICV = 1448 -> multiple of 4 -> minus 2 trailer bytes
        (Suite("esp", "aes-gcm-16", None), False, False, 1446),
        # ... plus 8 UDP: 1440 - 2
        (Suite("esp", "aes-gcm-16", None), False, True, 1438),
        # 1500 - 20 - 8 - 16 IV - 16 ICV = 1440 = 90 blocks -> 1438
        (Suite("esp", "aes-cbc", "hmac-sha256"), False, False, 1438),
        # 1500 - 40 - 8 UDP - 8 - 16 - 32 = 1396 -> 87 blocks = 1392 -> 1390
        (Suite("esp", "aes-cbc", "hmac-sha512"), True, True, 1390),
        # AH IPv4: 1500 - 20 - (12 + 16) = 1452; IPv6 with SHA-384: 1500 - 40 - 40 = 1420
        (Suite("ah", None, "hmac-sha256"), False, False, 1452),
        (Suite("ah", None, "hmac-sha384"), True, False, 1420),
    ],
)
def test_inner_mtu(suite: Suite, ipv6: bool, encap: bool, expected: int) -> None:
    assert inner_mtu(1500, suite, ipv6, encap) == expected


def test_worst_case_and_mss() -> None:
    assert tun_mtu(1500, WORST_CASE_SUITES) == 1390
    assert tun_mtu(1500, (Suite("esp", "aes-gcm-16", None),), ipv6_outer=False, udp_encap=False) == 1446
    assert mss_for(1390) == (1350, 1330)


def test_packet_of_exactly_the_mtu_fits() -> None:
    import os

    from meshsec.agent.dataplane.api import Encryption, Integrity
    from meshsec.agent.dataplane.userspace.esp import EspSender
    from meshsec.agent.dataplane.userspace.transforms import make_esp_transform
    from meshsec.common.secrets import Secret

    enc = Encryption("aes-cbc", Secret(os.urandom(16)))
    integ = Integrity("hmac-sha512", Secret(os.urandom(64)), 256)
    tx = EspSender(1, make_esp_transform(enc, integ, True), True)
    m = inner_mtu(1500, Suite("esp", "aes-cbc", "hmac-sha512"), True, True)
    assert 1500 - 16 < 40 + 8 + len(tx.seal(bytes(m), 4)) <= 1500  # within one cipher block
    assert 40 + 8 + len(tx.seal(bytes(m + 1), 4)) > 1500
