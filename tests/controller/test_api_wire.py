"""The DesiredTunnel bytes assembled from cached parts equal the field-by-field reference message.

Every tunnel of a mesh mixing what changes the message (same-site and cross-site pairs, NAT,
IPv4/IPv6/e-mail/FQDN IKE ids, PSK and certificate auth, tunnel and transport mode, hubs with
spoke-to-spoke transit, an external gateway) is encoded twice by one encoder (cold and warm
caches) and compared with `convert.desired_tunnel`, both as messages and in size.
"""

from __future__ import annotations

import hashlib

import pytest

from meshsec.common.secrets import Secret
from meshsec.controller.api.convert import desired_tunnel
from meshsec.controller.api.wire import (
    MORE,
    UPSERTED_TUNNELS,
    TunnelEncoder,
    delimited,
    split_update,
    varint,
)
from meshsec.controller.mesh import PeerKind, Tunnel
from meshsec.controller.resources.model import Node, Resource
from meshsec.v1 import agent_pb2
from tests.controller.test_mesh_support import external, node, parsed, policy, reference_state, site


def _psk(psk_id: str) -> Secret | None:
    if psk_id.startswith("secret/missing"):
        return None  # an external secret nobody stored yet: the key goes out empty
    return Secret(hashlib.sha256(psk_id.encode()).digest())


def _resources() -> list[Resource]:
    docs = [
        site("s0", ["198.19.0.0/24"]),
        site("s1", ["198.19.1.0/24", "198.19.2.0/24"]),
        node("a", "s0", public=["198.18.0.1"], private=["198.19.0.1"], labels={"role": "gateway", "m": "y"}),
        node("b", "s0", private=["198.19.0.2"], labels={"m": "y", "hub": "y"}, ike_id="198.19.0.2"),
        node("c", "s1", private=["198.19.1.3"], labels={"role": "gateway", "m": "y"}, ike_id="c@mesh.test"),
        node("d", "s1", public=["198.18.0.4", "198.18.0.5"], labels={"m": "y"}, ike_id="2001:db8::4"),
        node("e", "s1", public=["198.18.0.6"], labels={"hub": "y", "m": "y"}, ike_id="CN=e,O=mesh"),
        policy("cert", "full-mesh", "node", {"matchLabels": {"m": "y"}}),
        policy("psk", "full-mesh", "site", {}, auth={"method": "psk", "pskGeneration": 3}),
        policy("tr", "full-mesh", "node", {"matchLabels": {"role": "gateway"}}, mode="transport"),
        policy(
            "hs",
            "hub-and-spoke",
            "node",
            {"matchLabels": {"m": "y"}},
            hubs={"selector": {"matchLabels": {"hub": "y"}}, "spokeToSpoke": True},
        ),
        external("cloud", ["s0"], ["198.19.50.0/24"]),
        external("missing", ["s1"], ["198.19.60.0/24"], address="198.18.200.2"),
    ]
    return parsed(*docs)


def _tunnels() -> list[tuple[Tunnel, str]]:
    resources = _resources()
    sites = {r.metadata.name: r.spec.site for r in resources if isinstance(r, Node)}
    out = []
    for tunnels in reference_state(resources).values():
        for t in tunnels.values():
            out.append((t, sites.get(t.peer, "") if t.peer_kind is PeerKind.NODE else ""))
    return out


def test_the_mesh_under_test_covers_every_variant() -> None:
    tunnels = [t for t, _ in _tunnels()]
    assert {t.auth.method.value for t in tunnels} == {"psk", "certificate"}
    assert {t.peer_kind for t in tunnels} == set(PeerKind)
    assert any(t.children[0].mode.value == "transport" for t in tunnels)
    assert any(len(t.remote_endpoints) > 1 for t in tunnels)
    assert any(len(t.children[0].local_ts) > 1 for t in tunnels)
    assert {t.initiator for t in tunnels} == {True, False}


@pytest.mark.parametrize("generation", [0, 1, 300])
def test_assembled_bytes_equal_the_reference_message(generation: int) -> None:
    encoder = TunnelEncoder(_psk)
    for _ in range(2):  # cold, then every part from the caches
        for tunnel, peer_site in _tunnels():
            encoded = encoder.encode(tunnel, peer_site, generation)
            reference = desired_tunnel(tunnel, peer_site, _psk, generation)
            assert agent_pb2.DesiredTunnel.FromString(encoded) == reference, tunnel
            assert len(encoded) == reference.ByteSize()


def test_without_a_psk_source_the_key_is_empty_like_the_admin_view() -> None:
    encoder = TunnelEncoder(None)
    for tunnel, peer_site in _tunnels():
        assert agent_pb2.DesiredTunnel.FromString(encoder.encode(tunnel, peer_site, 0)) == desired_tunnel(
            tunnel, peer_site, None, 0
        )


def test_wrapped_tunnels_parse_as_an_update() -> None:
    encoder = TunnelEncoder(_psk)
    head = agent_pb2.DesiredStateUpdate(version=7, base_version=6, kind=agent_pb2.UPDATE_KIND_DELTA)
    pairs = _tunnels()[:3]
    body = b"".join(delimited(UPSERTED_TUNNELS, encoder.encode(t, s, 7)) for t, s in pairs)
    update = agent_pb2.DesiredStateUpdate.FromString(head.SerializeToString() + body + MORE)
    assert list(update.upserted_tunnels) == [desired_tunnel(t, s, _psk, 7) for t, s in pairs]
    assert update.more and update.version == 7 and update.base_version == 6


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 2**32, 2**63 - 1])
def test_varint_matches_protobuf(value: int) -> None:
    number = agent_pb2.DesiredTunnel.DESCRIPTOR.fields_by_name["generation"].number
    expected = varint(number << 3) + varint(value) if value else b""
    assert agent_pb2.DesiredTunnel(generation=value).SerializeToString() == expected


def test_a_cached_part_is_never_reused_for_other_content() -> None:
    encoder = TunnelEncoder(_psk)
    pairs = _tunnels()
    for tunnel, peer_site in pairs:
        encoder.encode(tunnel, peer_site, 1)
    for tunnel, _ in pairs:
        child = tunnel.children[0]
        variants = [
            (tunnel, "moved"),
            (tunnel._replace(local_endpoints=("198.18.9.9", *tunnel.local_endpoints)), "x"),
            (tunnel._replace(remote_endpoints=tunnel.remote_endpoints[:1]), "x"),
            (tunnel._replace(local_ike_id="other.test", remote_ike_id="198.18.7.7"), "x"),
            (tunnel._replace(peer="renamed"), "x"),
            (tunnel._replace(children=(child._replace(local_ts=child.remote_ts, remote_ts=()),)), "x"),
            (tunnel._replace(children=(child._replace(name="other", lifetime_s=60),)), "x"),
            (tunnel._replace(ike_proposals=("aes128-sha256-modp2048",), ike_lifetime_s=600), "x"),
        ]
        for variant, peer_site in variants:
            encoded = encoder.encode(variant, peer_site, 1)
            assert agent_pb2.DesiredTunnel.FromString(encoded) == desired_tunnel(variant, peer_site, _psk, 1)


@pytest.mark.parametrize("limit", [1, 300, 700, 4096, 1 << 20])
def test_split_update_fills_messages_up_to_the_limit_and_keeps_the_order(limit: int) -> None:
    encoder = TunnelEncoder(_psk)
    pairs = _tunnels()
    tunnels = [encoder.encode(t, s, 2) for t, s in pairs]
    head = agent_pb2.DesiredStateUpdate(version=2, base_version=1).SerializeToString()
    first = agent_pb2.DesiredStateUpdate(removed_tunnel_ids=["t-gone"]).SerializeToString()
    blobs = split_update(head, first, tunnels, limit)
    messages = [agent_pb2.DesiredStateUpdate.FromString(b) for b in blobs]
    assert [m.more for m in messages] == [True] * (len(messages) - 1) + [False]
    assert all(m.version == 2 and m.base_version == 1 for m in messages)
    assert [list(m.removed_tunnel_ids) for m in messages] == [["t-gone"]] + [[]] * (len(messages) - 1)
    received = [t for m in messages for t in m.upserted_tunnels]
    assert received == [desired_tunnel(t, s, _psk, 2) for t, s in pairs]
    for blob, message in zip(blobs, messages, strict=True):
        assert len(blob) == message.ByteSize()
        assert len(blob) <= limit or len(message.upserted_tunnels) == 1  # one tunnel always goes out
    if limit >= 1 << 20:
        assert len(messages) == 1
