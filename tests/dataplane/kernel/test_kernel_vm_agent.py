"""The agent itself drives the kernel data plane: two `meshsec-agent --config` processes with
`dataplane: auto` in two namespaces negotiate IKEv2 (PSK) and their CHILD_SAs carry ping through
the kernel's ESP. Runs in the qemu kernel lane (a kernel with ESP); on the host kernel (no ESP)
the same configuration must pick the userspace data plane and say why.

Everything is observed from outside the agents, as an operator would: the status socket, the
agents' logs, `ip -s xfrm state` / `ip xfrm policy` in each namespace, ping between inner /32s.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pytest

from tests.dataplane.kernel.conftest import IN_LANE
from tests.harness.netns import Host, Lab
from tests.interop.meshsec_agent import MeshsecAgent, Status

PSK = "kv-lane-psk-never-logged"
OWNER_MARK = "mark 0/0x4d530000"  # the agent's default OwnerMark: value 0, mask "MS"
# The guest is software-emulated (~20x slower): Python start-up alone takes seconds.
SLOW = 90.0 if IN_LANE else 20.0


@dataclass(frozen=True)
class Side:
    name: str
    outer: str
    inner: str


A = Side("a", "198.18.90.1", "198.19.90.1")
B = Side("b", "198.18.90.2", "198.19.90.2")


@pytest.fixture
def netns_prefix() -> str:
    return "kv-"


def agent_config(me: Side, peer: Side, *, initiate: bool, encap: bool, esp: str) -> dict[str, Any]:
    return {
        "agent": {"bind": [me.outer], "dataplane": "auto", "log_level": "info"},
        "connections": {
            "kv": {
                "local_addrs": [me.outer], "remote_addrs": [peer.outer],
                "local": {"id": f"{me.name}.kv.test"}, "remote": {"id": f"{peer.name}.kv.test"},
                "psk": PSK, "proposals": ["aes256gcm16-prfsha256-x25519"],
                "start_action": "initiate" if initiate else "wait", "encap": encap,
                "children": {"net": {"local_ts": [f"{me.inner}/32"], "remote_ts": [f"{peer.inner}/32"],
                                     "esp_proposals": [esp]}},
            }
        },
    }  # fmt: skip


def two_sites(lab: Lab) -> tuple[Host, Host]:
    ha, hb = lab.host(A.name), lab.host(B.name)
    lab.link(ha, hb, f"{A.outer}/24", f"{B.outer}/24")
    for host, me, peer in ((ha, A, B), (hb, B, A)):
        host.add_loopback_address(f"{me.inner}/32")
        # Policy-based mode: the route only has to lead towards the peer; the policy encrypts.
        host.add_route(f"{peer.inner}/32", via=peer.outer, src=me.inner)
    return ha, hb


@dataclass(frozen=True)
class XfrmState:
    spi: int
    src: str
    dst: str
    marked: bool
    encap: str | None  # "espinudp sport 4500 dport 4500" or None
    bytes: int
    packets: int


_KEY_LINE = re.compile(r"^\s*(aead|enc|auth|auth-trunc|comp)\s")


def xfrm_states(host: Host) -> list[XfrmState]:
    """`ip -s xfrm state`, key lines dropped before anything else sees the text."""
    lines = host.ip("-s", "xfrm", "state").splitlines()
    text = "\n".join(line for line in lines if not _KEY_LINE.match(line))
    states = []
    for block in re.split(r"^(?=src )", text, flags=re.M):
        head = re.match(r"src (\S+) dst (\S+)", block)
        spi = re.search(r"proto esp spi (0x[0-9a-f]+)", block)
        if head is None or spi is None:
            continue
        encap = re.search(r"encap type (\S+ sport \d+ dport \d+)", block)
        current = re.search(r"lifetime current:\s*\n\s*(\d+)\(bytes\), (\d+)\(packets\)", block)
        assert current is not None, f"no lifetime counters for SA {spi.group(1)}"
        states.append(XfrmState(int(spi.group(1), 16), head.group(1), head.group(2), OWNER_MARK in block,
                                encap.group(1) if encap else None, int(current.group(1)),
                                int(current.group(2))))  # fmt: skip
    return states


def owned_policies(host: Host) -> list[str]:
    blocks = re.split(r"^(?=src )", host.ip("xfrm", "policy"), flags=re.M)
    return [b.splitlines()[0] + " " + b.split("dir ")[1].split()[0] for b in blocks if OWNER_MARK in b]


def ping(host: Host, me: Side, peer: Side, count: int) -> int:
    return host.ping(peer.inner, count=count, interval=0.2, wait=5, src=me.inner).received


def child_of(status: Status) -> dict[str, Any]:
    [sa] = status["ike_sas"]
    [child] = sa["child_sas"]
    return dict(child)


@pytest.mark.kernelvm
@pytest.mark.netns
@pytest.mark.timeout(300)
@pytest.mark.parametrize(("encap", "esp"), [(False, "aes256gcm16"), (True, "aes128gcm16")],
                         ids=["esp", "esp-in-udp"])
def test_agents_pick_the_kernel_and_carry_traffic_through_it(lab: Lab, encap: bool, esp: str) -> None:
    ha, hb = two_sites(lab)
    b = MeshsecAgent(hb, agent_config(B, A, initiate=False, encap=False, esp=esp)).start(SLOW)
    a = MeshsecAgent(ha, agent_config(A, B, initiate=True, encap=encap, esp=esp)).start(SLOW)
    sa_a = a.wait_for(lambda s: a.established("kv"), SLOW)
    sa_b = b.wait_for(lambda s: b.established("kv"), SLOW)
    for agent in (a, b):
        assert agent.status()["dataplane"] == "kernel", agent.log_text()[-3000:]
    assert (sa_a["initiator_spi"], sa_a["responder_spi"]) == (sa_b["initiator_spi"], sa_b["responder_spi"])
    ca, cb = child_of(a.status()), child_of(b.status())
    assert ca["spi_in"] == cb["spi_out"] and ca["spi_out"] == cb["spi_in"]
    assert ca["udp_encap"] is encap and cb["udp_encap"] is encap

    # Both ends hold the pair in the kernel, tagged with the owner mark; ESP-in-UDP on 4500 iff encap.
    for host, child, me, peer in ((ha, ca, A, B), (hb, cb, B, A)):
        states = {s.spi: s for s in xfrm_states(host)}
        sa_in, sa_out = states[int(child["spi_in"], 16)], states[int(child["spi_out"], 16)]
        assert (sa_in.src, sa_in.dst, sa_out.src, sa_out.dst) == (peer.outer, me.outer, me.outer, peer.outer)
        assert sa_in.marked and sa_out.marked
        expected_encap = "espinudp sport 4500 dport 4500" if encap else None
        assert sa_in.encap == expected_encap and sa_out.encap == expected_encap
        directions = sorted(p.rsplit(" ", 1)[1] for p in owned_policies(host))
        assert directions == ["fwd", "in", "out"], owned_policies(host)

    assert ping(ha, A, B, 3) == 3
    before = {h: {s.spi: s for s in xfrm_states(h)} for h in (ha, hb)}
    assert ping(hb, B, A, 3) == 3
    after = {h: {s.spi: s for s in xfrm_states(h)} for h in (ha, hb)}
    for host, child in ((ha, ca), (hb, cb)):
        for spi in (int(child["spi_in"], 16), int(child["spi_out"], 16)):
            assert before[host][spi].packets >= 3, f"{host.name} SA {spi:#x} carried nothing"
            assert after[host][spi].packets >= before[host][spi].packets + 3
            assert after[host][spi].bytes > before[host][spi].bytes
    # The agent reads the same kernel counters into its status.
    counters = child_of(a.status())["counters"]
    assert counters["packets_out"] >= 6 and counters["packets_in"] >= 6, counters

    # SIGTERM: DELETE to the peer, both agents remove everything they installed, nothing else.
    assert a.stop() == 0
    b.wait_for(lambda s: not s["ike_sas"], SLOW)
    assert b.stop() == 0
    for host in (ha, hb):
        assert [s for s in xfrm_states(host) if s.marked] == []
        assert owned_policies(host) == []
    for agent in (a, b):
        log = agent.log_text()
        assert PSK not in log and PSK.encode().hex() not in log


@pytest.mark.netns
@pytest.mark.timeout(60)
@pytest.mark.skipif(IN_LANE, reason="the lane's kernel has ESP: auto picks the kernel there")
def test_auto_picks_userspace_without_kernel_esp_and_says_why(lab: Lab) -> None:
    ha, hb = two_sites(lab)
    b = MeshsecAgent(hb, agent_config(B, A, initiate=False, encap=False, esp="aes256gcm16")).start(SLOW)
    a = MeshsecAgent(ha, agent_config(A, B, initiate=True, encap=False, esp="aes256gcm16")).start(SLOW)
    a.wait_for(lambda s: a.established("kv"), SLOW)
    assert a.status()["dataplane"] == "userspace" and b.status()["dataplane"] == "userspace"
    assert "kernel has no usable ESP" in a.log_text()
    assert ping(ha, A, B, 3) == 3
    assert ha.ip("xfrm", "state").strip() == ""  # the kernel was not asked to carry anything
