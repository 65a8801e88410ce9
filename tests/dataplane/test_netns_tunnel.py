"""The userspace data plane on both sides of two namespace "sites": ping and a checksum-verified
TCP transfer cross the tunnel, the underlay carries only ESP/AH/UDP-4500 without the plaintext
marker, and replayed or tampered packets are dropped and counted while traffic continues."""

from __future__ import annotations

import pytest

from tests.dataplane.sites import (
    INNER,
    MARKER,
    UNDERLAY,
    Capture,
    Suite,
    build_tunnel,
    classify,
    inject,
    ip_payload,
    ping_ok,
    sa_key,
    tcp_transfer,
)
from tests.harness.netns import Lab

pytestmark = [pytest.mark.netns, pytest.mark.slow]

ESP_SUITES = {
    "gcm-esp": Suite("aes-gcm-16"),
    "cbc-sha256-esp": Suite("aes-cbc", "hmac-sha256"),
    "gcm-udp": Suite("aes-gcm-16", encap=True),
    "cbc-sha512-udp-noesn": Suite("aes-cbc", "hmac-sha512", encap=True, esn=False),
}


@pytest.mark.parametrize("name", list(ESP_SUITES))
def test_tunnel_ping_tcp_and_wire_is_encrypted(lab: Lab, name: str) -> None:
    suite = ESP_SUITES[name]
    t = build_tunnel(lab, suite)
    cap = Capture(lab, t.b, t.veth_b)
    assert ping_ok(t.a, INNER[1], INNER[0], 5)
    assert ping_ok(t.b, INNER[0], INNER[1], 2)
    sent, received = tcp_transfer(lab, t.a, t.b, INNER[0], INNER[1], 2_000_000)
    assert sent == received and sent.startswith("2000000 ")
    frames = cap.stop()
    kinds = {classify(f) for f in frames}
    wanted = "udp4500" if suite.encap else "esp"
    assert wanted in kinds
    assert kinds <= {wanted, "arp", "ipv6-control"}, kinds
    assert not any(MARKER in f for f in frames)
    # Counters on both ends agree with what crossed; nothing was dropped.
    c_out = t.dp_a.call("counters", sa=sa_key(t.sa_ab))["counters"]
    c_in = t.dp_b.call("counters", sa=sa_key(t.sa_ab))["counters"]
    assert c_out["packets"] == c_in["packets"] > 1000
    assert c_out["bytes"] == c_in["bytes"] > 2_000_000
    drops = t.dp_b.call("drops")["drops"]
    assert drops["integrity"] == drops["replay"] == drops["internal_error"] == 0


@pytest.mark.parametrize("encap", [False, True], ids=["esp", "udp"])
def test_replayed_and_tampered_packets_are_dropped_and_counted(lab: Lab, encap: bool) -> None:
    t = build_tunnel(lab, Suite("aes-gcm-16", encap=encap))
    cap = Capture(lab, t.b, t.veth_b)
    assert ping_ok(t.a, INNER[1], INNER[0], 3)
    frames = cap.stop()
    kind = "udp4500" if encap else "esp"
    to_b = [f for f in frames if classify(f) == kind and f[14 + 16 : 14 + 20] == bytes([198, 18, 0, 2])]
    assert to_b, [classify(f) for f in frames]
    esp = ip_payload(to_b[0])
    if encap:
        esp = esp[8:]  # strip the UDP header; inject() sends a fresh datagram
    before = t.dp_b.call("counters", sa=sa_key(t.sa_ab))["counters"]
    inject(t.a, "udp" if encap else "esp", UNDERLAY[1], esp)  # replay
    inject(t.a, "udp" if encap else "esp", UNDERLAY[1], esp)
    tampered = bytearray(esp)
    tampered[-5] ^= 0x40
    tampered[4:8] = (1_000).to_bytes(4, "big")  # a fresh sequence number: only the ICV can catch it
    inject(t.a, "udp" if encap else "esp", UNDERLAY[1], bytes(tampered))
    inject(t.a, "udp" if encap else "esp", UNDERLAY[1], b"\x00\x00\x10\x01" + bytes(3))  # short
    inject(t.a, "udp" if encap else "esp", UNDERLAY[1], b"\x99\x99\x99\x99" + bytes(60))  # unknown SPI
    assert ping_ok(t.a, INNER[1], INNER[0], 3)  # traffic continues
    after = t.dp_b.call("counters", sa=sa_key(t.sa_ab))["counters"]
    assert after["replay_dropped"] - before["replay_dropped"] == 2
    assert after["integrity_failed"] - before["integrity_failed"] == 1
    assert after["packets"] - before["packets"] == 3
    drops = t.dp_b.call("drops")["drops"]
    assert drops["unknown_spi"] == 1 and drops["malformed"] >= 1 and drops["internal_error"] == 0


def test_transport_mode_esp(lab: Lab) -> None:
    t = build_tunnel(lab, Suite("aes-gcm-16", mode="transport"))
    cap = Capture(lab, t.b, t.veth_b)
    assert ping_ok(t.a, UNDERLAY[1], UNDERLAY[0], 3)
    sent, received = tcp_transfer(lab, t.a, t.b, UNDERLAY[0], UNDERLAY[1], 300_000)
    assert sent == received
    frames = cap.stop()
    assert {classify(f) for f in frames} <= {"esp", "arp", "ipv6-control"}
    assert not any(MARKER in f for f in frames)
    assert t.dp_b.call("counters", sa=sa_key(t.sa_ab))["counters"]["packets"] > 100


@pytest.mark.parametrize("mode", ["tunnel", "transport"])
def test_ah(lab: Lab, mode: str) -> None:
    t = build_tunnel(lab, Suite(None, "hmac-sha256", protocol="ah", mode=mode))  # type: ignore[arg-type]
    src, dst = INNER if mode == "tunnel" else UNDERLAY
    cap = Capture(lab, t.b, t.veth_b)
    assert ping_ok(t.a, dst, src, 3)
    sent, received = tcp_transfer(lab, t.a, t.b, src, dst, 200_000)
    assert sent == received
    frames = cap.stop()
    kinds = {classify(f) for f in frames}
    assert "ah" in kinds and kinds <= {"ah", "arp", "ipv6-control"}, kinds
    assert t.dp_b.call("counters", sa=sa_key(t.sa_ab))["counters"]["integrity_failed"] == 0
