"""Parsing manifests into typed resources: defaults, proposals, cloud profiles, error paths."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from meshsec.controller.resources import ValidationError, load_yaml, parse_resource, parse_resources
from meshsec.controller.resources.algorithms import ProposalError, ProposalKind, parse_proposal
from meshsec.controller.resources.model import (
    CloudProfileName,
    ExternalGateway,
    MeshPolicy,
    Node,
    Scope,
    Site,
    Topology,
)
from tests.controller.test_mesh_support import external, node, policy, site

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "examples" / "lab-mesh.yaml"


def errors_of(doc: dict[str, Any]) -> list[str]:
    with pytest.raises(ValidationError) as info:
        parse_resource(doc)
    return [str(e) for e in info.value.errors]


def test_example_manifest_parses() -> None:
    resources = load_yaml(EXAMPLE.read_text())
    kinds = sorted((r.kind.value, r.metadata.name) for r in resources)
    assert kinds == [
        ("ExternalGateway", "partner-aws"),
        ("MeshPolicy", "cloud-attach"),
        ("MeshPolicy", "dc-mesh"),
        ("Node", "dc1-gw1"),
        ("Node", "dc2-gw1"),
        ("Node", "vpc-gw1"),
        ("RemoteAccessPool", "staff"),  # the lab's road warrior (docs/lab.md)
        ("RemoteAccessUser", "bob"),
        ("Site", "dc1"),
        ("Site", "dc2"),
        ("Site", "vpc"),
    ]
    eg = next(r for r in resources if isinstance(r, ExternalGateway))
    assert eg.spec.profile is CloudProfileName.AWS
    # The override is canonicalised (prf derived from the integrity algorithm), the rest defaulted.
    assert eg.spec.crypto.ike_proposals == ("aes256-sha256-prfsha256-modp2048",)
    assert eg.spec.crypto.esp_proposals == ("aes256gcm16-ecp384",)
    assert eg.spec.crypto.child_lifetime_s == 3600


def test_site_and_node_fields() -> None:
    s = parse_resource(site("dc1", ["198.19.2.0/24", "198.19.1.0/24"], {"region": "eu"}))
    assert isinstance(s, Site)
    assert [str(p) for p in s.spec.prefixes] == ["198.19.1.0/24", "198.19.2.0/24"]
    assert s.spec.gateway_selector.matches({"role": "gateway"})
    n = parse_resource(node("gw1", "dc1", public=["198.18.0.1"], private=["198.18.1.1"]))
    assert isinstance(n, Node)
    assert n.spec.identity.ike_id == "gw1.test"
    assert [str(a) for a in n.traffic_addresses()] == ["198.18.1.1"]


def test_policy_defaults() -> None:
    p = parse_resource(policy("prod", "full-mesh", "node"))
    assert isinstance(p, MeshPolicy)
    assert p.spec.topology is Topology.FULL_MESH and p.spec.scope is Scope.NODE
    # Agent-to-agent meshes default to the post-quantum hybrid (tests/controller/test_pq_proposals.py).
    assert p.spec.crypto.ike_proposals == ("aes256gcm16-prfsha256-x25519-ke1_mlkem768",)
    assert p.spec.crypto.esp_proposals == ("aes256gcm16-x25519-ke1_mlkem768",)  # hybrid PFS too
    no_pfs = parse_resource(policy("prod", "full-mesh", "node", crypto={"pfs": False}))
    assert isinstance(no_pfs, MeshPolicy)
    assert no_pfs.spec.crypto.esp_proposals == ("aes256gcm16",)
    ah = parse_resource(policy("prod", "full-mesh", "node", protocol="ah"))
    assert isinstance(ah, MeshPolicy)
    assert ah.spec.crypto.esp_proposals == ("sha256-x25519-ke1_mlkem768",)


@pytest.mark.parametrize(
    ("text", "kind", "canonical"),
    [
        ("aes256gcm16-prfsha256-x25519", ProposalKind.IKE, "aes256gcm16-prfsha256-x25519"),
        ("aes128-sha384-ecp256", ProposalKind.IKE, "aes128-sha384-prfsha384-ecp256"),
        ("x25519-aes256gcm16-prfsha512", ProposalKind.IKE, "aes256gcm16-prfsha512-x25519"),
        ("aes256-sha256", ProposalKind.ESP, "aes256-sha256"),
        ("aes128gcm16-modp3072", ProposalKind.ESP, "aes128gcm16-modp3072"),
        ("sha512", ProposalKind.AH, "sha512"),
        ("x25519-prfsha256-chacha20poly1305", ProposalKind.IKE, "chacha20poly1305-prfsha256-x25519"),
        ("chacha20poly1305", ProposalKind.ESP, "chacha20poly1305"),
    ],
)
def test_proposal_canonical_form(text: str, kind: ProposalKind, canonical: str) -> None:
    assert parse_proposal(text, kind).text == canonical


@pytest.mark.parametrize(
    ("text", "kind", "reason"),
    [
        ("aes256gcm16-sha256-prfsha256-x25519", ProposalKind.IKE, "must not be combined"),
        ("aes256gcm16-x25519", ProposalKind.IKE, "needs an explicit prf"),
        ("aes256-sha256-prfsha256", ProposalKind.IKE, "needs a dh group"),
        ("aes256", ProposalKind.ESP, "needs an integrity algorithm"),
        ("aes256gcm16-prfsha256", ProposalKind.ESP, "prf belongs in IKE"),
        ("aes256-sha256", ProposalKind.AH, "AH proposal"),
        ("aes999-sha256", ProposalKind.ESP, "unknown algorithm 'aes999'"),
        ("aes256-aes128-sha256", ProposalKind.ESP, "more than one encryption"),
        ("chacha20poly1305-sha256", ProposalKind.ESP, "AEAD chacha20poly1305 must not be combined"),
        ("chacha20poly1305-x25519", ProposalKind.IKE, "needs an explicit prf"),
    ],
)
def test_proposal_rules(text: str, kind: ProposalKind, reason: str) -> None:
    with pytest.raises(ProposalError, match=reason):
        parse_proposal(text, kind)


def test_errors_name_field_paths() -> None:
    assert errors_of(site("dc1", ["198.19.1.0/33"])) == [
        "Site/dc1: spec.prefixes[0]: invalid CIDR '198.19.1.0/33': "
        "'198.19.1.0/33' does not appear to be an IPv4 or IPv6 network"
    ]
    assert any(
        "spec.prefixes[0]: invalid CIDR '198.19.1.1/24'" in e
        for e in errors_of(site("dc1", ["198.19.1.1/24"]))
    )
    assert errors_of(site("dc1", ["198.19.1.0/24", "198.19.1.128/25"])) == [
        "Site/dc1: spec.prefixes: 198.19.1.0/24 overlaps 198.19.1.128/25"
    ]
    bad = policy("prod", "full-mesh", "node", crypto={"ikeProposals": ["aes256gcm16-prfsha256-x448"]})
    assert errors_of(bad) == [
        "MeshPolicy/prod: spec.crypto.ikeProposals[0]: 'aes256gcm16-prfsha256-x448': unknown algorithm 'x448'"
    ]
    typo = policy("prod", "full-mesh", "node", topolgy="full-mesh")
    assert "MeshPolicy/prod: spec.topolgy: unknown field" in errors_of(typo)
    missing = node("gw1", "dc1", public=["198.18.0.1"])
    del missing["spec"]["site"]
    assert errors_of(missing) == ["Node/gw1: spec.site: required"]
    assert errors_of(node("gw1", "dc1", public=["198.18.0.300"])) == [
        "Node/gw1: spec.endpoints.public[0]: invalid IP address '198.18.0.300'"
    ]


def test_every_problem_of_a_manifest_is_reported_at_once() -> None:
    doc = policy("prod", "hub-and-spoke", "sites", mode="tunel", crypto={"ikeLifetimeSeconds": 10})
    doc["apiVersion"] = "v1"
    assert errors_of(doc) == sorted(
        [
            "MeshPolicy/prod: apiVersion: must be meshsec.io/v1alpha1",
            "MeshPolicy/prod: spec.crypto.ikeLifetimeSeconds: 10 is outside 300..86400",
            "MeshPolicy/prod: spec.hubs: required for topology hub-and-spoke",
            "MeshPolicy/prod: spec.mode: must be one of tunnel, transport",
            "MeshPolicy/prod: spec.scope: must be one of site, node",
        ]
    )


def test_engine_support_is_separate_from_profile_acceptance() -> None:
    sha1 = policy("prod", "full-mesh", "node", crypto={"ikeProposals": ["aes256-sha1-modp2048"]})
    assert errors_of(sha1) == [
        "MeshPolicy/prod: spec.crypto.ikeProposals[0]: sha1, prfsha1: not supported by meshsec agents yet"
    ]
    aws_x25519 = external(
        "vgw", ["dc1"], ["198.19.200.0/24"], crypto={"ikeProposals": ["aes256gcm16-prfsha256-x25519"]}
    )
    assert errors_of(aws_x25519) == [
        "ExternalGateway/vgw: spec.crypto.ikeProposals[0]: x25519 not accepted by the aws profile"
    ]
    # RFC 7634 ChaCha20-Poly1305: meshsec agents run it, the cloud gateways do not offer it.
    chacha = {"ikeProposals": ["chacha20poly1305-prfsha256-x25519"],
              "espProposals": ["chacha20poly1305-x25519"]}
    mesh = parse_resource(policy("prod", "full-mesh", "node", crypto=chacha))
    assert isinstance(mesh, MeshPolicy)
    assert mesh.spec.crypto.ike_proposals == ("chacha20poly1305-prfsha256-x25519",)
    assert mesh.spec.crypto.esp_proposals == ("chacha20poly1305-x25519",)
    assert errors_of(external("vgw", ["dc1"], ["198.19.200.0/24"], profile="gcp", crypto=chacha)) == [
        "ExternalGateway/vgw: spec.crypto.espProposals[0]: chacha20poly1305 not accepted by the gcp profile",
        "ExternalGateway/vgw: spec.crypto.ikeProposals[0]: chacha20poly1305 not accepted by the gcp profile",
    ]
    aws_long = external("vgw", ["dc1"], ["198.19.200.0/24"], crypto={"ikeLifetimeSeconds": 30000})
    assert errors_of(aws_long) == [
        "ExternalGateway/vgw: spec.crypto.ikeLifetimeSeconds: 30000 is outside 900..28800"
    ]
    gcp_ok = parse_resource(
        external(
            "vpn",
            ["dc1"],
            ["198.19.200.0/24"],
            profile="gcp",
            crypto={"ikeProposals": ["aes256gcm16-prfsha256-x25519"]},
        )
    )
    assert isinstance(gcp_ok, ExternalGateway)
    assert (gcp_ok.spec.crypto.ike_lifetime_s, gcp_ok.spec.crypto.child_lifetime_s) == (36000, 10800)


def test_cloud_profile_defaults() -> None:
    azure = parse_resource(external("az", ["dc1"], ["198.19.200.0/24"], profile="azure"))
    assert isinstance(azure, ExternalGateway)
    # Azure's default phase 2 is GCM-AES-256 without PFS.
    assert azure.spec.crypto.esp_proposals == ("aes256gcm16",) and not azure.spec.crypto.pfs
    aws = parse_resource(external("vgw", ["dc1"], ["198.19.200.0/24"]))
    assert isinstance(aws, ExternalGateway)
    assert aws.spec.crypto.ike_lifetime_s == 28800 and aws.spec.crypto.pfs


def test_pfs_must_match_the_child_proposals() -> None:
    doc = policy("prod", "full-mesh", "node", crypto={"pfs": True, "espProposals": ["aes256gcm16"]})
    assert errors_of(doc) == [
        "MeshPolicy/prod: spec.crypto.espProposals[0]: 'aes256gcm16' has no dh group but pfs is true"
    ]


def test_inline_secrets_are_refused_without_echoing_them() -> None:
    doc = external("vgw", ["dc1"], ["198.19.200.0/24"])
    doc["spec"]["auth"] = {"psk": "hunter2-very-secret"}
    errors = errors_of(doc)
    refused = "inline secrets are not accepted; reference a Secret with pskSecretRef"
    assert f"ExternalGateway/vgw: spec.auth.psk: {refused}" in errors
    assert "ExternalGateway/vgw: spec.auth.pskSecretRef: required" in errors
    assert not any("hunter2" in e for e in errors)


def test_structural_policy_errors() -> None:
    assert errors_of(policy("p", "full-mesh", "site", mode="transport")) == [
        "MeshPolicy/p: spec.mode: transport mode protects node addresses only; use scope node"
    ]
    assert errors_of(policy("p", "partial", "node")) == [
        "MeshPolicy/p: spec.partial: topology partial needs pairs or rules"
    ]
    assert errors_of(policy("p", "full-mesh", "node", hubs={"selector": {}})) == [
        "MeshPolicy/p: spec.hubs: only valid for topology hub-and-spoke, not full-mesh"
    ]
    assert errors_of(policy("p", "partial", "node", partial={"pairs": [["a", "a"]]})) == [
        "MeshPolicy/p: spec.partial: topology partial needs pairs or rules",
        "MeshPolicy/p: spec.partial.pairs[0]: pairs 'a' with itself",
    ]


def test_selectors_and_labels() -> None:
    p = parse_resource(
        policy(
            "p",
            "full-mesh",
            "node",
            members={
                "matchLabels": {"env": "prod"},
                "matchExpressions": [
                    {"key": "zone", "operator": "In", "values": ["a", "b"]},
                    {"key": "drain", "operator": "DoesNotExist"},
                ],
            },
        )
    )
    assert isinstance(p, MeshPolicy)
    sel = p.spec.members
    assert sel.matches({"env": "prod", "zone": "a"})
    assert not sel.matches({"env": "prod", "zone": "c"})
    assert not sel.matches({"env": "prod", "zone": "a", "drain": "yes"})
    bad = policy("p", "full-mesh", "node", members={"matchExpressions": [{"key": "z", "operator": "In"}]})
    assert errors_of(bad) == [
        "MeshPolicy/p: spec.members.matchExpressions[0].values: In needs at least one value"
    ]
    assert errors_of(node("gw1", "dc1", public=["198.18.0.1"], labels={"role": "bad value"})) == [
        "Node/gw1: metadata.labels.role: invalid label value 'bad value'"
    ]
    assert errors_of(node("GW1", "dc1", public=["198.18.0.1"])) == [
        "Node/GW1: metadata.name: must be a lowercase DNS subdomain name"
    ]


def test_batch_parse_reports_all_manifests_and_yaml_errors() -> None:
    with pytest.raises(ValidationError) as info:
        parse_resources([site("a", ["nope"]), {"kind": "Gadget", "metadata": {"name": "x"}}, "text"])
    assert [str(e) for e in info.value.errors] == [
        "Gadget/x: kind: must be one of Site, Node, MeshPolicy, ExternalGateway, RemoteAccessPool, "
        "RemoteAccessUser",
        "Resource: must be a mapping, got str",
        "Site/a: spec.prefixes[0]: invalid CIDR 'nope': 'nope' does not appear to be an IPv4 or IPv6 network",
    ]
    with pytest.raises(ValidationError, match="YAML"):
        load_yaml("kind: [unclosed")


def test_canonical_manifest_round_trips() -> None:
    from meshsec.controller.resources.serialize import to_manifest

    resources = load_yaml(EXAMPLE.read_text())
    resources.append(
        parse_resource(
            policy(
                "p",
                "partial",
                "node",
                {"matchExpressions": [{"key": "z", "operator": "In", "values": ["b", "a"]}]},
                partial={"pairs": [["b", "a"]], "rules": [{"from": {"matchLabels": {"t": "x"}}, "to": {}}]},
                auth={"method": "psk", "pskGeneration": 3},
                mode="transport",
            )
        )
    )
    resources.append(
        parse_resource(
            policy(
                "h",
                "hub-and-spoke",
                "site",
                protocol="ah",
                hubs={
                    "selector": {"matchLabels": {"hub": "yes"}},
                    "spokeToSpoke": True,
                    "transitPrefixes": ["10.0.0.0/8"],
                },
            )
        )
    )
    with_status = node("n", "dc1", public=["198.18.0.1"])
    with_status["spec"]["identity"]["certificateId"] = "ab:cd"
    with_status["status"] = {
        "phase": "Ready",
        "observedEndpoints": ["198.18.0.7"],
        "conditions": [{"type": "Connected", "status": "True", "reason": "Agent"}],
    }
    resources.append(parse_resource(with_status))
    for resource in resources:
        manifest = to_manifest(resource)
        assert parse_resource(manifest) == resource
        assert to_manifest(parse_resource(manifest)) == manifest


@pytest.mark.parametrize(
    "text",
    [
        "a: " + "[" * 20_000 + "]" * 20_000,  # nesting Python's recursion limit cannot follow
        "a: &x [*x]",  # an alias inside its own anchor
        'a: &a ["x","x","x","x","x","x","x","x","x"]\n'
        + "".join(f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)),
    ],
    ids=["deep", "self-alias", "billion-laughs"],
)
def test_hostile_yaml_is_a_validation_error(text: str) -> None:
    with pytest.raises(ValidationError, match="YAML"):
        load_yaml(text)


def test_meshnode_is_another_name_for_node() -> None:
    """The CRD's kind name parses as the API's Node and is stored under that name."""
    from meshsec.controller.resources.model import Kind
    from meshsec.controller.resources.parse import canonical_kind
    from meshsec.controller.resources.serialize import to_manifest

    doc = {
        "apiVersion": "meshsec.io/v1alpha1",
        "kind": "MeshNode",
        "metadata": {"name": "gw1"},
        "spec": {"site": "dc1", "endpoints": {"public": ["198.18.1.1"]}},
    }
    node = parse_resource(doc)
    assert node.kind is Kind.NODE and to_manifest(node)["kind"] == "Node"
    assert canonical_kind("MeshNode") == "Node" and canonical_kind("Gadget") == "Gadget"
