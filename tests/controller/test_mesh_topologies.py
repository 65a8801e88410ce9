"""What each topology and scope produces, tunnel by tunnel, and how single changes show up as deltas."""

from __future__ import annotations

from typing import Any

import pytest

from meshsec.common.secrets import Secret
from meshsec.controller.mesh import Delete, MeshIndex, PeerKind, Tunnel, Upsert, tunnel_id
from meshsec.controller.mesh.psk import derive_pair_psk
from meshsec.controller.resources import parse_resource
from meshsec.controller.resources.model import AuthMethod, Kind, Mode, StartAction
from tests.controller.test_mesh_support import external, node, parsed, policy, site

SITES = [site("dc1", ["198.19.1.0/24"]), site("dc2", ["198.19.2.0/24"]), site("vpc", ["198.19.30.0/24"])]


def _index(*docs: dict[str, Any]) -> MeshIndex:
    index = MeshIndex()
    index.apply(Upsert(r) for r in parsed(*SITES, *docs))
    return index


def _peers(index: MeshIndex, name: str) -> list[str]:
    return [t.peer for t in sorted(index.desired_tunnels(name), key=lambda t: t.peer)]


def _tunnel(index: MeshIndex, name: str, peer: str) -> Tunnel:
    (t,) = [t for t in index.desired_tunnels(name) if t.peer == peer]
    return t


def _nodes(n: int, **labels_by_index: dict[str, str]) -> list[dict[str, Any]]:
    return [
        node(
            f"n{i}",
            "dc1" if i % 2 == 0 else "dc2",
            public=[f"198.18.0.{i + 1}"],
            private=[f"198.18.1.{i + 1}"],
            labels=labels_by_index.get(f"n{i}", {}),
        )
        for i in range(n)
    ]


def test_full_mesh_node_scope() -> None:
    index = _index(*_nodes(4), policy("mesh", "full-mesh", "node", auth={"method": "psk"}))
    for i in range(4):
        assert _peers(index, f"n{i}") == sorted(f"n{j}" for j in range(4) if j != i)
    a, b = _tunnel(index, "n0", "n1"), _tunnel(index, "n1", "n0")
    assert a.id == b.id == tunnel_id("MeshPolicy/mesh", "n1", "n0")
    assert a.initiator != b.initiator
    assert (a.start_action, b.start_action) == (StartAction.START, StartAction.NONE)
    assert a.auth.method is AuthMethod.PSK and a.auth == b.auth and a.auth.psk_id == f"{a.id}.g1"
    # Different sites: reach the peer on its public address; protect node addresses as /32.
    assert a.remote_endpoints == ("198.18.0.2",) and a.local_endpoints == ("198.18.1.1",)
    assert a.children[0].local_ts == ("198.18.1.1/32",) and a.children[0].remote_ts == ("198.18.1.2/32",)
    assert (a.local_ike_id, a.remote_ike_id) == ("n0.test", "n1.test")
    # Same site: private addresses on both ends.
    assert _tunnel(index, "n0", "n2").remote_endpoints == ("198.18.1.3",)


def test_nat_side_initiates() -> None:
    index = _index(
        node("a", "dc1", public=["198.18.0.1"]),
        node("z", "vpc", private=["198.18.130.1"]),
        policy("mesh", "full-mesh", "node"),
    )
    # "a" sorts first, but "z" has no public address and must open the NAT mapping.
    assert not _tunnel(index, "a", "z").initiator
    assert _tunnel(index, "z", "a").initiator


def test_hub_and_spoke() -> None:
    hubs = {"n0": {"hub": "yes"}, "n1": {"hub": "yes"}}
    index = _index(
        *_nodes(5, **hubs),
        policy("hs", "hub-and-spoke", "node", hubs={"selector": {"matchLabels": {"hub": "yes"}}}),
    )
    assert _peers(index, "n0") == ["n1", "n2", "n3", "n4"]  # hubs mesh among themselves too
    assert _peers(index, "n3") == ["n0", "n1"]  # spokes only reach hubs
    assert _tunnel(index, "n3", "n0").children[0].remote_ts == ("198.18.1.1/32",)


def test_spoke_to_spoke_through_hubs() -> None:
    index = _index(
        *_nodes(4, n0={"hub": "yes"}),
        policy(
            "hs",
            "hub-and-spoke",
            "node",
            hubs={"selector": {"matchLabels": {"hub": "yes"}}, "spokeToSpoke": True},
        ),
    )
    # Without transit prefixes the hub offers each spoke every other member's addresses.
    others = ("198.18.1.1/32", "198.18.1.2/32", "198.18.1.4/32")  # hub n0, spokes n1 and n3
    assert _tunnel(index, "n2", "n0").children[0].remote_ts == others
    assert _tunnel(index, "n0", "n2").children[0].local_ts == others
    assert _tunnel(index, "n2", "n0").children[0].local_ts == ("198.18.1.3/32",)
    with_transit = _index(
        *_nodes(4, n0={"hub": "yes"}),
        policy(
            "hs",
            "hub-and-spoke",
            "node",
            hubs={
                "selector": {"matchLabels": {"hub": "yes"}},
                "spokeToSpoke": True,
                "transitPrefixes": ["198.18.0.0/16"],
            },
        ),
    )
    assert _tunnel(with_transit, "n2", "n0").children[0].remote_ts == ("198.18.0.0/16",)


def test_partial_pairs_and_rules() -> None:
    labels = {"n0": {"tier": "web"}, "n1": {"tier": "db"}, "n2": {"tier": "web"}, "n3": {"tier": "db"}}
    index = _index(
        *_nodes(5, **labels),
        policy(
            "p",
            "partial",
            "node",
            partial={
                "pairs": [["n4", "n0"]],
                "rules": [{"from": {"matchLabels": {"tier": "web"}}, "to": {"matchLabels": {"tier": "db"}}}],
            },
        ),
    )
    assert _peers(index, "n0") == ["n1", "n3", "n4"]
    assert _peers(index, "n1") == ["n0", "n2"]
    assert _peers(index, "n4") == ["n0"]


def test_site_scope_with_two_gateways_per_site() -> None:
    gw = {"role": "gateway"}
    index = _index(
        node("a1", "dc1", public=["198.18.0.1"], labels=gw),
        node("a2", "dc1", public=["198.18.0.2"], labels=gw),
        node("b1", "dc2", public=["198.18.0.3"], labels=gw),
        node("b2", "dc2", public=["198.18.0.4"], labels=gw),
        node("worker", "dc1", public=["198.18.0.5"]),
        policy("dcs", "full-mesh", "site", {"matchExpressions": [{"key": "x", "operator": "DoesNotExist"}]}),
    )
    assert _peers(index, "a1") == ["b1", "b2"]  # none inside its own site; vpc has no gateway
    assert index.desired_tunnels("worker") == []
    t = _tunnel(index, "a2", "b1")
    assert (t.children[0].local_ts, t.children[0].remote_ts) == (("198.19.1.0/24",), ("198.19.2.0/24",))


def test_transport_mode_protects_the_endpoints() -> None:
    index = _index(*_nodes(2), policy("t", "full-mesh", "node", mode="transport"))
    child = _tunnel(index, "n0", "n1").children[0]
    assert child.mode is Mode.TRANSPORT
    assert (child.local_ts, child.remote_ts) == (("198.18.1.1/32",), ("198.18.0.2/32",))


def test_external_gateway_tunnels() -> None:
    gw = {"role": "gateway"}
    index = _index(
        node("a", "dc1", public=["198.18.0.1"], private=["198.18.1.1"], labels=gw),
        node("b", "dc2", public=["198.18.0.2"], labels=gw),
        external("vgw", ["dc1"], ["198.19.200.0/24"], address="198.18.200.1"),
    )
    t = _tunnel(index, "a", "vgw")
    assert t.peer_kind is PeerKind.EXTERNAL_GATEWAY and t.initiator
    assert t.auth.psk_id == "secret/vgw-psk"
    assert t.remote_endpoints == ("198.18.200.1",) and t.remote_ike_id == "198.18.200.1"
    assert (t.children[0].local_ts, t.children[0].remote_ts) == (("198.19.1.0/24",), ("198.19.200.0/24",))
    assert t.ike_proposals == ("aes256gcm16-prfsha384-ecp384",)
    assert index.desired_tunnels("b") == []
    deltas = index.apply([Upsert(parse_resource(external("vgw", ["dc1", "dc2"], ["198.19.200.0/24"])))])
    assert sorted(deltas) == ["b"] and len(deltas["b"].upserts) == 1


def test_single_changes_as_deltas() -> None:
    index = _index(*_nodes(3), policy("mesh", "full-mesh", "node", {"matchLabels": {}}))
    n1 = index.get(Kind.NODE, "n1")
    assert n1 is not None
    # Public address change: the peers in other sites see one upsert each; n1's own view of its
    # tunnels (private source address, peers' addresses) is unchanged, so it gets nothing.
    moved = node("n1", "dc2", public=["198.18.0.99"], private=["198.18.1.2"])
    deltas = index.apply([Upsert(parse_resource(moved))])
    assert sorted(deltas) == ["n0", "n2"]
    assert [len(deltas[n].upserts) for n in ("n0", "n2")] == [1, 1]
    assert deltas["n0"].upserts[0].remote_endpoints == ("198.18.0.99",)
    # Same resource again, or a status-only change: no delta.
    assert index.apply([Upsert(parse_resource(moved))]) == {}
    with_status = dict(moved, status={"phase": "Ready"})
    assert index.apply([Upsert(parse_resource(with_status))]) == {}
    # Move to another site: endpoints switch between private and public for the peers.
    deltas = index.apply(
        [Upsert(parse_resource(node("n1", "dc1", public=["198.18.0.99"], private=["198.18.1.2"])))]
    )
    assert deltas["n0"].upserts[0].remote_endpoints == ("198.18.1.2",)
    # Leave: every peer drops exactly that tunnel.
    deltas = index.apply([Delete(Kind.NODE, "n1")])
    assert {n: (len(d.upserts), len(d.removals)) for n, d in deltas.items()} == {
        "n0": (0, 1),
        "n1": (0, 2),
        "n2": (0, 1),
    }
    assert deltas["n0"].base_version + 1 == deltas["n0"].version == index.version("n0")


def test_psk_rotation_and_derivation() -> None:
    index = _index(*_nodes(3), policy("mesh", "full-mesh", "node", auth={"method": "psk"}))
    deltas = index.apply(
        [
            Upsert(
                parse_resource(
                    policy("mesh", "full-mesh", "node", auth={"method": "psk", "pskGeneration": 2})
                )
            )
        ]
    )
    assert all(t.auth.psk_id.endswith(".g2") for d in deltas.values() for t in d.upserts)
    assert sum(len(d.upserts) for d in deltas.values()) == 6
    master = Secret(bytes(range(32)))
    psk_id = _tunnel(index, "n0", "n1").auth.psk_id
    key = derive_pair_psk(master, psk_id)
    assert len(key) == 32 and key == derive_pair_psk(Secret(bytes(range(32))), psk_id)
    assert key != derive_pair_psk(master, _tunnel(index, "n0", "n2").auth.psk_id)
    assert key != derive_pair_psk(master, psk_id.replace(".g2", ".g1"))
    assert "redacted" in repr(key)
    with pytest.raises(ValueError, match="at least 32 bytes"):
        derive_pair_psk(Secret(b"short"), psk_id)
    with pytest.raises(ValueError, match="not a derived mesh PSK id"):
        derive_pair_psk(master, "secret/vgw-psk")


def test_policy_edit_and_delete() -> None:
    index = _index(*_nodes(4, n0={"hub": "yes"}), policy("mesh", "full-mesh", "node"))
    hs = policy("mesh", "hub-and-spoke", "node", hubs={"selector": {"matchLabels": {"hub": "yes"}}})
    deltas = index.apply([Upsert(parse_resource(hs))])
    # Spoke-spoke tunnels go, hub tunnels stay unchanged (same id, same content): no upserts.
    assert {n: (len(d.upserts), len(d.removals)) for n, d in deltas.items()} == {
        "n1": (0, 2),
        "n2": (0, 2),
        "n3": (0, 2),
    }
    deltas = index.apply([Delete(Kind.MESH_POLICY, "mesh")])
    assert sum(len(d.removals) for d in deltas.values()) == 6
    assert all(index.desired_tunnels(f"n{i}") == [] for i in range(4))
