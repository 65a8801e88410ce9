"""Cross-resource validation through MeshIndex.apply: references, overlaps, hubs, atomic batches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from meshsec.controller.mesh import Delete, MeshIndex, Upsert
from meshsec.controller.resources import ValidationError, load_yaml, parse_resource
from meshsec.controller.resources.model import Kind
from tests.controller.test_mesh_support import external, node, parsed, policy, site

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "examples" / "lab-mesh.yaml"


def _index(*docs: dict[str, Any]) -> MeshIndex:
    index = MeshIndex()
    index.apply(Upsert(r) for r in parsed(*docs))
    return index


def _rejected(index: MeshIndex, changes: list[Upsert | Delete]) -> list[str]:
    before = index.resources()
    with pytest.raises(ValidationError) as info:
        index.apply(changes)
    assert index.resources() == before, "a rejected batch must change nothing"
    return [str(e) for e in info.value.errors]


def _up(doc: dict[str, Any]) -> Upsert:
    return Upsert(parse_resource(doc))


BASE = [site("dc1", ["198.19.1.0/24"]), site("dc2", ["198.19.2.0/24"])]


def test_example_is_valid() -> None:
    index = MeshIndex()
    index.apply(Upsert(r) for r in load_yaml(EXAMPLE.read_text()))
    assert index.validate_all() == []


def test_overlapping_site_prefixes_are_rejected_and_the_batch_is_atomic() -> None:
    index = _index(*BASE)
    errors = _rejected(
        index,
        [
            _up(node("gw3", "dc1", public=["198.18.0.3"])),
            _up(site("dc3", ["198.19.2.128/25"])),
        ],
    )
    assert errors == [
        "Site/dc3: spec.prefixes: 198.19.2.128/25 overlaps Site/dc2 prefix 198.19.2.0/24",
    ]
    assert index.get(Kind.NODE, "gw3") is None
    assert _rejected(index, [_up(external("vgw", ["dc1"], ["198.19.1.0/25"]))]) == [
        "ExternalGateway/vgw: spec.prefixes: 198.19.1.0/25 overlaps Site/dc1 prefix 198.19.1.0/24"
    ]
    # IPv4 and IPv6 prefixes never overlap each other.
    index.apply([_up(site("dc4", ["2001:db8::/64"]))])


def test_dangling_references() -> None:
    index = _index(*BASE, node("gw1", "dc1", public=["198.18.0.1"]))
    assert _rejected(index, [_up(node("gw2", "dc9", public=["198.18.0.2"]))]) == [
        "Node/gw2: spec.site: references unknown Site/dc9"
    ]
    assert _rejected(index, [_up(external("vgw", ["dc1", "dc7"], ["198.19.200.0/24"]))]) == [
        "ExternalGateway/vgw: spec.sites[1]: references unknown Site/dc7"
    ]
    assert _rejected(index, [_up(policy("p", "partial", "node", partial={"pairs": [["gw1", "ghost"]]}))]) == [
        "MeshPolicy/p: spec.partial.pairs[0]: references unknown Node/ghost"
    ]
    assert _rejected(index, [Delete(Kind.SITE, "dc1")]) == [
        "Site/dc1: cannot delete: still referenced by Node/gw1"
    ]
    # Deleting the referrer in the same batch is fine.
    index.apply([Delete(Kind.SITE, "dc1"), Delete(Kind.NODE, "gw1")])


def test_node_named_by_a_pair_cannot_leave_alone() -> None:
    index = _index(
        *BASE,
        node("a", "dc1", public=["198.18.0.1"]),
        node("b", "dc2", public=["198.18.0.2"]),
        policy("p", "partial", "node", partial={"pairs": [["a", "b"]]}),
    )
    assert _rejected(index, [Delete(Kind.NODE, "b")]) == [
        "Node/b: cannot delete: still referenced by MeshPolicy/p spec.partial.pairs"
    ]


def test_hub_selector_selecting_nothing() -> None:
    index = _index(*BASE, node("a", "dc1", public=["198.18.0.1"]))
    prod = policy("prod", "hub-and-spoke", "node", hubs={"selector": {"matchLabels": {"hub": "yes"}}})
    assert _rejected(index, [_up(prod)]) == ["MeshPolicy/prod: spec.hubs.selector: selects no node"]
    index.apply([_up(node("h", "dc2", public=["198.18.0.9"], labels={"hub": "yes"})), _up(prod)])
    # Removing the last hub would strand the spokes: refused unless the policy goes too.
    assert _rejected(index, [Delete(Kind.NODE, "h")]) == [
        "MeshPolicy/prod: spec.hubs.selector: selects no node"
    ]
    assert _rejected(index, [_up(node("h", "dc2", public=["198.18.0.9"]))]) == [
        "MeshPolicy/prod: spec.hubs.selector: selects no node"
    ]
    index.apply([Delete(Kind.NODE, "h"), Delete(Kind.MESH_POLICY, "prod")])


def test_hub_site_without_gateway_leaves_spokes_unreachable() -> None:
    index = _index(
        site("dc1", ["198.19.1.0/24"], {"hub": "yes"}),
        site("dc2", ["198.19.2.0/24"]),
        node("gw2", "dc2", public=["198.18.0.2"], labels={"role": "gateway"}),
    )
    hs = policy("hs", "hub-and-spoke", "site", hubs={"selector": {"matchLabels": {"hub": "yes"}}})
    assert _rejected(index, [_up(hs)]) == [
        "MeshPolicy/hs: spec.hubs.selector: hub sites dc1 have no gateway node; spokes unreachable"
    ]
    index.apply([_up(node("gw1", "dc1", public=["198.18.0.1"], labels={"role": "gateway"})), _up(hs)])
    assert _rejected(index, [_up(node("gw1", "dc1", public=["198.18.0.1"]))]) == [
        "MeshPolicy/hs: spec.hubs.selector: hub sites dc1 have no gateway node; spokes unreachable"
    ]


def test_transit_prefixes_must_cover_every_spoke() -> None:
    index = _index(
        site("dc1", ["198.19.1.0/24"], {"hub": "yes"}),
        site("dc2", ["198.19.2.0/24"]),
        site("far", ["198.18.250.0/24"]),
        *[
            node(f"gw{i}", s, public=[f"198.18.0.{i}"], labels={"role": "gateway"})
            for i, s in enumerate(["dc1", "dc2", "far"])
        ],
    )
    hs = policy(
        "hs",
        "hub-and-spoke",
        "site",
        hubs={
            "selector": {"matchLabels": {"hub": "yes"}},
            "spokeToSpoke": True,
            "transitPrefixes": ["198.19.0.0/16"],
        },
    )
    assert _rejected(index, [_up(hs)]) == [
        "MeshPolicy/hs: spec.hubs.transitPrefixes: do not cover Site/far prefix 198.18.250.0/24; "
        "spoke unreachable from other spokes"
    ]


def test_duplicate_ike_ids_and_duplicate_batch_entries() -> None:
    index = _index(*BASE, node("a", "dc1", public=["198.18.0.1"], ike_id="gw.test"))
    assert _rejected(index, [_up(node("b", "dc1", public=["198.18.0.2"], ike_id="gw.test"))]) == [
        "Node/b: spec.identity.ikeId: 'gw.test' is also the IKE ID of Node/a"
    ]
    assert _rejected(index, [_up(site("dc3", ["198.19.3.0/24"])), Delete(Kind.SITE, "dc3")]) == [
        "Site/dc3: appears more than once in the batch"
    ]


def test_validation_waits_for_the_whole_batch() -> None:
    index = MeshIndex()
    # The node comes before its site in the batch; only the resulting set is judged.
    deltas = index.apply(
        [
            _up(node("a", "dc1", public=["198.18.0.1"])),
            _up(node("b", "dc1", public=["198.18.0.2"])),
            _up(policy("m", "full-mesh", "node")),
            _up(site("dc1", ["198.19.1.0/24"])),
        ]
    )
    assert sorted(deltas) == ["a", "b"]
