"""Traffic through a tunnel between meshsec's userspace data plane (ESP-in-UDP over TUN) and
strongSwan's kernel-libipsec: ping and TCP, meshsec in both roles (issue 4's interop check), with
AES-GCM and with ChaCha20-Poly1305 (RFC 7634).
Both ends' packet counters must move, so the traffic provably went through the CHILD_SA."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from tests.harness.netns import Lab
from tests.harness.strongswan import CharonFactory, IkeSa
from tests.interop.meshsec_agent import MeshsecAgent
from tests.interop.topology import (
    MS_INNER,
    SUITES,
    SW_INNER,
    build,
    meshsec_config,
    start_both,
    swan_connection,
)

TCP_CHECK = Path(__file__).with_name("tcp_check.py")
TCP_BYTES = 2 * 1024 * 1024

pytestmark = [pytest.mark.netns, pytest.mark.strongswan, pytest.mark.timeout(120)]


def _swan_child(sas: list[IkeSa]) -> Any:
    for sa in sas:
        child = sa.child("net")
        if sa.state == "ESTABLISHED" and child is not None and child.state == "INSTALLED":
            return child
    return None


def _ms_counters(agent: MeshsecAgent) -> dict[str, int]:
    sa = agent.established("peer")
    assert sa is not None
    counters = sa["child_sas"][0]["counters"]
    assert counters is not None
    return dict(counters)


@pytest.mark.parametrize("suite", ["gcm-x25519", "chapoly-x25519"])
@pytest.mark.parametrize("role", ["initiator", "responder"])
def test_ping_and_tcp_through_tunnel(lab: Lab, charons: CharonFactory, role: str, suite: str) -> None:
    ike, esp, _, esp_alg = SUITES[suite]
    pair = build(lab)
    start = "initiate" if role == "initiator" else "wait"
    config = meshsec_config(ike, esp, start_action=start, dataplane="userspace")
    sw, agent = start_both(charons, pair, swan_connection(ike, esp), config, role)
    sw.wait_for(_swan_child)

    ping = pair.ms.ping(SW_INNER, src=MS_INNER, count=5, interval=0.05)
    assert ping.ok, ping.output
    back = pair.sw.ping(MS_INNER, src=SW_INNER, count=5, interval=0.05)
    assert back.ok, back.output

    # TCP: 2 MiB from meshsec's side, the SHA-256 of what arrived comes back.
    server = pair.sw.popen(
        [sys.executable, str(TCP_CHECK), "serve", SW_INNER, "5201"], log=lab.workdir / "tcp.log"
    )
    sent = pair.ms.run([sys.executable, str(TCP_CHECK), "send", SW_INNER, "5201", MS_INNER, str(TCP_BYTES)],
                       check=False, timeout=90)  # fmt: skip
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert server.wait(timeout=10) == 0

    ms = _ms_counters(agent)
    sw_child = sw.wait_for(_swan_child)
    assert sw_child.encr_alg == esp_alg["encr_alg"]  # the suite really is the one negotiated
    # 10 echo requests/replies plus >2 MiB of TCP in both directions' counters.
    assert ms["packets_out"] >= 10 and ms["packets_in"] >= 10
    assert ms["bytes_out"] >= TCP_BYTES
    assert sw_child.bytes_in >= TCP_BYTES
    assert sw_child.packets_out >= 10
