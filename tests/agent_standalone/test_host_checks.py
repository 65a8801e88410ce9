"""A real standalone agent in a namespace whose forwarding and rp_filter sysctls would break its
site tunnel: it starts anyway and logs a WARNING naming each sysctl and the command that fixes
it; once fixed, it says nothing."""

from __future__ import annotations

from typing import Any

import pytest

from tests.harness.netns import Host, Lab
from tests.interop.meshsec_agent import MeshsecAgent

pytestmark = pytest.mark.netns

LOCAL, PEER = "198.18.97.1", "198.18.98.2"


def config(local_ts: str) -> dict[str, Any]:
    conn = {"local_addrs": [LOCAL], "remote_addrs": [PEER], "local": {"id": "a.test"},
            "remote": {"id": "b.test"}, "psk": "io-host-checks-psk", "start_action": "wait",
            "children": {"site": {"local_ts": [local_ts], "remote_ts": ["198.19.98.0/24"]}}}  # fmt: skip
    return {"agent": {"bind": [LOCAL], "dataplane": "none", "log_level": "info"}, "connections": {"b": conn}}


def gateway(lab: Lab) -> Host:
    """ESP for LOCAL arrives on to-r1, but the peer is routed through to-r2 (an asymmetric underlay)."""
    gw, r1, r2 = lab.host("gw"), lab.host("r1"), lab.host("r2")
    lab.link(gw, r1, f"{LOCAL}/24", "198.18.97.2/24")
    lab.link(gw, r2, "198.18.99.1/24", "198.18.99.2/24")
    gw.add_route(f"{PEER}/32", via="198.18.99.2")
    gw.add_loopback_address("198.19.97.1/32")
    return gw


def warnings(agent: MeshsecAgent) -> list[str]:
    agent.start()
    agent.wait_for(lambda s: s)
    assert agent.stop() == 0
    return [line for line in agent.log_text().splitlines() if "WARNING" in line and "host:" in line]


def test_gateway_with_forwarding_off_and_strict_rp_filter_is_warned(lab: Lab) -> None:
    gw = gateway(lab)
    gw.sysctl("net.ipv4.ip_forward", "0")
    gw.sysctl("net.ipv4.conf.all.rp_filter", "1")
    found = warnings(MeshsecAgent(gw, config("198.19.97.0/24"), name="off"))
    assert any("net.ipv4.ip_forward is 0" in w and "198.19.97.0/24" in w
               and "sysctl -w net.ipv4.ip_forward=1" in w for w in found), found
    assert any("net.ipv4.conf.to-r1.rp_filter is strict" in w and "leaves through to-r2" in w
               and "sysctl -w net.ipv4.conf.all.rp_filter=2 net.ipv4.conf.to-r1.rp_filter=2" in w
               for w in found), found

    # Fixed as the warnings say: nothing to say.
    gw.sysctl("net.ipv4.ip_forward", "1")
    gw.sysctl("net.ipv4.conf.all.rp_filter", "2")
    gw.sysctl("net.ipv4.conf.to-r1.rp_filter", "2")
    assert warnings(MeshsecAgent(gw, config("198.19.97.0/24"), name="fixed")) == []


def test_a_host_tunnelling_only_its_own_address_needs_no_forwarding(lab: Lab) -> None:
    gw = gateway(lab)
    gw.sysctl("net.ipv4.ip_forward", "0")
    gw.sysctl("net.ipv4.conf.all.rp_filter", "0")
    assert warnings(MeshsecAgent(gw, config("198.19.97.1/32"))) == []
