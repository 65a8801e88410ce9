"""The lab's pieces that need no root: the world plan's invariants (addresses, names, no underlay
route to any site), the interim standalone configs derived from a real controller's tunnels (and
accepted by the agent's own parser), probes, the progress wait, the state file, preflight."""

from __future__ import annotations

import io
import ipaddress
import os
from pathlib import Path

import pytest

from meshsec.agent.standalone.config import parse_config
from meshsec.common.secrets import Secret
from meshsec.meshctl import manifest
from meshsec.meshctl.client import AdminClient, Target
from meshsec.meshctl.convert import struct_to_dict
from meshsec.meshctl.errors import UserError
from meshsec.meshctl.lab import preflight, proof, standalone
from meshsec.meshctl.lab.commands import serves_road_warriors
from meshsec.meshctl.lab.plan import PREFIX, lab_world
from meshsec.meshctl.lab.progress import wait_for_tunnels
from meshsec.meshctl.lab.state import LabState, Process
from meshsec.meshctl.lab.strongswan import PeerTunnel, swanctl_conf
from meshsec.v1 import admin_pb2, agent_pb2, common_pb2

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "examples" / "lab-mesh.yaml"
LAB_RANGE = ipaddress.ip_network("198.18.0.0/15")
SITES_RANGE = ipaddress.ip_network("198.19.0.0/16")


def test_world_uses_only_benchmark_addresses_and_short_names() -> None:
    world = lab_world()
    cidrs = [c for link in world.links for c in (link.a_cidr, link.b_cidr) if c] + [
        c for _, c in world.loopbacks
    ]
    assert all(ipaddress.ip_interface(c).network.subnet_of(LAB_RANGE) for c in cidrs)
    assert all(ipaddress.ip_address(r.via) in LAB_RANGE for r in world.routes)
    assert all(len(world.ns(n)) <= 32 and world.ns(n).startswith(PREFIX) for n in world.namespaces)
    assert all(len(i) <= 15 for link in world.links for i in (link.a_if, link.b_if))
    assert len({world.ns(n) for n in world.namespaces}) == len(world.namespaces)


def test_underlay_has_no_route_to_any_site_subnet() -> None:
    """Otherwise a ping between workload hosts could cross in plaintext and prove nothing."""
    world = lab_world()
    inet = [r for r in world.routes if r.ns == "inet"]
    assert inet == []
    inet_addresses = [link.a_cidr for link in world.links if link.a == "inet"] + [
        link.b_cidr for link in world.links if link.b == "inet"
    ]
    assert not any(c and ipaddress.ip_interface(c).network.overlaps(SITES_RANGE) for c in inet_addresses)
    assert all(not ipaddress.ip_network(r).overlaps(SITES_RANGE) for r in world.host_routes)


def test_world_matches_the_example_manifest() -> None:
    world = lab_world()
    docs = manifest.load([str(EXAMPLE)])
    for doc in docs:
        spec = struct_to_dict(doc.resource.spec)
        if doc.resource.kind == "Node":
            site = world.site_of_node(doc.resource.metadata.name)
            assert site is not None and site.name == spec["site"]
            endpoints = spec["endpoints"]
            assert site.node_address == endpoints["private"][0]
            nat = [n for n in world.static_nat if n.ns == site.gateway_ns]
            assert [n.public for n in nat] == endpoints.get("public", [])
            assert site.behind_nat == (not endpoints.get("public"))
        if doc.resource.kind == "Site":
            prefixes = [ipaddress.ip_network(p) for p in spec["prefixes"]]
            hosts = world.site(doc.resource.metadata.name).host_addresses
            assert all(any(ipaddress.ip_address(h) in p for h in hosts) for p in prefixes)
        if doc.resource.kind == "ExternalGateway":
            assert world.external is not None and world.external.address == spec["address"]
            assert ipaddress.ip_address(world.external.inner_address) in ipaddress.ip_network(
                spec["prefixes"][0]
            )
    assert lab_world(with_external=False).external is None


def test_standalone_configs_mirror_each_tunnel_and_pass_the_agents_parser(controller: Path) -> None:
    with AdminClient(Target.parse(str(controller))) as client:
        docs = manifest.load([str(EXAMPLE)])
        client.apply([d.resource for d in docs])
        tunnels = client.tunnels()
    world = lab_world()
    nodes = {
        s.node: standalone.NodeAddresses(
            s.node, s.node_address, () if s.behind_nat else (f"198.18.{i + 1}.1",)
        )
        for i, s in enumerate(world.sites)
    }
    psks = {t.tunnel_id: Secret(os.urandom(32)) for t in tunnels}
    configs = standalone.agent_configs(tunnels, nodes, psks, Path("/run/x"), "userspace")
    assert sorted(configs) == ["dc1-gw1", "dc2-gw1", "vpc-gw1"]
    for name, document in configs.items():
        parsed = parse_config(document)
        assert parsed.agent.dataplane == "userspace" and parsed.agent.bind == (nodes[name].bind,)
    by_id = {t.tunnel_id: t for t in tunnels}
    for tid, info in by_id.items():
        ends = [n for n, doc in configs.items() if tid in doc["connections"]]
        if info.desired.peer_kind == common_pb2.PEER_KIND_EXTERNAL_GATEWAY:
            assert len(ends) == 1
            assert configs[ends[0]]["connections"][tid]["remote_addrs"] == ["198.18.200.1"]
            continue
        a, b = (configs[n]["connections"][tid] for n in ends)
        assert a["psk"] == b["psk"] == "0x" + psks[tid].reveal().hex()
        assert (a["local"]["id"], a["remote"]["id"]) == (b["remote"]["id"], b["local"]["id"])
        assert sorted([a["start_action"], b["start_action"]]) == ["initiate", "wait"]
        (ca,), (cb,) = a["children"].values(), b["children"].values()
        assert (ca["local_ts"], ca["remote_ts"]) == (cb["remote_ts"], cb["local_ts"])
    vpc = next(iter(configs["vpc-gw1"]["connections"].values()))
    assert vpc["start_action"] == "initiate" and vpc["remote_addrs"] == ["198.18.1.1"]  # behind NAT: it opens
    dc1_side = next(
        c for c in configs["dc1-gw1"]["connections"].values() if c["remote"]["id"].startswith("vpc")
    )
    assert dc1_side["remote_addrs"] == []  # answers whatever address the NAT gives it


def test_swanctl_conf_mirrors_the_tunnel_and_hides_nothing_it_should_not_print() -> None:
    tunnel = PeerTunnel(
        "t-1",
        "198.18.200.1",
        "%any",
        "198.18.200.1",
        "dc1-gw1.meshsec.test",
        ("aes256-sha256-modp2048",),
        ("aes256gcm16",),
        ("198.19.200.0/24",),
        ("198.19.1.0/24",),
        initiate=False,
        rekey_seconds=100,
        child_rekey_seconds=50,
    )
    text = swanctl_conf([tunnel], Secret(b"\x01\x02"))
    assert "local_ts = 198.19.200.0/24" in text and "remote_ts = 198.19.1.0/24" in text
    assert 'id = "dc1-gw1.meshsec.test"' in text and "secret = 0x0102" in text
    assert "start_action = none" in text and text.count("{") == text.count("}")


def tunnel(tid: str, a: str, b: str, *, external: bool = False) -> admin_pb2.TunnelInfo:
    kind = common_pb2.PEER_KIND_EXTERNAL_GATEWAY if external else common_pb2.PEER_KIND_NODE
    return admin_pb2.TunnelInfo(
        tunnel_id=tid,
        ends=[admin_pb2.TunnelEnd(name=a), admin_pb2.TunnelEnd(name=b)],
        desired=agent_pb2.DesiredTunnel(peer_name=b, peer_kind=kind),
    )


def test_probes_cover_both_directions_every_address_and_isolation() -> None:
    world = lab_world()
    probes = proof.probes(
        world,
        [
            tunnel("t1", "dc1-gw1", "dc2-gw1"),
            tunnel("t2", "dc1-gw1", "vpc-gw1"),
            tunnel("t3", "dc2-gw1", "partner-aws", external=True),
        ],
    )
    expected = {(p.src_site, p.dst, p.expect_reply) for p in probes}
    assert expected == {
        ("dc1", "198.19.2.10", True),
        ("dc2", "198.19.1.10", True),
        ("dc1", "198.19.30.10", True),
        ("dc1", "198.19.31.10", True),
        ("vpc", "198.19.1.10", True),
        ("dc2", "198.19.200.1", True),
        ("dc2", "198.19.30.10", False),
    }


def test_wait_reports_progress_and_what_is_stuck() -> None:
    answers = iter([{"a": "DOWN", "b": "CONNECTING"}, {"a": "ESTABLISHED", "b": "CONNECTING"}])
    out = io.StringIO()
    result = wait_for_tunnels(
        lambda: next(answers, {"a": "ESTABLISHED", "b": "FAILED"}), 0.3, stream=out, interval=0.05
    )
    assert result.stuck == {"b": "FAILED"}
    text = out.getvalue()
    assert (
        "tunnels up 0/2" in text and "tunnels up 1/2  (waiting: b CONNECTING)" in text and "b FAILED" in text
    )
    done = wait_for_tunnels(lambda: {"a": "ESTABLISHED"}, 5, stream=io.StringIO())
    assert done.stuck == {} and done.seconds < 1


def test_state_file_round_trip_and_pid_reuse(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    state = LabState(namespaces=["msl-a"], files=["/x"])
    state.save(path)
    loaded = LabState.load(path)
    assert loaded is not None and loaded.namespaces == ["msl-a"] and loaded.files == ["/x"]
    me = Process("self", os.getpid(), None, None, "-")
    assert not me.is_ours()  # same PID, but not the recorded start time: never signalled
    assert LabState.load(tmp_path / "absent.json") is None


def test_preflight_names_the_debian_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(preflight, "find", lambda program: None if program in ("nft", "dot") else "/bin/true")
    with pytest.raises(UserError) as info:
        preflight.check_tools()
    assert "`nft`" in info.value.message and info.value.hint == "apt-get install nftables"
    monkeypatch.setattr(preflight, "find", lambda program: None if program == "dot" else "/bin/true")
    assert any("graphviz" in w for w in preflight.check_tools())


def test_lab_refuses_to_run_without_root(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from meshsec.meshctl.cli import main

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert main(["lab", "up"]) == 1
    err = capsys.readouterr().err
    assert "meshctl lab needs root" in err and "sudo meshctl lab up" in err
    assert main(["lab", "sideways"]) == 2


def test_road_warrior_has_its_own_underlay_and_the_manifest_serves_it() -> None:
    plan = lab_world(with_external=True, datacenters=4)
    rw = plan.road_warrior
    assert rw is not None and rw.ns in plan.namespaces
    used = {link.b_cidr.rsplit(".", 1)[0] for link in plan.links if link.b_cidr and link.b != rw.ns}
    assert rw.address.rsplit(".", 1)[0] not in used  # no datacenter shares 198.18.6.0/24
    assert lab_world(with_external=False).road_warrior is None
    docs = manifest.load([str(EXAMPLE)])
    assert serves_road_warriors(docs, rw.gateway_node)
    gw = next(d for d in docs if d.resource.kind == "Node" and d.resource.metadata.name == rw.gateway_node)
    pool = next(struct_to_dict(d.resource.spec) for d in docs if d.resource.kind == "RemoteAccessPool")
    assert pool["gateways"]["matchLabels"].items() <= dict(gw.resource.metadata.labels).items()
    assert ipaddress.ip_address(rw.target) in ipaddress.ip_network(pool["routes"]["prefixes"][0])
