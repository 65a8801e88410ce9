"""Routes a site's non-gateway nodes need: what its gateway's site-scope tunnels reach, via it.

A site-scope tunnel carries the site's prefixes between gateways; traffic from a pod on another
node of the site (a Kubernetes worker) only meets that tunnel if it is routed to the gateway.
Like Submariner's route agent, every non-gateway node gets one route per remote prefix of the
gateway's site-scope and ExternalGateway tunnels, next hop the gateway's own address in the
site (its private endpoint, else its public one). With several gateways the first by name
carries the routes (no failover between them yet). Node-scope tunnels need no routes: each node
has its own.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from typing import NamedTuple

from meshsec.controller.mesh.model import PeerKind, Tunnel
from meshsec.controller.resources.model import MeshPolicy, Node, Scope


class SiteRoute(NamedTuple):
    destination: str  # CIDR
    via: str  # the gateway's address
    gateway: str  # its node name


def site_routes(
    gateways: Iterable[str],
    node_of: Callable[[str], Node | None],
    tunnels_of: Callable[[str], list[Tunnel]],
    policy_of: Callable[[str], MeshPolicy | None],
) -> tuple[tuple[SiteRoute, ...], frozenset[str]]:
    """The routes of every non-gateway node of a site with these `gateways` (the same for all),
    and the ids of the tunnels they come from."""
    chosen = sorted(gateways)
    if not chosen:
        return (), frozenset()
    gateway = node_of(chosen[0])
    if gateway is None:
        return (), frozenset()
    via_by_version: dict[int, str] = {}
    for address in gateway.traffic_addresses():
        via_by_version.setdefault(address.version, str(address))
    found: dict[str, SiteRoute] = {}
    sources = set()
    for tunnel in tunnels_of(gateway.metadata.name):
        if not site_reach(tunnel, policy_of):
            continue
        sources.add(tunnel.id)
        for child in tunnel.children:
            for cidr in child.remote_ts:
                via = via_by_version.get(ipaddress.ip_network(cidr, strict=False).version)
                if via is not None:
                    found.setdefault(cidr, SiteRoute(cidr, via, gateway.metadata.name))
    return tuple(found[c] for c in sorted(found)), frozenset(sources)


def site_reach(tunnel: Tunnel, policy_of: Callable[[str], MeshPolicy | None]) -> bool:
    """An ExternalGateway's tunnel, or a site-scope policy's (its far side is another site)."""
    if tunnel.peer_kind is PeerKind.EXTERNAL_GATEWAY:
        return True
    kind, _, name = tunnel.source.partition("/")
    policy = policy_of(name) if kind == "MeshPolicy" else None
    return policy is not None and policy.spec.scope is Scope.SITE
