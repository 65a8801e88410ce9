"""Post-quantum names in resources: ML-KEM methods, RFC 9370 keN_ tokens, and the defaults of
agent-to-agent meshes versus cloud profiles."""

from __future__ import annotations

from typing import Any

import pytest

from meshsec.controller.resources import ValidationError, algorithms, cloud, parse_resource
from meshsec.controller.resources.algorithms import (
    ProposalError,
    ProposalKind,
    parse_proposal,
    unsupported_by_agents,
)
from meshsec.controller.resources.model import ExternalGateway, MeshPolicy
from tests.controller.test_mesh_support import external, policy

HYBRID = "aes256gcm16-prfsha256-x25519-ke1_mlkem768"
TWO_ADDKE = "aes256gcm16-prfsha384-ecp384-ke1_mlkem1024-ke2_mlkem768"
HYBRID_ESP = "aes256gcm16-x25519-ke1_mlkem768"
TWO_ADDKE_ESP = "aes256gcm16-ecp384-ke1_mlkem1024-ke2_mlkem768"


def _errors(doc: dict[str, Any]) -> list[str]:
    with pytest.raises(ValidationError) as info:
        parse_resource(doc)
    return [str(e) for e in info.value.errors]


@pytest.mark.parametrize(
    ("text", "kind", "canonical"),
    [
        (HYBRID, ProposalKind.IKE, HYBRID),
        # Order is fixed: base transforms first, then ke1..ke7 by number.
        ("ke2_mlkem1024-aes256gcm16-ecp384-ke1_mlkem768-prfsha384", ProposalKind.IKE,
         "aes256gcm16-prfsha384-ecp384-ke1_mlkem768-ke2_mlkem1024"),
        ("aes256gcm16-x25519-ke1_mlkem768", ProposalKind.ESP, "aes256gcm16-x25519-ke1_mlkem768"),
        ("aes256gcm16-prfsha256-mlkem768", ProposalKind.IKE, "aes256gcm16-prfsha256-mlkem768"),
    ],
)  # fmt: skip
def test_hybrid_proposals_parse_and_canonicalise(text: str, kind: ProposalKind, canonical: str) -> None:
    assert parse_proposal(text, kind).text == canonical


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("aes256gcm16-prfsha256-x25519-ke8_mlkem768", "ke1 .. ke7"),
        ("aes256gcm16-prfsha256-x25519-ke1_mlkem999", "unknown key exchange method 'mlkem999'"),
        ("aes256gcm16-prfsha256-x25519-ke1_sha256", "unknown key exchange method 'sha256'"),
        ("aes256gcm16-prfsha256-x25519-ke1_mlkem768-ke1_mlkem1024", "more than one method"),
        ("aes256gcm16-prfsha256-x25519-ke1_none", "second proposal without ke1_"),
        ("aes256gcm16-prfsha256-ke1_mlkem768", "needs a dh group"),
    ],
)
def test_bad_additional_key_exchanges_are_named(text: str, reason: str) -> None:
    with pytest.raises(ProposalError, match=reason):
        parse_proposal(text, ProposalKind.IKE)


def test_esp_additional_key_exchanges_need_a_dh_group() -> None:
    with pytest.raises(ProposalError, match="need a dh group first"):
        parse_proposal("aes256gcm16-ke1_mlkem768", ProposalKind.ESP)


def test_mlkem512_is_known_but_not_run_by_agents() -> None:
    assert unsupported_by_agents(
        parse_proposal("aes256gcm16-prfsha256-x25519-ke1_mlkem512", ProposalKind.IKE)
    )
    assert algorithms.DH_GROUP_NUMBERS["mlkem768"] == 36


def test_additional_key_exchanges_are_accepted_for_ike_and_esp() -> None:
    assert unsupported_by_agents(parse_proposal(HYBRID, ProposalKind.IKE)) == ()
    p = parse_resource(policy("prod", "full-mesh", "node", crypto={"ikeProposals": [TWO_ADDKE]}))
    assert isinstance(p, MeshPolicy) and p.spec.crypto.ike_proposals == (TWO_ADDKE,)
    # espProposals left out: the mesh default's hybrid PFS, additional key exchange included.
    assert p.spec.crypto.esp_proposals == ("aes256gcm16-x25519-ke1_mlkem768",)
    esp = parse_resource(policy("prod", "full-mesh", "node", crypto={"espProposals": [TWO_ADDKE_ESP]}))
    assert isinstance(esp, MeshPolicy) and esp.spec.crypto.esp_proposals == (TWO_ADDKE_ESP,)
    weak = HYBRID_ESP.replace("768", "512")
    mlkem512 = policy("prod", "full-mesh", "node", crypto={"espProposals": [weak]})
    assert _errors(mlkem512) == [
        "MeshPolicy/prod: spec.crypto.espProposals[0]: mlkem512: not supported by meshsec agents yet"
    ]


def test_meshes_default_to_hybrid_once_agents_run_it() -> None:
    p = parse_resource(policy("prod", "full-mesh", "node"))
    assert isinstance(p, MeshPolicy)
    assert p.spec.crypto.ike_proposals == (HYBRID,)
    assert p.spec.crypto.esp_proposals == ("aes256gcm16-x25519-ke1_mlkem768",)
    assert p.spec.crypto.ike_proposals == cloud.MESH_DEFAULTS.ike_proposals
    assert p.spec.crypto.esp_proposals == cloud.MESH_DEFAULTS.esp_proposals


def test_the_hybrid_mesh_defaults_are_well_formed() -> None:
    for text in cloud._HYBRID.ike_proposals:
        assert parse_proposal(text, ProposalKind.IKE).additional == ((1, "mlkem768"),)
    for text in cloud._HYBRID.esp_proposals:
        esp = parse_proposal(text, ProposalKind.ESP)
        assert not unsupported_by_agents(esp) and esp.dh == "x25519"
        assert esp.additional == ((1, "mlkem768"),)


@pytest.mark.parametrize("profile", ["aws", "azure", "gcp"])
def test_cloud_profiles_keep_classical_defaults_and_refuse_mlkem(profile: str) -> None:
    gw = parse_resource(external("gw", ["dc1"], ["198.19.200.0/24"], profile=profile))
    assert isinstance(gw, ExternalGateway)
    assert not any("ke1_" in p or "mlkem" in p for p in gw.spec.crypto.ike_proposals)
    doc = external("gw", ["dc1"], ["198.19.200.0/24"], profile=profile, crypto={"ikeProposals": [HYBRID]})
    errors = _errors(doc)
    assert len(errors) == 1 and f"mlkem768 not accepted by the {profile} profile" in errors[0]
