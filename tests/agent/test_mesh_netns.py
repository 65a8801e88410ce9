"""End-to-end: a real controller and real agents (userspace data plane over TUN) in namespaces.

Proves: enrollment with bootstrap tokens, the desired-state watch turning into IKE SAs and ESP
tunnels (ping between every pair of inner addresses), status reaching the controller, a node
joining later without touching unrelated tunnels (their SPIs stay), a removed node's tunnels
torn down everywhere, headless operation (controller killed: traffic keeps flowing, an agent
restarts from its persisted state), restart recovery after kill -9 (tunnels back, no stale
CHILD_SA left on it or its peers), a SIGTERM being a restart (the peers hear nothing: no DELETE)
and draining leaving the mesh (peers learn of it by DELETE, not DPD; the IKE state file goes).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshsec.v1 import common_pb2
from tests.agent.meshlab import MeshLab, wait_for
from tests.harness.netns import Lab, parse_ping

pytestmark = [pytest.mark.netns, pytest.mark.timeout(150)]


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[MeshLab]:
    # The workdir (controller and agent logs) outlives the lab for a post-mortem of failures.
    with Lab(prefix="ag-", workdir=tmp_path) as lab:
        m = MeshLab(lab)
        m.start_controller()
        m.mesh_policy()
        yield m


def established_ids(m: MeshLab) -> set[str]:
    return {t.tunnel_id for t in m.tunnels() if t.state == common_pb2.TUNNEL_STATE_ESTABLISHED}


def live_children(m: MeshLab, name: str) -> int:
    doc = m.status(name)
    return sum(len(sa["child_sas"]) for sa in doc["ike_sas"])


def installed_children(m: MeshLab, name: str) -> int:
    """CHILD_SAs the data plane holds: installed or resumed (bound to what the data-plane daemon
    kept across a restart) minus removed, per the adapter's installer."""
    install = m.status(name)["stats"]["install"]
    return (int(install.get("children_installed", 0)) + int(install.get("children_resumed", 0))
            - int(install.get("children_removed", 0)))  # fmt: skip


def assert_no_stale(m: MeshLab) -> None:
    """Every node: one IKE SA per peer, and the data plane holds exactly the live CHILD_SAs."""
    for name in m.nodes:
        doc = m.status(name)
        peers = [sa["name"] for sa in doc["ike_sas"]]
        assert len(peers) == len(set(peers)) == len(m.nodes) - 1, (name, peers)
        assert installed_children(m, name) == live_children(m, name) == len(m.nodes) - 1, name


def test_mesh_comes_up_grows_and_shrinks(mesh: MeshLab) -> None:
    for n in (1, 2, 3):
        mesh.add_node(n)
    mesh.wait_mesh()
    wait_for("3 established tunnels in the controller", lambda: len(established_ids(mesh)) == 3, 20)
    doc = mesh.status("n1")
    assert doc["controller"]["connected"] and doc["dataplane"] == "userspace"
    assert {t["state"] for t in doc["tunnels"]} == {"ESTABLISHED"}
    before = {name: mesh.child_spis(name) for name in mesh.nodes}

    mesh.add_node(4)
    mesh.wait_mesh()
    wait_for("6 established tunnels", lambda: len(established_ids(mesh)) == 6, 20)
    for name, peers in before.items():
        now = mesh.child_spis(name)
        for peer, spis in peers.items():
            assert now[peer] == spis, f"{name}<->{peer} was renegotiated when n4 joined"
    assert_no_stale(mesh)

    mesh.delete("Node", "n4")
    for name in ("n1", "n2", "n3"):
        wait_for(f"{name} without n4", lambda name=name: "n4" not in mesh.child_spis(name), 15)
    wait_for("n4 without SAs", lambda: not mesh.status("n4")["ike_sas"], 15)
    assert mesh.ping("n1", "n2") and mesh.ping("n3", "n1")
    assert not mesh.ping("n1", "n4", count=1)
    del mesh.nodes["n4"]
    assert_no_stale(mesh)


def ike_spis(m: MeshLab, name: str) -> dict[str, str]:
    """peer -> SPIi of the IKE SA with it (IKE SAs are named by tunnel id)."""
    doc = m.status(name)
    peers = {t["tunnel_id"]: t["peer"] for t in doc["tunnels"]}
    return {peers.get(sa["name"], sa["name"]): sa["initiator_spi"] for sa in doc["ike_sas"]}


def designated_initiators(m: MeshLab) -> dict[frozenset[str], str]:
    """{the two node names: the one that initiates their tunnel} (the controller's choice)."""
    found = {}
    for t in m.tunnels():
        a, b = (e.name for e in t.ends)
        found[frozenset((a, b))] = a if t.desired.initiator else b
    return found


def connected(m: MeshLab, name: str) -> bool:
    return bool(m.status(name)["controller"]["connected"])


def test_headless_restart_recovery_sigterm_restart_and_drain(mesh: MeshLab) -> None:
    for n in (1, 2, 3):
        mesh.add_node(n)
    mesh.wait_mesh()
    before = {name: ike_spis(mesh, name) for name in mesh.nodes}

    # Controller gone: 15 s of pings on every pair at once, without a single loss.
    mesh.kill_controller()
    results = mesh.ping_all_concurrently(seconds=15.0, interval=0.2)
    for pair, result in results.items():
        assert result.transmitted >= 70 and result.loss_percent == 0, (pair, result)
    assert not mesh.status("n1")["controller"]["connected"]
    assert {name: ike_spis(mesh, name) for name in mesh.nodes} == before

    # kill -9 while headless: the agent restarts from its persisted desired state alone.
    mesh.stop_agent("n2", signal.SIGKILL)
    mesh.start_agent("n2")
    # The data-plane daemon forwarded on meanwhile, so the pings pass before the agent is back:
    # wait for its status socket too.
    wait_for(
        "n2 back in the mesh",
        lambda: mesh.status("n2") and mesh.ping("n2", "n1", count=1) and mesh.ping("n3", "n2", count=1),
        30,
    )
    doc = mesh.status("n2")
    assert not doc["controller"]["connected"] and doc["controller"]["desired_version"] > 0
    wait_for("no stale SA on n2 or its peers", lambda: assert_no_stale(mesh) is None, 15)
    # The data-plane daemon kept n2's CHILD_SAs, so n2 resumed its IKE SAs: its peers see the
    # same ones, and nothing else changed either.
    assert "resumed 2 IKE SA(s) of 2" in (mesh.work / "n2.log").read_text()
    for name in ("n1", "n3"):
        assert ike_spis(mesh, name) == before[name], name

    # Controller back: agents reconnect, resync, and the controller sees every tunnel established.
    mesh.start_controller()
    wait_for(
        "agents reconnected", lambda: all(mesh.status(n)["controller"]["connected"] for n in mesh.nodes), 30
    )
    wait_for("3 established tunnels in the controller", lambda: len(established_ids(mesh)) == 3, 20)

    # SIGTERM is a restart (a DaemonSet rollout): the data-plane daemon keeps n3's CHILD_SAs and
    # the state dir its IKE SAs, so n3 tells no peer anything (a peer is told only where its SA
    # could not be saved) and the next process resumes them all.
    kept = {name: ike_spis(mesh, name)["n3"] for name in ("n1", "n2")}
    assert mesh.stop_agent("n3") == 0
    assert "restart: data plane left forwarding, only peers that initiate told" in (
        mesh.work / "n3.log").read_text()  # fmt: skip
    assert {name: ike_spis(mesh, name)["n3"] for name in ("n1", "n2")} == kept  # no DELETE
    mesh.start_agent("n3")
    wait_for("n3 back", lambda: mesh.status("n3") and mesh.ping("n3", "n1", count=1)
             and mesh.ping("n2", "n3", count=1), 30)  # fmt: skip
    wait_for("no stale SA after n3's restart", lambda: assert_no_stale(mesh) is None, 15)
    assert {name: ike_spis(mesh, name)["n3"] for name in ("n1", "n2")} == kept  # resumed, not replaced

    # Drain (node removal): the peers drop their IKE SA with n3 at once (DELETE), not after DPD;
    # the tunnel stays desired, so the initiator end may already be trying to reconnect.
    mesh.state_dir("n3").joinpath("ike-sas.json").write_text("{}")  # whatever is there goes
    old = {name: ike_spis(mesh, name)["n3"] for name in ("n1", "n2")}
    t0 = time.monotonic()
    assert mesh.drain_agent("n3") == 0
    assert not mesh.state_dir("n3").joinpath("ike-sas.json").exists()
    for name in ("n1", "n2"):
        wait_for(
            f"{name} dropped its IKE SA with n3",
            lambda name=name: ike_spis(mesh, name).get("n3") != old[name],
            5,
        )
    assert time.monotonic() - t0 < 8
    assert mesh.ping("n1", "n2")


def test_a_node_whose_address_changes_keeps_its_sas_by_mobike(mesh: MeshLab) -> None:
    """MOBIKE between node agents: n1's underlay address changes (a new one added, the old one
    removed) under a 10 ms ping from n2; every IKE SA and CHILD_SA of n1 moves (UPDATE_SA_ADDRESSES
    where n1 initiated the SA, an address list update where it answered), none is made again."""
    for n in (1, 2, 3):
        mesh.add_node(n)
    mesh.wait_mesh()
    n1 = mesh.nodes["n1"]
    n1.sysctl("net.ipv4.conf.all.promote_secondaries", "1")
    n1.sysctl("net.ipv4.conf.eth0.promote_secondaries", "1")
    before = {name: (ike_spis(mesh, name), mesh.child_spis(name)) for name in mesh.nodes}
    assert all(sa["mobike"] for sa in mesh.status("n1")["ike_sas"])

    log = mesh.work / "ping-mobike.log"
    ping = mesh.nodes["n2"].popen(["ping", "-n", "-q", "-c", "400", "-i", "0.01", "-W", "1",
                                   "-I", "198.19.2.1", "198.19.1.1"], log=log)  # fmt: skip
    time.sleep(1.0)
    n1.add_address("eth0", "198.18.0.101/24")
    n1.ip("addr", "del", "198.18.0.1/24", "dev", "eth0")
    ping.wait(30)
    result = parse_ping(log.read_text())
    print(f"MOBIKE mesh move under a 10 ms ping: {result.transmitted} sent, "
          f"{result.transmitted - result.received} lost")  # fmt: skip

    def moved() -> bool:
        return all(sa["local"].startswith("198.18.0.101:") for sa in mesh.status("n1")["ike_sas"])

    wait_for("n1's SAs on its new address", moved, 15)
    assert mesh.ping("n1", "n2") and mesh.ping("n3", "n1") and mesh.ping("n2", "n3")
    for name in mesh.nodes:
        assert (ike_spis(mesh, name), mesh.child_spis(name)) == before[name], f"{name}: an SA was made again"
    for peer in ("n2", "n3"):
        (sa,) = [s for s in mesh.status(peer)["ike_sas"] if s["remote"].startswith("198.18.0.101:")]
        assert sa["mobike"]
    assert result.transmitted - result.received <= 150
