"""Configuration parsing (strongSwan-style proposal strings, identities, selectors) and the
pure negotiation helpers: proposal selection, TS narrowing, NAT-T helpers."""

from __future__ import annotations

import ipaddress

import pytest

from meshsec.agent.ike.address import Address
from meshsec.agent.ike.config import ChildConfig, ConfigError, IkeConfig, RetransmitConfig
from meshsec.agent.ike.constants import (
    DhId,
    EncrId,
    EsnId,
    IdType,
    IntegId,
    PrfId,
    ProtocolId,
    TransformType,
)
from meshsec.agent.ike.identity import Identity
from meshsec.agent.ike.natt import classify_4500, nat_detection_hash
from meshsec.agent.ike.payloads import Proposal, Transform
from meshsec.agent.ike.proposals import ProposalError, accept_response, parse_proposals, select_proposal
from meshsec.agent.ike.ts import Ts, is_subset, narrow
from meshsec.common.secrets import Secret

from .peers import Pair, child, ike_config, responder_config

E, P, INTEG, D, N = (
    TransformType.ENCR,
    TransformType.PRF,
    TransformType.INTEG,
    TransformType.DH,
    TransformType.ESN,
)


def test_parse_ike_aead_proposal() -> None:
    (spec,) = parse_proposals("aes256gcm16-prfsha256-x25519", ProtocolId.IKE)
    assert spec.transforms == (
        Transform(E, EncrId.AES_GCM_16, 256),
        Transform(P, PrfId.HMAC_SHA2_256),
        Transform(D, DhId.CURVE25519),
    )


def test_parse_ike_cbc_proposal_derives_prf_from_integrity() -> None:
    (spec,) = parse_proposals("aes128-sha256-ecp256", ProtocolId.IKE)
    assert spec.transforms == (
        Transform(E, EncrId.AES_CBC, 128),
        Transform(P, PrfId.HMAC_SHA2_256),
        Transform(INTEG, IntegId.HMAC_SHA2_256_128),
        Transform(D, DhId.ECP_256),
    )


def test_parse_esp_and_ah() -> None:
    esp, esp2 = parse_proposals("aes128gcm16-aes256gcm16, aes256-sha512-esn", ProtocolId.ESP)
    assert esp.transforms == (
        Transform(E, EncrId.AES_GCM_16, 128),
        Transform(E, EncrId.AES_GCM_16, 256),
        Transform(N, EsnId.NO_ESN),
    )
    assert Transform(N, EsnId.ESN) in esp2.transforms
    (ah,) = parse_proposals("sha384", ProtocolId.AH)
    assert ah.transforms == (Transform(INTEG, IntegId.HMAC_SHA2_384_192), Transform(N, EsnId.NO_ESN))


@pytest.mark.parametrize(
    ("text", "protocol", "fragment"),
    [
        ("", ProtocolId.IKE, "empty"),
        ("aes128-sha256-blowfish", ProtocolId.IKE, "'blowfish'"),
        ("aes128-sha256", ProtocolId.IKE, "DH group"),
        ("aes128gcm16-x25519", ProtocolId.IKE, "prf token"),
        ("aes128gcm16-sha256-prfsha256-x25519", ProtocolId.IKE, "AEAD"),
        ("aes128-aes128gcm16-sha256-x25519", ProtocolId.IKE, "mixes"),
        ("aes128-sha256-x25519-esn", ProtocolId.IKE, "esn"),
        ("aes128-prfsha256-sha256", ProtocolId.ESP, "prf"),
        ("sha256", ProtocolId.ESP, "cipher"),
        ("aes128", ProtocolId.ESP, "integrity"),
        ("aes128-sha256", ProtocolId.AH, "only integrity"),
    ],
)
def test_bad_proposal_strings(text: str, protocol: ProtocolId, fragment: str) -> None:
    with pytest.raises(ProposalError, match=fragment):
        parse_proposals(text, protocol)


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ConfigError, match="connection 'x': proposals: unknown algorithm 'md5'"):
        ike_config(name="x", proposals="aes128-md5-x25519")
    with pytest.raises(ConfigError, match="child 'c': mode"):
        child(name="c", mode="beet")
    with pytest.raises(ConfigError, match="child 'c': local_ts"):
        ChildConfig("c", (), (Ts.from_cidr("198.19.0.0/24"),))
    with pytest.raises(ConfigError, match="psk"):
        IkeConfig("x", "a.example", "b.example", Secret(b""))
    with pytest.raises(ConfigError, match="identity"):
        ike_config(local_id="@#zz")
    with pytest.raises(ConfigError, match="duplicate child"):
        ike_config(children=(child(), child()))
    with pytest.raises(ConfigError, match="retransmit"):
        RetransmitConfig(timeout=0)
    assert "s3cret" not in repr(ike_config())


@pytest.mark.parametrize(
    ("text", "id_type", "data"),
    [
        ("198.18.0.1", IdType.IPV4_ADDR, ipaddress.ip_address("198.18.0.1").packed),
        ("2001:db8::1", IdType.IPV6_ADDR, ipaddress.ip_address("2001:db8::1").packed),
        ("node1.example", IdType.FQDN, b"node1.example"),
        ("@node1.example", IdType.FQDN, b"node1.example"),
        ("ops@example.org", IdType.RFC822_ADDR, b"ops@example.org"),
        ("@#cafe01", IdType.KEY_ID, b"\xca\xfe\x01"),
        ("keyid:cafe01", IdType.KEY_ID, b"\xca\xfe\x01"),
    ],
)
def test_identity_parsing(text: str, id_type: int, data: bytes) -> None:
    ident = Identity.parse(text)
    assert (ident.id_type, ident.data) == (id_type, data)
    assert Identity.parse(str(ident)) == ident


def _prop(number: int, *ts: Transform, protocol: int = ProtocolId.IKE) -> Proposal:
    return Proposal(number, protocol, b"", ts)


def test_selection_preference_and_subset_check() -> None:
    ours = parse_proposals("aes256gcm16-prfsha256-x25519,aes128-sha256-ecp256", ProtocolId.IKE)
    theirs = (ours[1].to_proposal(1, b""), ours[0].to_proposal(2, b""))
    mine = select_proposal(ours, theirs, prefer_ours=True)
    assert mine is not None and mine.number == 2 and mine.dh == DhId.CURVE25519
    peer = select_proposal(ours, theirs, prefer_ours=False)
    assert peer is not None and peer.number == 1 and peer.dh == DhId.ECP_256
    assert accept_response(theirs, mine.as_proposal(b"")) is not None
    # An answer with a transform we never offered is rejected.
    bogus = _prop(
        2, Transform(E, EncrId.AES_GCM_16, 128), Transform(P, PrfId.HMAC_SHA2_256), Transform(D, 31)
    )
    assert accept_response(theirs, bogus) is None


def test_selection_ignores_integ_none_with_aead_and_key_length_matters() -> None:
    ours = parse_proposals("aes256gcm16-prfsha256-x25519", ProtocolId.IKE)
    with_none = _prop(
        1,
        Transform(E, EncrId.AES_GCM_16, 256),
        Transform(P, PrfId.HMAC_SHA2_256),
        Transform(INTEG, IntegId.NONE),
        Transform(D, DhId.CURVE25519),
    )
    assert select_proposal(ours, (with_none,)) is not None
    other_len = _prop(
        1,
        Transform(E, EncrId.AES_GCM_16, 128),
        Transform(P, PrfId.HMAC_SHA2_256),
        Transform(D, DhId.CURVE25519),
    )
    assert select_proposal(ours, (other_len,)) is None


def test_ts_narrowing_and_subset() -> None:
    wide = [Ts.from_cidr("198.19.0.0/16")]
    allowed = [Ts.from_cidr("198.19.5.0/24"), Ts.from_cidr("198.19.9.0/24", protocol=6, port=443)]
    assert narrow(wide, allowed) == allowed
    assert narrow([Ts.from_cidr("198.19.5.7/32", protocol=17)], allowed) == [
        Ts.from_cidr("198.19.5.7/32", 17)
    ]
    assert narrow([Ts.from_cidr("2001:db8::/64")], allowed) == []
    assert is_subset(allowed, wide) and not is_subset(wide, allowed) and not is_subset([], wide)
    assert str(allowed[1]) == "198.19.9.0-198.19.9.255/6[443-443]"


def test_nat_helpers() -> None:
    a = nat_detection_hash(b"\x01" * 8, bytes(8), Address("198.18.0.1", 500))
    assert len(a) == 20 and a != nat_detection_hash(b"\x01" * 8, bytes(8), Address("198.18.0.1", 4500))
    assert classify_4500(b"\xff") == ("keepalive", b"")
    assert classify_4500(bytes(4) + b"ike") == ("ike", b"ike")
    assert classify_4500(b"\x00\x00\x10\x01esp") == ("esp", b"\x00\x00\x10\x01esp")


def test_injected_spi_allocator_is_used_for_inbound_spis() -> None:
    issued: list[tuple[ProtocolId, int]] = []

    def allocate(protocol: ProtocolId) -> int:
        spi = 0xC0000000 + len(issued)
        issued.append((protocol, spi))
        return spi

    p = Pair(ike_config(), [responder_config()])
    p.initiator.allocate_spi = allocate
    p.connect()
    (ev,) = [e for e in p.events_i if type(e).__name__ == "ChildSaEstablished"]
    assert issued == [(ProtocolId.ESP, 0xC0000000)] and ev.spi_in == 0xC0000000  # type: ignore[attr-defined]


def test_runs_are_reproducible_with_a_seeded_random() -> None:
    def run() -> list[bytes]:
        p = Pair(ike_config(), [responder_config()])
        p.connect()
        return [d.data for _, d in p.wire]

    assert run() == run()
