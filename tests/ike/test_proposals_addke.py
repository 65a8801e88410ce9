"""RFC 9370 additional key exchanges in proposal strings and proposal selection."""

from __future__ import annotations

import pytest

from meshsec.agent.ike.constants import DhId, ProtocolId, TransformType
from meshsec.agent.ike.payloads import Transform
from meshsec.agent.ike.proposals import (
    ProposalError,
    accept_response,
    additional_ke_text,
    parse_proposals,
    select_proposal,
)

IKE = ProtocolId.IKE
KE1, KE2 = TransformType.ADDKE1, TransformType.ADDKE2


def _one(text: str, protocol: ProtocolId = IKE) -> tuple[Transform, ...]:
    (spec,) = parse_proposals(text, protocol)
    return spec.transforms


def test_strongswan_syntax_gives_addke_transforms() -> None:
    ts = _one("aes256gcm16-prfsha256-x25519-ke1_mlkem768")
    assert Transform(TransformType.DH, DhId.CURVE25519) in ts
    assert Transform(KE1, DhId.ML_KEM_768) in ts
    (spec,) = parse_proposals("aes256gcm16-prfsha384-ecp384-ke1_mlkem1024-ke2_none-ke2_mlkem768", IKE)
    assert spec.additional_key_exchanges() == {KE1: [DhId.ML_KEM_1024], KE2: [DhId.NONE, DhId.ML_KEM_768]}


def test_esp_proposals_take_additional_key_exchanges_for_pfs() -> None:
    (spec,) = parse_proposals("aes256gcm16-x25519-ke1_mlkem768", ProtocolId.ESP)
    assert spec.additional_key_exchanges() == {KE1: [DhId.ML_KEM_768]}
    # IKE_AUTH carries the first CHILD_SA without any key exchange (RFC 7296 1.2, RFC 9370 2.2.1).
    types = {t.type for t in spec.to_proposal(1, b"\0" * 4, without_dh=True).transforms}
    assert TransformType.DH not in types and KE1 not in types


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("aes256gcm16-prfsha256-x25519-ke8_mlkem768", "ke1..ke7"),
        ("aes256gcm16-prfsha256-x25519-ke0_mlkem768", "ke1..ke7"),
        ("aes256gcm16-prfsha256-x25519-ke1_mlkem999", "unknown key exchange method 'mlkem999'"),
        ("aes256gcm16-ke1_mlkem768", "need a key exchange method"),
    ],
)
def test_bad_addke_tokens_are_named(text: str, reason: str) -> None:
    protocol = ProtocolId.ESP if text.count("-") == 1 else IKE
    with pytest.raises(ProposalError, match=reason):
        parse_proposals(text, protocol)


def test_hybrid_matches_hybrid_and_records_the_addke_choice() -> None:
    ours = parse_proposals("aes256gcm16-prfsha256-x25519-ke1_mlkem768", IKE)
    theirs = parse_proposals("aes256gcm16-prfsha256-x25519-ke1_mlkem1024-ke1_mlkem768", IKE)
    chosen = select_proposal(ours, (theirs[0].to_proposal(1, b""),))
    assert chosen is not None and chosen.dh == DhId.CURVE25519
    assert chosen.addke == ((KE1, DhId.ML_KEM_768),)
    assert additional_ke_text(chosen.addke) == "ke1_mlkem768"
    answer = chosen.as_proposal(b"")
    assert accept_response((theirs[0].to_proposal(1, b""),), answer) == chosen


def test_a_required_addke_does_not_match_a_classical_peer() -> None:
    hybrid = parse_proposals("aes256gcm16-prfsha256-x25519-ke1_mlkem768", IKE)
    classic = parse_proposals("aes256gcm16-prfsha256-x25519", IKE)
    assert select_proposal(hybrid, (classic[0].to_proposal(1, b""),)) is None
    assert select_proposal(classic, (hybrid[0].to_proposal(1, b""),)) is None


def test_ke_none_makes_the_addke_optional_both_ways() -> None:
    optional = parse_proposals("aes256gcm16-prfsha256-x25519-ke1_mlkem768-ke1_none", IKE)
    classic = parse_proposals("aes256gcm16-prfsha256-x25519", IKE)
    chosen = select_proposal(optional, (classic[0].to_proposal(1, b""),))
    assert chosen is not None and chosen.addke == ()
    # We offered the option and a classical responder answered without any ADDKE transform.
    offered = (optional[0].to_proposal(1, b""),)
    assert accept_response(offered, chosen.as_proposal(b"")) is not None
    # A hybrid-capable peer gets ML-KEM when we prefer it.
    chosen = select_proposal(optional, offered)
    assert chosen is not None and chosen.addke == ((KE1, DhId.ML_KEM_768),)


def test_an_answer_without_the_required_addke_is_refused() -> None:
    offered = (parse_proposals("aes256gcm16-prfsha256-x25519-ke1_mlkem768", IKE)[0].to_proposal(1, b""),)
    classic = parse_proposals("aes256gcm16-prfsha256-x25519", IKE)[0].to_proposal(1, b"")
    assert accept_response(offered, classic) is None


def test_ignore_dh_ignores_additional_key_exchanges_too() -> None:
    ours = parse_proposals("aes256gcm16-x25519-ke1_mlkem768", ProtocolId.ESP)
    theirs = parse_proposals("aes256gcm16", ProtocolId.ESP)[0].to_proposal(1, b"\0" * 4)
    chosen = select_proposal(ours, (theirs,), ignore_dh=True)
    assert chosen is not None and chosen.addke == () and chosen.dh is None
