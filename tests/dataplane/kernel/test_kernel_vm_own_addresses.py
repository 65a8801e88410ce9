"""Tunnels whose selectors hold the peers' own addresses (node-to-node meshes: the node's address
and its podCIDR), with IKE between those same addresses: each data plane must keep the agent's IKE
sockets out of its own policies (`DataPlane.bypass_socket`), or the responder's first CHILD_SA
captures its IKE_AUTH response and the initiator never gets it.

Two `meshsec-agent --config` processes with `dataplane: auto`: in the qemu kernel lane that is the
kernel's XFRM (per-socket policy bypass, IP_XFRM_POLICY), on the host kernel (no ESP) the userspace
data plane (SO_MARK past the TUN table). Plain ESP with IKE on 500, and forced ESP-in-UDP with IKE
and ESP sharing 4500. Then ping between the underlay addresses and between the inner ones, and the
CHILD_SA's counters show both went through the tunnel.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.dataplane.kernel.conftest import IN_LANE
from tests.dataplane.kernel.test_kernel_vm_agent import SLOW, child_of, ike_sa, spis, xfrm_states
from tests.harness.netns import Host, Lab
from tests.interop.meshsec_agent import MeshsecAgent, Status

PSK = "kv-own-address-psk-never-logged"
OUTER = {"a": "198.18.92.1", "b": "198.18.92.2"}
INNER = {"a": "198.19.92.1", "b": "198.19.92.2"}
NAME = "kv-node"


@pytest.fixture
def netns_prefix() -> str:
    return "ko-"


def config(me: str, peer: str, *, initiate: bool, encap: bool) -> dict[str, Any]:
    child = {"local_ts": [f"{OUTER[me]}/32", f"{INNER[me]}/32"],
             "remote_ts": [f"{OUTER[peer]}/32", f"{INNER[peer]}/32"], "esp_proposals": ["aes256gcm16"]}
    connection = {"local_addrs": [OUTER[me]], "remote_addrs": [OUTER[peer]],
                  "local": {"id": f"{me}.node.test"}, "remote": {"id": f"{peer}.node.test"},
                  "psk": PSK, "proposals": ["aes256gcm16-prfsha256-x25519"],
                  "start_action": "initiate" if initiate else "wait", "encap": encap and initiate,
                  "children": {"net": child}}  # fmt: skip
    return {"agent": {"bind": [OUTER[me]], "dataplane": "auto", "log_level": "info"},
            "connections": {NAME: connection}}


def established(status: Status) -> bool:
    return any(sa["name"] == NAME and sa["state"] == "ESTABLISHED" and sa["child_sas"]
               and all(c["state"] == "INSTALLED" for c in sa["child_sas"]) for sa in status["ike_sas"])


def packets(agent: MeshsecAgent) -> tuple[int, int]:
    counters = child_of(agent.status(), NAME)["counters"] or {}
    return int(counters.get("packets_out", 0)), int(counters.get("packets_in", 0))


def carried(status: Status, packets_out: int, packets_in: int) -> bool:
    counters = child_of(status, NAME)["counters"] or {}
    return counters.get("packets_out", 0) >= packets_out and counters.get("packets_in", 0) >= packets_in


def run(lab: Lab, encap: bool, backend: str) -> None:
    ha, hb = lab.host("a"), lab.host("b")
    lab.link(ha, hb, f"{OUTER['a']}/24", f"{OUTER['b']}/24")
    for host, me in ((ha, "a"), (hb, "b")):
        host.add_loopback_address(f"{INNER[me]}/32")
    b = MeshsecAgent(hb, config("b", "a", initiate=False, encap=encap))
    a = MeshsecAgent(ha, config("a", "b", initiate=True, encap=encap))
    with ThreadPoolExecutor(1) as pool:
        b_started = pool.submit(b.start, SLOW)
        a.start(SLOW)
        b_started.result()
    for agent in (a, b):
        agent.wait_for(lambda s: established(s) or None, SLOW)
    sa, sb = a.status(), b.status()
    assert sa["dataplane"] == sb["dataplane"] == backend, a.log_text()[-3000:]
    port = "4500" if encap else "500"
    assert ike_sa(sa, NAME)["local"] == f"{OUTER['a']}:{port}"
    assert child_of(sa, NAME)["udp_encap"] is encap and child_of(sb, NAME)["udp_encap"] is encap
    if backend == "kernel":  # the CHILD_SA's pair is in the kernel, with algorithms (not larval)
        installed = {s.spi for s in xfrm_states(ha) if s.marked and s.aead is not None}
        assert set(spis(child_of(sa, NAME))) <= installed, (installed, child_of(sa, NAME))

    def ping(host: Host, src: dict[str, str], dst: dict[str, str], peer: str) -> int:
        me = "a" if peer == "b" else "b"
        return host.ping(dst[peer], src=src[me], count=3, interval=0.2, wait=5).received

    for addresses in (OUTER, INNER):  # the peer's own address is in the tunnel too
        before = packets(a), packets(b)
        assert ping(ha, addresses, addresses, "b") == 3, addresses
        assert ping(hb, addresses, addresses, "a") == 3, addresses
        for agent, (out0, in0) in zip((a, b), before, strict=True):
            # 3 requests and 3 replies each way, all through the CHILD_SA (nothing went around
            # it); the status shows counters as the agent last read them, so poll.
            agent.wait_for(lambda s, out0=out0, in0=in0: carried(s, out0 + 6, in0 + 6), SLOW)
    # IKE still flows after the CHILD_SA is up: the DELETE reaches the peer in clear.
    assert a.stop() == 0
    b.wait_for(lambda s: not s["ike_sas"] or None, SLOW)
    assert b.stop() == 0
    for agent in (a, b):
        assert PSK not in agent.log_text()


@pytest.mark.kernelvm
@pytest.mark.netns
@pytest.mark.timeout(300)
@pytest.mark.parametrize("encap", [False, True], ids=["esp", "udp"])
def test_kernel_tunnel_between_the_peers_own_addresses(lab: Lab, encap: bool) -> None:
    run(lab, encap, "kernel")


@pytest.mark.netns
@pytest.mark.timeout(90)
@pytest.mark.skipif(IN_LANE, reason="the lane's kernel has ESP: auto picks the kernel there")
@pytest.mark.parametrize("encap", [False, True], ids=["esp", "udp"])
def test_userspace_tunnel_between_the_peers_own_addresses(lab: Lab, encap: bool) -> None:
    run(lab, encap, "userspace")
