"""The lab plan with more data centres (`meshctl lab up --datacenters N`), no root needed: every
size stays in the benchmark range with one link per /24 and no underlay route to a site subnet,
the default is the two-DC world, the three-DC manifest the e2e tests apply matches the plan, and
a manifest without the extra gateway is refused with a message naming what is missing."""

from __future__ import annotations

import ipaddress
from collections import Counter
from pathlib import Path

import pytest

from meshsec.meshctl import manifest
from meshsec.meshctl.convert import struct_to_dict
from meshsec.meshctl.errors import UserError
from meshsec.meshctl.lab.commands import check_manifest
from meshsec.meshctl.lab.plan import MAX_DATACENTERS, lab_world
from tests.e2e.lab_driver import EXAMPLE, three_dc_manifest

LAB_RANGE = ipaddress.ip_network("198.18.0.0/15")
SITES_RANGE = ipaddress.ip_network("198.19.0.0/16")


@pytest.mark.parametrize("count", range(2, MAX_DATACENTERS + 1))
def test_every_size_is_addressed_apart_and_isolated(count: int) -> None:
    world = lab_world(datacenters=count)
    assert [s.name for s in world.sites] == [f"dc{n}" for n in range(1, count + 1)] + ["vpc"]
    cidrs = [c for link in world.links for c in (link.a_cidr, link.b_cidr) if c]
    assert all(ipaddress.ip_interface(c).network.subnet_of(LAB_RANGE) for c in cidrs)
    addresses = [ipaddress.ip_interface(c).ip for c in cidrs] + [
        ipaddress.ip_interface(c).ip for _, c in world.loopbacks
    ]
    assert [a for a, n in Counter(addresses).items() if n > 1] == []
    # Each /24 belongs to exactly one veth pair: no two links share a network.
    link_nets = [
        {ipaddress.ip_interface(c).network for c in (link.a_cidr, link.b_cidr) if c} for link in world.links
    ]
    assert all(len(nets) == 1 for nets in link_nets)
    assert len({next(iter(n)) for n in link_nets}) == len(link_nets)
    assert [r for r in world.routes if r.ns == "inet"] == []
    assert all(not ipaddress.ip_network(r).overlaps(SITES_RANGE) for r in world.host_routes)
    # The controller reaches every gateway's public side, so the host routes every DC uplink /24.
    for nat in world.static_nat:
        assert any(ipaddress.ip_address(nat.public) in ipaddress.ip_network(r) for r in world.host_routes)
    assert {f"dc{n}-gw1" for n in range(1, count + 1)} <= set(world.routers)
    assert all(len(i) <= 15 for link in world.links for i in (link.a_if, link.b_if))


def test_default_is_two_datacenters_and_sizes_are_bounded() -> None:
    assert lab_world() == lab_world(datacenters=2)
    for bad in (1, MAX_DATACENTERS + 1):
        with pytest.raises(ValueError, match="datacenters must be 2"):
            lab_world(datacenters=bad)


def test_three_dc_manifest_matches_the_plan(tmp_path: Path) -> None:
    world = lab_world(datacenters=3)
    docs = manifest.load([str(three_dc_manifest(tmp_path / "lab-3dc.yaml"))])
    check_manifest(world, docs)
    for doc in docs:
        spec = struct_to_dict(doc.resource.spec)
        if doc.resource.kind == "Node" and doc.resource.metadata.name == "dc3-gw1":
            site = world.site("dc3")
            assert site.node == "dc3-gw1" and site.node_address == spec["endpoints"]["private"][0]
            nat = next(n for n in world.static_nat if n.ns == "dc3-gw1")
            assert [nat.public] == spec["endpoints"]["public"]
        if doc.resource.kind == "Site" and doc.resource.metadata.name == "dc3":
            host = ipaddress.ip_address(world.site("dc3").host_addresses[0])
            assert host in ipaddress.ip_network(spec["prefixes"][0])


def test_a_manifest_without_the_extra_gateway_is_refused() -> None:
    with pytest.raises(UserError) as refused:
        check_manifest(lab_world(datacenters=3), manifest.load([str(EXAMPLE)]))
    assert "Node dc3-gw1" in refused.value.message and "Site dc3" in refused.value.message
    assert "--datacenters" in refused.value.hint
