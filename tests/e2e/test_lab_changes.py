"""Mesh changes under traffic on a three-datacentre lab (`meshctl lab up --datacenters 3`):

- the datacentre MeshPolicy edited from full mesh to hub-and-spoke (dc1 hub, no spoke-to-spoke
  transit) and back, while every pair pings: exactly the dc2-dc3 tunnel goes and comes back, the
  hub tunnels keep their SPIs and lose no packet, and so does an unrelated policy's tunnel;
- the external strongSwan gateway leaving (ExternalGateway deleted) and joining again (applied):
  both ends see the tunnels go and come back, with matching SPIs, and traffic crosses them;
- the VPC gateway behind the masquerading NAT box: NAT detected on both ends and ESP in UDP/4500
  on the wire, never bare ESP.

One lab serves the module; it is taken down in a finally, which also proves nothing is left.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from ipaddress import collapse_addresses, ip_network
from itertools import combinations
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshsec.meshctl.lab.plan import PREFIX
from meshsec.meshctl.lab.preflight import find
from tests.e2e.lab_driver import (
    ESTABLISHED,
    Pingers,
    Tunnel,
    UpLab,
    agent_tunnels,
    apply_yaml,
    child_spis,
    example_document,
    meshctl,
    ping,
    ping_ttls,
    running_lab,
    swanctl_sas,
    three_dc_manifest,
    tunnels,
    wait_for,
)

pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.timeout(400)]

DC_NODES = {"dc1": "dc1-gw1", "dc2": "dc2-gw1", "dc3": "dc3-gw1"}
DC_PREFIXES = {"dc1": "198.19.1.0/24", "dc2": "198.19.2.0/24", "dc3": "198.19.3.0/24"}
DC_HOSTS = {"dc1": "198.19.1.10", "dc2": "198.19.2.10", "dc3": "198.19.3.10"}
HUB = "dc1"  # the only datacentre labelled cloud-attach=hub in the example
EXT_ADDRESS = "198.19.200.1"  # behind the strongSwan gateway


@pytest.fixture(scope="module")
def lab3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpLab]:
    work = tmp_path_factory.mktemp("lab3")
    manifest = three_dc_manifest(work / "lab-3dc.yaml")
    with running_lab(["--datacenters", "3", "-f", str(manifest), "--timeout", "90"], work) as up:
        yield up


def pair(tunnel: Tunnel) -> frozenset[str]:
    return frozenset(e["name"] for e in tunnel["ends"])


def policy_tunnels(policy: str) -> dict[frozenset[str], Tunnel]:
    return {pair(t): t for t in tunnels().values() if t["policy"] == policy}


def dc_mesh_pairs(topology: str) -> set[frozenset[str]]:
    """What the docs (docs/resources.md) say dc-mesh computes over dc1..dc3: every pair for a full
    mesh; "hub" (hub-and-spoke) pairs each spoke with the hub, never two spokes."""
    if topology == "full-mesh":
        return {frozenset((DC_NODES[a], DC_NODES[b])) for a, b in combinations(DC_NODES, 2)}
    assert topology == "hub"
    return {frozenset((DC_NODES[HUB], DC_NODES[s])) for s in DC_NODES if s != HUB}


def live_policy(name: str) -> dict[str, Any]:
    got = meshctl("get", "policy", name, "-o", "json")
    assert got.returncode == 0, got.stderr
    resource = json.loads(got.stdout)
    assert resource["kind"] == "MeshPolicy"
    spec: dict[str, Any] = resource["spec"]
    return spec


def policy_yaml(name: str, spec: dict[str, Any]) -> str:
    return yaml.safe_dump(
        {"apiVersion": "meshsec.io/v1alpha1", "kind": "MeshPolicy", "metadata": {"name": name}, "spec": spec}
    )


def child_ts(tunnel: Tunnel) -> dict[str, tuple[list[str], list[str]]] | None:
    """{node: (localTs, remoteTs)} of the one CHILD_SA each end has; None while an end has none
    or is between two (replacing one)."""
    found = {}
    for end in tunnel["ends"]:
        children = (end.get("status") or {}).get("childSas") or []
        if len(children) != 1:
            return None
        local, remote = (sorted(t["cidr"] for t in children[0][k]) for k in ("localTs", "remoteTs"))
        found[end["name"]] = (local, remote)
    return found


def hub_selectors(spoke: str, spoke_to_spoke: bool) -> dict[str, tuple[list[str], list[str]]]:
    """The hub-spoke CHILD_SA's selectors as docs/resources.md computes them: the spoke offers its
    prefix; the hub its own, plus (spokeToSpoke, no transitPrefixes) every other member's, collapsed."""
    offered = [DC_PREFIXES[HUB]]
    if spoke_to_spoke:
        offered += [DC_PREFIXES[s] for s in DC_NODES if s not in (HUB, spoke)]
    hub = sorted(str(n) for n in collapse_addresses(ip_network(c) for c in offered))
    return {DC_NODES[HUB]: (hub, [DC_PREFIXES[spoke]]), DC_NODES[spoke]: ([DC_PREFIXES[spoke]], hub)}


def all_established(tunnel: Tunnel | None) -> bool:
    return (
        tunnel is not None
        and tunnel["state"] == ESTABLISHED
        and all((e.get("status") or {}).get("state") == ESTABLISHED for e in tunnel["ends"] if "status" in e)
    )


SPOKES = [s for s in DC_NODES if s != HUB]
HUB_PAIRS = {s: frozenset((DC_NODES[HUB], DC_NODES[s])) for s in SPOKES}
SPOKE_PAIR = frozenset(DC_NODES[s] for s in SPOKES)
DIRECT_TTL = 62  # dc2 <-> dc3 replies cross two gateways on the direct tunnel ...
TRANSIT_TTL = 61  # ... and three (the hub too) in transit


def hub_settled(spoke_to_spoke: bool) -> bool:
    """The hub tunnels are up, each end with exactly the computed selectors."""
    now = policy_tunnels("dc-mesh")
    return all(
        all_established(now.get(pair_)) and child_ts(now[pair_]) == hub_selectors(spoke, spoke_to_spoke)
        for spoke, pair_ in HUB_PAIRS.items()
    )


def start_pingers(log_dir: Path) -> Pingers:
    """Every DC pair plus dc1-vpc (another policy's tunnel), 10 pings a second each."""
    return Pingers(
        [
            ("dc1-dc2", f"{PREFIX}dc1-host", DC_HOSTS["dc2"]),
            ("dc1-dc3", f"{PREFIX}dc1-host", DC_HOSTS["dc3"]),
            ("dc2-dc3", f"{PREFIX}dc2-host", DC_HOSTS["dc3"]),
            ("dc1-vpc", f"{PREFIX}dc1-host", "198.19.30.10"),
        ],
        log_dir,
    )


def hub_and_spoke(full: dict[str, Any], spoke_to_spoke: bool) -> str:
    hubs = {"selector": {"matchLabels": {"cloud-attach": "hub"}}, "spokeToSpoke": spoke_to_spoke}
    return policy_yaml("dc-mesh", {**full, "topology": "hub-and-spoke", "hubs": hubs})


def full_mesh_in_place() -> tuple[dict[str, Any], dict[frozenset[str], Tunnel]]:
    """dc-mesh's live spec and tunnels, checked to be the settled full mesh the example makes."""
    full = live_policy("dc-mesh")
    assert full["topology"] == "full-mesh"
    before = policy_tunnels("dc-mesh")
    assert set(before) == dc_mesh_pairs("full-mesh")
    assert all(all_established(t) and child_ts(t) is not None for t in before.values())
    assert ping_ttls(f"{PREFIX}dc2-host", DC_HOSTS["dc3"]) == [DIRECT_TTL] * 3
    return full, before


def restore_full_mesh(full: dict[str, Any], spoke_id: str, tmp_path: Path) -> None:
    out = apply_yaml(policy_yaml("dc-mesh", full), tmp_path / "full.yaml")
    assert "meshpolicy/dc-mesh configured" in out
    wait_for(
        "dc2-dc3 to be established again",
        lambda: all_established(policy_tunnels("dc-mesh").get(SPOKE_PAIR)),
        45,
    )
    wait_for(
        "dc2 to reach dc3 directly again",
        lambda: ping_ttls(f"{PREFIX}dc2-host", DC_HOSTS["dc3"], 2) == [DIRECT_TTL] * 2,
        30,
    )
    assert agent_tunnels("dc2-gw1").get(spoke_id) == "ESTABLISHED"
    time.sleep(1.0)  # the continuous dc2-dc3 ping sees the tunnel again


def wait_spoke_tunnel_dropped(spoke_id: str) -> None:
    wait_for("dc2-dc3 to be removed", lambda: set(policy_tunnels("dc-mesh")) == dc_mesh_pairs("hub"), 30)
    wait_for(
        "the dc2 and dc3 agents to drop the dc2-dc3 tunnel",
        lambda: spoke_id not in agent_tunnels("dc2-gw1") and spoke_id not in agent_tunnels("dc3-gw1"),
        30,
    )


def test_full_mesh_to_hub_and_spoke_and_back_under_traffic(lab3: UpLab, tmp_path: Path) -> None:
    """Without spoke-to-spoke transit the hub tunnels' selectors do not change: they keep their
    CHILD_SAs and lose nothing, while dc2-dc3 is cut and restored."""
    started = time.monotonic()
    full, before = full_mesh_in_place()
    hub_spis = {p: child_spis(before[p]) for p in HUB_PAIRS.values()}
    assert all(len(s) == 2 for s in hub_spis.values())
    spoke_id, spoke_spis = before[SPOKE_PAIR]["tunnelId"], child_spis(before[SPOKE_PAIR])
    vpc_before = tunnels()["dc1-gw1 <-> vpc-gw1"]

    pingers = start_pingers(tmp_path)
    try:
        time.sleep(1.0)  # traffic on every pair before the change
        out = apply_yaml(hub_and_spoke(full, False), tmp_path / "hub.yaml")
        assert "meshpolicy/dc-mesh configured" in out
        wait_spoke_tunnel_dropped(spoke_id)
        # No transit: the hub offers each spoke only its own prefix, so dc2 cannot reach dc3 at
        # all (the underlay routes no site subnet).
        assert ping_ttls(f"{PREFIX}dc2-host", DC_HOSTS["dc3"], 2) == []
        assert hub_settled(spoke_to_spoke=False)
        hub = policy_tunnels("dc-mesh")
        for p in HUB_PAIRS.values():
            assert hub[p]["tunnelId"] == before[p]["tunnelId"]
            assert child_spis(hub[p]) == hub_spis[p], f"{sorted(p)} was re-keyed by the edit"
        time.sleep(1.0)  # the hub-and-spoke mesh carries traffic for a while
        restore_full_mesh(full, spoke_id, tmp_path)
    finally:
        runs = pingers.stop()

    after = policy_tunnels("dc-mesh")
    assert set(after) == dc_mesh_pairs("full-mesh")
    assert after[SPOKE_PAIR]["tunnelId"] == spoke_id  # ids are stable per policy and pair
    assert child_spis(after[SPOKE_PAIR]) != spoke_spis  # a new CHILD_SA, not a stale one
    for p in HUB_PAIRS.values():
        assert child_spis(after[p]) == hub_spis[p], f"{sorted(p)} was re-keyed by the edit back"
    assert child_spis(tunnels()["dc1-gw1 <-> vpc-gw1"]) == child_spis(vpc_before)

    for label in ("dc1-dc2", "dc1-dc3", "dc1-vpc"):
        run = runs[label]
        assert run.transmitted >= 30, run.log[-400:]
        assert run.lost() == [], f"{label} lost icmp_seq {run.lost()}\n{run.log[-400:]}"
    cut = runs["dc2-dc3"]
    assert cut.lost(), "dc2-dc3 never lost a packet: the hub-and-spoke edit did not cut it"
    assert max(cut.answered) > max(cut.lost()), "dc2-dc3 got no reply after the edit back"
    print(
        f"\nfull mesh -> hub-and-spoke -> full mesh: {time.monotonic() - started:.1f}s, "
        f"dc2-dc3 cut for {len(cut.lost())} pings"
    )


def test_hub_and_spoke_with_spoke_to_spoke_transit_under_traffic(lab3: UpLab, tmp_path: Path) -> None:
    """With spokeToSpoke the hub offers each spoke the other spoke's prefix too: dc2-dc3 is gone as
    a tunnel but dc2 still reaches dc3 through dc1 (one router more on the way). The hub tunnels'
    selectors change, so they get new CHILD_SAs; dc1-vpc (another policy) loses nothing."""
    started = time.monotonic()
    full, before = full_mesh_in_place()
    spoke_id = before[SPOKE_PAIR]["tunnelId"]
    vpc_before = tunnels()["dc1-gw1 <-> vpc-gw1"]

    pingers = start_pingers(tmp_path)
    try:
        time.sleep(1.0)
        out = apply_yaml(hub_and_spoke(full, True), tmp_path / "hub.yaml")
        assert "meshpolicy/dc-mesh configured" in out
        wait_spoke_tunnel_dropped(spoke_id)
        wait_for("the hub tunnels to carry the transit selectors", lambda: hub_settled(True), 30)
        wait_for(
            "dc2 to reach dc3 through the hub",
            lambda: ping_ttls(f"{PREFIX}dc2-host", DC_HOSTS["dc3"], 2) == [TRANSIT_TTL] * 2,
            30,
        )
        hub = policy_tunnels("dc-mesh")
        for p in HUB_PAIRS.values():
            assert hub[p]["tunnelId"] == before[p]["tunnelId"]
            assert child_spis(hub[p]) != child_spis(before[p]), f"{sorted(p)}: selectors changed, same SA"
        time.sleep(1.0)
        restore_full_mesh(full, spoke_id, tmp_path)
        wait_for("the hub tunnels to narrow again", lambda: hub_settled(False), 30)
    finally:
        runs = pingers.stop()

    assert set(policy_tunnels("dc-mesh")) == dc_mesh_pairs("full-mesh")
    assert child_spis(tunnels()["dc1-gw1 <-> vpc-gw1"]) == child_spis(vpc_before)
    vpc = runs["dc1-vpc"]
    assert vpc.transmitted >= 30 and vpc.lost() == [], f"dc1-vpc lost {vpc.lost()}\n{vpc.log[-400:]}"
    transit = runs["dc2-dc3"]
    assert {DIRECT_TTL, TRANSIT_TTL} <= set(transit.replies.values()), "dc2-dc3 never went through the hub"
    # Each selector change replaces the hub tunnels' CHILD_SAs make-before-break on the kept IKE
    # SA (the new pair shares the old one's reqid, the old one goes once the new one carries
    # traffic): the hub prefixes both keep lose nothing (measured: 0 in 10 of 10 runs).
    hub_losses = {label: runs[label].lost() for label in ("dc1-dc2", "dc1-dc3")}
    assert all(lost == [] for lost in hub_losses.values()), hub_losses
    print(
        f"\nhub-and-spoke with transit and back: {time.monotonic() - started:.1f}s, hub pairs lost "
        f"{ {k: len(v) for k, v in hub_losses.items()} }, dc2-dc3 lost {len(transit.lost())}"
    )


@pytest.mark.strongswan
def test_external_gateway_leaves_and_joins_again(lab3: UpLab, tmp_path: Path) -> None:
    started = time.monotonic()
    ext_pairs = {frozenset((DC_NODES[s], "partner-aws")) for s in ("dc1", "dc2")}
    before = policy_tunnels("partner-aws")
    assert set(before) == ext_pairs and all(all_established(t) for t in before.values())
    old_spis = {s.spi_in for s in swanctl_sas()}

    deleted = meshctl("delete", "gateway", "partner-aws")
    assert deleted.returncode == 0, deleted.stdout + deleted.stderr
    wait_for("the external tunnels to be removed", lambda: not policy_tunnels("partner-aws"), 30)
    wait_for("strongSwan to have no SA left (the agents sent DELETE)", lambda: not swanctl_sas(), 30)
    for dc in ("dc1", "dc2"):
        assert not ping(f"{PREFIX}{dc}-host", EXT_ADDRESS, 1)

    out = apply_yaml(example_document("ExternalGateway", "partner-aws"), tmp_path / "partner-aws.yaml")
    assert "externalgateway/partner-aws created" in out

    def joined() -> bool:
        now = policy_tunnels("partner-aws")
        return set(now) == ext_pairs and all(all_established(t) for t in now.values())

    wait_for("the external tunnels to be established in the controller", joined, 45)
    for dc in ("dc1", "dc2"):
        assert ping(f"{PREFIX}{dc}-host", EXT_ADDRESS, 3), f"{dc} cannot reach {EXT_ADDRESS} after the join"

    sas = {s.remote_id: s for s in swanctl_sas()}
    assert set(sas) == {f"{DC_NODES[s]}.meshsec.test" for s in ("dc1", "dc2")}
    after = policy_tunnels("partner-aws")
    for dc in ("dc1", "dc2"):
        sa = sas[f"{DC_NODES[dc]}.meshsec.test"]
        tunnel = after[frozenset((DC_NODES[dc], "partner-aws"))]
        assert sa.state == "ESTABLISHED" and sa.child_state == "INSTALLED"
        assert sa.connection == tunnel["tunnelId"]
        # The same CHILD_SA seen from both sides: meshsec's inbound SPI is strongSwan's outbound.
        assert child_spis(tunnel) == [(sa.spi_out, sa.spi_in)]
        assert sa.spi_in not in old_spis
        assert sa.bytes_in > 0, f"strongSwan received nothing from {dc}"
    print(f"\nexternal gateway leave/join test: {time.monotonic() - started:.1f}s")


ESP_LINE = re.compile(r"\bESP\(spi=0x[0-9a-f]+")


def test_vpc_tunnel_crosses_the_masquerade_as_esp_in_udp(lab3: UpLab, tmp_path: Path) -> None:
    vpc = tunnels()["dc1-gw1 <-> vpc-gw1"]
    assert all_established(vpc)
    ends = {e["name"]: e["status"] for e in vpc["ends"]}
    for status in ends.values():
        assert status["ikeSa"]["natDetected"] is True
        assert status["childSas"][0]["udpEncapsulated"] is True
        assert status["ikeSa"]["localEndpoint"]["port"] == 4500
    # dc1 sees the NAT box's outside address, never the gateway's private one.
    assert ends["dc1-gw1"]["ikeSa"]["remoteEndpoint"]["address"] == "198.18.3.1"
    assert ends["vpc-gw1"]["ikeSa"]["localEndpoint"]["address"] == "198.18.130.10"

    # On the underlay link to the NAT box: ESP only inside UDP/4500, never as IP protocol 50.
    program = find("tcpdump")
    if program is None:
        pytest.skip("tcpdump (Debian package tcpdump) is needed to look at the wire")
    capture = tmp_path / "vpc-link.txt"
    with open(capture, "wb") as out:
        tcpdump = subprocess.Popen(
            ["ip", "netns", "exec", f"{PREFIX}inet", program, "-i", "vpc", "-n", "-l", "-U",
             "ip proto 50 or udp port 4500"],
            stdout=out,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )  # fmt: skip
    try:
        assert tcpdump.stderr is not None
        said = [tcpdump.stderr.readline() for _ in range(2)]  # a verbosity note, then "listening on"
        assert any(b"listening on" in line for line in said), said
        assert ping(f"{PREFIX}dc1-host", "198.19.30.10", 5)
        assert ping(f"{PREFIX}vpc-host", DC_HOSTS["dc1"], 5)
        time.sleep(0.5)
    finally:
        os.kill(tcpdump.pid, signal.SIGINT)  # it flushes what it captured
        try:
            tcpdump.wait(10)
        except subprocess.TimeoutExpired:
            tcpdump.kill()
            tcpdump.wait(5)
    lines = capture.read_text().splitlines()
    esp = [line for line in lines if ESP_LINE.search(line)]
    bare = [line for line in esp if "UDP-encap" not in line]
    assert len(esp) >= 20, "\n".join(lines[-20:])  # 10 requests and 10 replies, at least
    assert bare == [], "\n".join(bare[:5])
    # Between the NAT box's outside address and dc1's public one at its NAT-T port.
    assert all("198.18.3.1." in line and "198.18.1.1.4500" in line for line in esp), "\n".join(esp[:5])
