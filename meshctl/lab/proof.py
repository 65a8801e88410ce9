"""Proving the mesh: ping between workload hosts across every site pair the mesh connects, and
checking that pairs it does not connect stay unreachable (the underlay routes no site subnet, so a
reply can only have crossed inside a tunnel)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from meshsec.meshctl.lab import netns
from meshsec.meshctl.lab.plan import World
from meshsec.v1 import admin_pb2, common_pb2


@dataclass(frozen=True)
class Probe:
    src_site: str
    src_ns: str
    dst_site: str
    dst: str
    expect_reply: bool


@dataclass(frozen=True)
class ProbeResult:
    probe: Probe
    sent: int
    received: int

    @property
    def ok(self) -> bool:
        return self.received > 0 if self.probe.expect_reply else self.received == 0


def probes(world: World, tunnels: Sequence[admin_pb2.TunnelInfo]) -> list[Probe]:
    """Both directions of every connected site pair, one probe per destination address, then the
    unconnected site pairs (one direction) expecting silence."""
    connected: set[tuple[str, str]] = set()
    found: list[Probe] = []
    for info in tunnels:
        a = world.site_of_node(info.ends[0].name)
        if a is None:
            continue
        if info.desired.peer_kind == common_pb2.PEER_KIND_EXTERNAL_GATEWAY:
            ext = world.external
            if ext is not None and info.desired.peer_name == ext.name and (a.name, ext.name) not in connected:
                connected.add((a.name, ext.name))
                found.append(Probe(a.name, world.ns(a.host_ns), ext.name, ext.inner_address, True))
            continue
        b = world.site_of_node(info.desired.peer_name)
        if b is None or b.name == a.name or (a.name, b.name) in connected:
            continue
        connected |= {(a.name, b.name), (b.name, a.name)}
        for src, dst in ((a, b), (b, a)):
            found += [
                Probe(src.name, world.ns(src.host_ns), dst.name, addr, True) for addr in dst.host_addresses
            ]
    sites = list(world.sites)
    for i, a in enumerate(sites):
        for b in sites[i + 1 :]:
            if (a.name, b.name) not in connected:
                found.append(Probe(a.name, world.ns(a.host_ns), b.name, b.host_addresses[0], False))
    return found


def run_probe(probe: Probe, *, attempts: int = 3) -> ProbeResult:
    """Expected replies get a few tries (the first packets may race a route being installed)."""
    if not probe.expect_reply:
        sent, received = netns.ping(probe.src_ns, probe.dst, count=2, interval=0.2, wait=1.0)
        return ProbeResult(probe, sent, received)
    result = ProbeResult(probe, 0, 0)
    for _ in range(attempts):
        sent, received = netns.ping(probe.src_ns, probe.dst, count=3, interval=0.2, wait=1.0)
        result = ProbeResult(probe, sent, received)
        if received == sent:
            break
    return result
