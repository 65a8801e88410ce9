"""DesiredState: snapshots replace, deltas apply on their base only, split versions apply as one,
persistence round-trips through a 0600 file; translation of DesiredTunnel to the engine config."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from meshsec.agent.node.desired import DesiredState, DesiredStore, VersionGap
from meshsec.agent.node.statedir import DESIRED, StateDir
from meshsec.agent.node.translate import TunnelError, fingerprint, plan
from meshsec.v1 import agent_pb2, common_pb2


def tunnel(
    tid: str, peer: str = "b", *, initiator: bool = True, psk: bytes = b"k" * 32
) -> agent_pb2.DesiredTunnel:
    t = agent_pb2.DesiredTunnel(
        tunnel_id=tid,
        peer_name=peer,
        local_endpoint=common_pb2.Endpoint(address="127.77.0.1"),
        remote_endpoints=[common_pb2.Endpoint(address="127.77.0.2")],
        local_id=common_pb2.Identity(type=common_pb2.Identity.TYPE_FQDN, value="a"),
        remote_id=common_pb2.Identity(type=common_pb2.Identity.TYPE_FQDN, value=peer),
        ike_proposals=["aes256gcm16-prfsha384-ecp384"],
        esp_proposals=["aes256gcm16-ecp384"],
        children=[
            agent_pb2.ChildConfig(
                name="mesh",
                local_ts=[common_pb2.TrafficSelector(cidr="198.19.1.0/24")],
                remote_ts=[common_pb2.TrafficSelector(cidr="198.19.2.0/24")],
                mode=common_pb2.MODE_TUNNEL,
                protocol=common_pb2.IPSEC_PROTOCOL_ESP,
                lifetimes=common_pb2.Lifetimes(soft_seconds=3240, hard_seconds=3600),
            )
        ],
        initiator=initiator,
    )
    t.auth.psk.key = psk
    return t


def snapshot(
    version: int, *tunnels: agent_pb2.DesiredTunnel, more: bool = False
) -> agent_pb2.DesiredStateUpdate:
    u = agent_pb2.DesiredStateUpdate(version=version, kind=agent_pb2.UPDATE_KIND_SNAPSHOT, more=more)
    u.node.node_name = "a"
    u.upserted_tunnels.extend(tunnels)
    return u


def delta(
    version: int, base: int, upsert: tuple[agent_pb2.DesiredTunnel, ...] = (), remove: tuple[str, ...] = ()
):
    return agent_pb2.DesiredStateUpdate(
        version=version,
        kind=agent_pb2.UPDATE_KIND_DELTA,
        base_version=base,
        upserted_tunnels=upsert,
        removed_tunnel_ids=remove,
    )


def test_snapshot_replaces_and_deltas_apply_on_their_base() -> None:
    d = DesiredState()
    d.apply([snapshot(5, tunnel("t1"), tunnel("t2"))])
    assert d.version == 5 and set(d.tunnels) == {"t1", "t2"} and d.node is not None
    d.apply([delta(9, 5, upsert=(tunnel("t3"),), remove=("t1",))])
    assert d.version == 9 and set(d.tunnels) == {"t2", "t3"}
    with pytest.raises(VersionGap):
        d.apply([delta(12, 10, remove=("t2",))])
    assert d.version == 9 and set(d.tunnels) == {"t2", "t3"}  # a gap changes nothing
    d.apply([snapshot(20, tunnel("t4"))])
    assert set(d.tunnels) == {"t4"}  # tunnels missing from a snapshot are gone


def test_a_split_version_applies_as_one() -> None:
    d = DesiredState()
    d.apply([snapshot(3, tunnel("t1"), more=True), snapshot(3, tunnel("t2"))])
    assert set(d.tunnels) == {"t1", "t2"}
    with pytest.raises(VersionGap):
        d.apply([snapshot(4, tunnel("t1"), more=True), snapshot(5, tunnel("t2"))])


def test_persistence_round_trip_with_mode_0600(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    state.prepare()
    store = DesiredStore(state)
    assert store.load().version == 0
    d = DesiredState()
    d.apply([snapshot(7, tunnel("t1"), tunnel("t2"))])
    store.save(d)
    assert stat.S_IMODE(state.file(DESIRED).stat().st_mode) == 0o600
    assert stat.S_IMODE(state.path.stat().st_mode) == 0o700
    loaded = store.load()
    assert loaded.version == 7 and loaded.tunnels == d.tunnels and loaded.node == d.node
    state.file(DESIRED).write_bytes(b"\xff\xff not protobuf")
    assert store.load().version == 0  # unreadable: wait for a snapshot instead of crashing


def test_translation_to_the_engine_config() -> None:
    p = plan(tunnel("t1"))
    assert p.ike.name == "t1" and p.initiator and p.remotes == ("127.77.0.2",)
    assert p.ike.local_id == "@a" and p.ike.remote_id == "@b"
    assert p.ike.proposals == "aes256gcm16-prfsha384-ecp384"
    (child,) = p.ike.children
    assert [str(t) for t in child.local_ts] != [] and child.life_time == 3600 and child.rekey_time == 3240
    changed = tunnel("t1")
    changed.generation = 42
    assert fingerprint(changed) == fingerprint(tunnel("t1"))  # generation alone is no change
    assert fingerprint(tunnel("t1", psk=b"x" * 32)) != fingerprint(tunnel("t1"))
    cert = tunnel("t1")
    cert.auth.certificate.SetInParent()
    with pytest.raises(TunnelError, match="needs the node certificate"):
        plan(cert)  # certificate auth without the node certificate (tests/agent/test_cert_auth.py)
    bad = tunnel("t1")
    bad.children[0].local_ts[0].cidr = "198.19.1.0/33"
    with pytest.raises(TunnelError, match="t1"):
        plan(bad)
