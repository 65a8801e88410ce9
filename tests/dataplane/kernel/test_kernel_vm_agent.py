"""The agent itself drives the kernel data plane: two `meshsec-agent --config` processes with
`dataplane: auto` in two namespaces negotiate IKEv2 (PSK) and their CHILD_SAs carry ping through
the kernel's ESP. Runs in the qemu kernel lane (a kernel with ESP); on the host kernel (no ESP)
the same configuration must pick the userspace data plane and say why.

Everything is observed from outside the agents, as an operator would: the status socket, the
agents' logs, `ip -s xfrm state` / `ip xfrm policy` in each namespace, ping between inner /32s.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

import pytest

from tests.dataplane.kernel.conftest import IN_LANE
from tests.harness.netns import Host, Lab
from tests.interop.meshsec_agent import MeshsecAgent, Status

PSK = "kv-lane-psk-never-logged"
OWNER_MARK = "mark 0/0x4d530000"  # the agent's default OwnerMark: value 0, mask "MS"
# The guest is software-emulated (~20x slower, more on a loaded machine): an agent's start-up alone
# took 15-45 s there.
SLOW = 150.0 if IN_LANE else 20.0


@dataclass(frozen=True)
class Side:
    name: str
    outer: str


@dataclass(frozen=True)
class Tunnel:
    """One connection of the pair: its own inner /32s and, for `encap`, forced ESP-in-UDP."""

    name: str
    encap: bool
    esp: str
    inner: dict[str, str]  # side name -> inner address
    rekey: int | None = None  # CHILD_SA rekey_time (s) of the initiator; None: the default hour
    ike: str = "aes256gcm16-prfsha256-x25519"


A, B = Side("a", "198.18.90.1"), Side("b", "198.18.90.2")
# The checks before the rekey take 2-8 s in the guest; a longer rekey_time only adds waiting.
PLAIN = Tunnel("kv-esp", False, "aes256gcm16", {"a": "198.19.90.1", "b": "198.19.90.2"}, rekey=20)
# RFC 7634 end to end: IKE and ESP with ChaCha20-Poly1305, the kernel's rfc7539esp template.
UDP = Tunnel("kv-udp", True, "chacha20poly1305", {"a": "198.19.91.1", "b": "198.19.91.2"},
             ike="chacha20poly1305-prfsha256-x25519")
KERNEL_AEAD = {"aes256gcm16": "rfc4106(gcm(aes))", "chacha20poly1305": "rfc7539esp(chacha20,poly1305)"}


@pytest.fixture
def netns_prefix() -> str:
    return "kv-"


def child_config(t: Tunnel, me: Side, peer: Side, initiate: bool) -> dict[str, Any]:
    child: dict[str, Any] = {"local_ts": [f"{t.inner[me.name]}/32"], "esp_proposals": [t.esp],
                             "remote_ts": [f"{t.inner[peer.name]}/32"]}
    if t.rekey is not None and initiate:  # one side only: no rekey collision to resolve
        child.update(rekey_time=t.rekey, life_time=4 * t.rekey, rand_time=0)
    return child


def agent_config(me: Side, peer: Side, tunnels: tuple[Tunnel, ...], *, initiate: bool) -> dict[str, Any]:
    connections = {
        t.name: {
            "local_addrs": [me.outer], "remote_addrs": [peer.outer],
            # Distinct identities per connection: they tell the responder which connection is meant.
            "local": {"id": f"{me.name}.{t.name}.test"}, "remote": {"id": f"{peer.name}.{t.name}.test"},
            "psk": PSK, "proposals": [t.ike],
            "start_action": "initiate" if initiate else "wait", "encap": t.encap and initiate,
            "children": {"net": child_config(t, me, peer, initiate)},
        }
        for t in tunnels
    }  # fmt: skip
    agent = {"bind": [me.outer], "dataplane": "auto", "log_level": "info"}
    return {"agent": agent, "connections": connections}


def two_sites(lab: Lab, tunnels: tuple[Tunnel, ...]) -> tuple[Host, Host]:
    ha, hb = lab.host(A.name), lab.host(B.name)
    lab.link(ha, hb, f"{A.outer}/24", f"{B.outer}/24")
    for host, me in ((ha, A), (hb, B)):
        for t in tunnels:
            # No routes to the peer's inner address: both data planes install them (the kernel one
            # in table 220, with the inner address as source), and the tests below check that.
            host.add_loopback_address(f"{t.inner[me.name]}/32")
    return ha, hb


def start_both(ha: Host, hb: Host, tunnels: tuple[Tunnel, ...]) -> tuple[MeshsecAgent, MeshsecAgent]:
    """Both agents start at once (Python start-up dominates in the guest); the initiator's
    retransmissions cover a responder that is not listening yet."""
    b = MeshsecAgent(hb, agent_config(B, A, tunnels, initiate=False))
    a = MeshsecAgent(ha, agent_config(A, B, tunnels, initiate=True))
    with ThreadPoolExecutor(1) as pool:
        b_started = pool.submit(b.start, SLOW)
        a.start(SLOW)
        b_started.result()
    return a, b


@dataclass(frozen=True)
class XfrmState:
    spi: int
    src: str
    dst: str
    marked: bool
    encap: str | None  # "espinudp sport 4500 dport 4500" or None
    bytes: int
    packets: int
    aead: str | None  # the AEAD's kernel name (its key is never kept)


_KEY_LINE = re.compile(r"^\s*(aead|enc|auth|auth-trunc|comp)\s")
_AEAD_NAME = re.compile(r"^\s*aead (\S+) ", re.M)


def xfrm_states(host: Host) -> list[XfrmState]:
    """`ip -s xfrm state`, key lines cut to their algorithm name before anything else sees them."""
    lines = host.ip("-s", "xfrm", "state").splitlines()
    # Key lines become their first two words ("aead rfc4106(gcm(aes))"): the key never survives.
    text = "\n".join(" ".join(line.split()[:2]) + " " if _KEY_LINE.match(line) else line for line in lines)
    states = []
    for block in re.split(r"^(?=src )", text, flags=re.M):
        head = re.match(r"src (\S+) dst (\S+)", block)
        spi = re.search(r"proto esp spi (0x[0-9a-f]+)", block)
        if head is None or spi is None:
            continue
        encap = re.search(r"encap type (\S+ sport \d+ dport \d+)", block)
        current = re.search(r"lifetime current:\s*\n\s*(\d+)\(bytes\), (\d+)\(packets\)", block)
        assert current is not None, f"no lifetime counters for SA {spi.group(1)}"
        aead = _AEAD_NAME.search(block)
        states.append(XfrmState(int(spi.group(1), 16), head.group(1), head.group(2), OWNER_MARK in block,
                                encap.group(1) if encap else None, int(current.group(1)),
                                int(current.group(2)), aead.group(1) if aead else None))  # fmt: skip
    return states


def owned_policies(host: Host) -> list[str]:
    blocks = re.split(r"^(?=src )", host.ip("xfrm", "policy"), flags=re.M)
    return [b.splitlines()[0] + " " + b.split("dir ")[1].split()[0] for b in blocks if OWNER_MARK in b]


def table_220(host: Host) -> dict[str, str]:
    """`ip route show table 220` by destination (empty when the table was never created)."""
    out = host.run(["ip", "route", "show", "table", "220"], check=False).stdout
    return {line.split()[0]: line for line in out.splitlines() if line.strip()}


def ping(host: Host, tunnel: Tunnel, me: Side, peer: Side, count: int) -> int:
    src, dst = tunnel.inner[me.name], tunnel.inner[peer.name]
    return host.ping(dst, count=count, interval=0.2, wait=5, src=src).received


def ike_sa(status: Status, name: str) -> dict[str, Any]:
    [sa] = [s for s in status["ike_sas"] if s["name"] == name]
    return dict(sa)


def child_of(status: Status, name: str) -> dict[str, Any]:
    [child] = ike_sa(status, name)["child_sas"]
    return dict(child)


def spis(child: dict[str, Any]) -> tuple[int, int]:
    return int(child["spi_in"], 16), int(child["spi_out"], 16)


def all_established(tunnels: tuple[Tunnel, ...], status: Status) -> bool:
    """Every connection has its IKE SA ESTABLISHED with its CHILD_SA INSTALLED."""
    up = {sa["name"] for sa in status["ike_sas"] if sa["state"] == "ESTABLISHED" and sa["child_sas"]
          and all(c["state"] == "INSTALLED" for c in sa["child_sas"])}  # fmt: skip
    return up >= {t.name for t in tunnels}


def kernel_lacks(host: Host, spis: tuple[int, int], status: Status) -> bool:
    return not set(spis) & {x.spi for x in xfrm_states(host)}


def rekeyed(status: Status, name: str, old: tuple[int, int]) -> tuple[int, int] | None:
    """The CHILD_SA's SPIs once it was rekeyed and the old pair is gone (None before)."""
    children = [c for sa in status["ike_sas"] if sa["name"] == name for c in sa["child_sas"]]
    if len(children) != 1 or children[0]["state"] != "INSTALLED" or spis(children[0]) == old:
        return None
    return spis(children[0])


@pytest.mark.kernelvm
@pytest.mark.netns
@pytest.mark.timeout(300)
def test_agents_pick_the_kernel_and_carry_traffic_through_it(lab: Lab) -> None:
    tunnels = (PLAIN, UDP)
    ha, hb = two_sites(lab, tunnels)
    a, b = start_both(ha, hb, tunnels)
    for agent in (a, b):
        agent.wait_for(partial(all_established, tunnels), SLOW)
    sa, sb = a.status(), b.status()
    assert sa["dataplane"] == "kernel" and sb["dataplane"] == "kernel", a.log_text()[-3000:]
    assert "kernel data plane: esp=True" in a.log_text()  # `auto` probed and found ESP
    for t in tunnels:
        ia, ib = ike_sa(sa, t.name), ike_sa(sb, t.name)
        assert (ia["initiator_spi"], ia["responder_spi"]) == (ib["initiator_spi"], ib["responder_spi"])
        ike_encr = "CHACHA20_POLY1305" if t.ike.startswith("chacha20poly1305") else "AES_GCM_16"
        assert ia["encr_alg"] == ib["encr_alg"] == ike_encr, (ia, ib)
        # Without a NAT the engine keeps IKE on 500 and ESP plain; forced encap floats both to 4500.
        port = "4500" if t.encap else "500"
        assert ia["local"] == f"{A.outer}:{port}" and ia["remote"] == f"{B.outer}:{port}"
        ca, cb = child_of(sa, t.name), child_of(sb, t.name)
        assert spis(ca) == spis(cb)[::-1]
        assert ca["udp_encap"] is t.encap and cb["udp_encap"] is t.encap

    # Both ends hold each pair in the kernel, tagged with the owner mark; ESP-in-UDP iff encap.
    for host, status, me, peer in ((ha, sa, A, B), (hb, sb, B, A)):
        states = {s.spi: s for s in xfrm_states(host)}
        for t in tunnels:
            spi_in, spi_out = spis(child_of(status, t.name))
            sa_in, sa_out = states[spi_in], states[spi_out]
            assert (sa_in.src, sa_in.dst) == (peer.outer, me.outer)
            assert (sa_out.src, sa_out.dst) == (me.outer, peer.outer)
            assert sa_in.marked and sa_out.marked
            expected_encap = "espinudp sport 4500 dport 4500" if t.encap else None
            assert sa_in.encap == expected_encap and sa_out.encap == expected_encap
            assert sa_in.aead == sa_out.aead == KERNEL_AEAD[t.esp], (t.name, sa_in, sa_out)
        directions = sorted(p.rsplit(" ", 1)[1] for p in owned_policies(host))
        assert directions == ["fwd", "fwd", "in", "in", "out", "out"], owned_policies(host)
        # The kernel data plane routes each remote selector itself (table 220), towards the peer
        # with the local inner address as source and the tunnel MTU.
        routes = table_220(host)
        for t in tunnels:
            route = routes[t.inner[peer.name]]
            assert re.search(rf"via {peer.outer} dev \S+ proto 211 src {t.inner[me.name]} .*mtu 14\d\d",
                             route), route

    # Without -I: the route's source alone makes the ping match the policy.
    assert ha.ping(PLAIN.inner[B.name], count=3, interval=0.2, wait=5).received == 3
    for t in tunnels:
        assert ping(ha, t, A, B, 3) == 3, t.name
    before = {h.name: {s.spi: s for s in xfrm_states(h)} for h in (ha, hb)}
    for t in tunnels:
        assert ping(hb, t, B, A, 3) == 3, t.name
    after = {h.name: {s.spi: s for s in xfrm_states(h)} for h in (ha, hb)}
    for host, status in ((ha, sa), (hb, sb)):
        for t in tunnels:
            for spi in spis(child_of(status, t.name)):
                was, now = before[host.name][spi], after[host.name][spi]
                assert was.packets >= 3, f"{host.name} {t.name} SA {spi:#x} carried nothing"
                assert now.packets >= was.packets + 3 and now.bytes > was.bytes
    # The agent reads the same kernel counters into its status.
    for t in tunnels:
        counters = child_of(a.status(), t.name)["counters"]
        assert counters["packets_out"] >= 6 and counters["packets_in"] >= 6, counters

    # CHILD_SA rekey through the agent, make-before-break in the kernel: the new pair carries
    # the traffic, the old pair is gone from both kernels.
    old = spis(child_of(sa, PLAIN.name))
    new_a = a.wait_for(lambda s: rekeyed(s, PLAIN.name, old), SLOW)
    new_b = b.wait_for(lambda s: rekeyed(s, PLAIN.name, old[::-1]), SLOW)
    assert new_a == new_b[::-1]
    assert ping(ha, PLAIN, A, B, 3) == 3
    for host, agent, new in ((ha, a, new_a), (hb, b, new_b)):
        # The status drops the old pair first; the data plane's removal follows in order.
        agent.wait_for(partial(kernel_lacks, host, old), SLOW)
        states = {s.spi: s for s in xfrm_states(host)}
        assert all(states[spi].packets >= 3 and states[spi].marked for spi in new)

    # SIGTERM: DELETE to the peer, both agents remove everything they installed, nothing else.
    assert a.stop() == 0
    b.wait_for(lambda s: not s["ike_sas"], SLOW)
    assert b.stop() == 0
    for host in (ha, hb):
        assert [s for s in xfrm_states(host) if s.marked] == []
        assert owned_policies(host) == []
        assert table_220(host) == {}
    for agent in (a, b):
        log = agent.log_text()
        assert PSK not in log and PSK.encode().hex() not in log


@pytest.mark.netns
@pytest.mark.timeout(60)
@pytest.mark.skipif(IN_LANE, reason="the lane's kernel has ESP: auto picks the kernel there")
def test_auto_picks_userspace_without_kernel_esp_and_says_why(lab: Lab) -> None:
    ha, hb = two_sites(lab, (PLAIN,))
    a, b = start_both(ha, hb, (PLAIN,))
    a.wait_for(lambda s: a.established(PLAIN.name), SLOW)
    assert a.status()["dataplane"] == "userspace" and b.status()["dataplane"] == "userspace"
    # One selector decides for every agent (selection.select_backend), and says why.
    assert "data plane: userspace, because the kernel data plane is unusable: no ESP" in a.log_text()
    assert ping(ha, PLAIN, A, B, 3) == 3
    assert ha.ip("xfrm", "state").strip() == ""  # the kernel was not asked to carry anything
