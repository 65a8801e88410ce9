"""IKE identities a node certificate carries (its name and its IKE ID) belong to one Node only."""

from __future__ import annotations

from typing import Any

import pytest

from meshsec.controller.mesh import MeshIndex, Upsert
from meshsec.controller.resources import ValidationError, parse_resource
from tests.controller.test_mesh_support import node, parsed, site


def _index(*docs: dict[str, Any]) -> MeshIndex:
    index = MeshIndex()
    index.apply(Upsert(r) for r in parsed(site("dc1", ["198.19.1.0/24"]), *docs))
    return index


def _rejected(index: MeshIndex, doc: dict[str, Any]) -> list[str]:
    before = index.resources()
    with pytest.raises(ValidationError) as info:
        index.apply([Upsert(parse_resource(doc))])
    assert index.resources() == before
    return [str(e) for e in info.value.errors]


def test_an_ike_id_naming_another_node_is_refused_either_way_round() -> None:
    index = _index(node("b", "dc1", public=["198.18.0.2"], ike_id="b.test"))
    # b's certificate carries DNS name "b": a Node with IKE ID "b" could be impersonated by b.
    assert _rejected(index, node("a", "dc1", public=["198.18.0.1"], ike_id="b")) == [
        "Node/a: spec.identity.ikeId: 'b' is the name of Node/b"
    ]
    index = _index(node("a", "dc1", public=["198.18.0.1"], ike_id="c"))
    assert _rejected(index, node("c", "dc1", public=["198.18.0.3"], ike_id="c.test")) == [
        "Node/c: metadata.name: 'c' is the IKE ID of Node/a"
    ]


def test_ike_ids_differing_only_in_case_are_duplicates() -> None:
    index = _index(node("a", "dc1", public=["198.18.0.1"], ike_id="GW.test"))
    assert _rejected(index, node("b", "dc1", public=["198.18.0.2"], ike_id="gw.TEST")) == [
        "Node/b: spec.identity.ikeId: 'gw.TEST' is also the IKE ID of Node/a"
    ]


def test_a_node_may_use_its_own_name_as_ike_id() -> None:
    index = _index(node("a", "dc1", public=["198.18.0.1"], ike_id="a"))
    index.apply([Upsert(parse_resource(node("a", "dc1", public=["198.18.0.9"], ike_id="A")))])
    assert index.node("a") is not None
