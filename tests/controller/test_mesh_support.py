"""Shared helpers for the resource and mesh tests: manifest builders and a naive reference mesh.

The reference enumerates every pair of members from scratch, straight from the topology rules
in docs/resources.md, without any of the index's incremental bookkeeping; it shares only the
per-pair tunnel builders with the code under test.
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import ip_network
from typing import Any

from meshsec.controller.mesh.model import Tunnel
from meshsec.controller.mesh.tunnels import external_tunnel, node_pair, prefix_selectors
from meshsec.controller.resources import parse_resource
from meshsec.controller.resources.model import (
    ExternalGateway,
    MeshPolicy,
    Node,
    Resource,
    Scope,
    Site,
    Topology,
)

API = "meshsec.io/v1alpha1"


def site(
    name: str,
    prefixes: list[str],
    labels: dict[str, str] | None = None,
    gateways: dict[str, str] | None = None,
) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "Site",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"prefixes": prefixes, "gatewaySelector": {"matchLabels": gateways or {"role": "gateway"}}},
    }


def node(
    name: str,
    site_name: str,
    public: list[str] | None = None,
    private: list[str] | None = None,
    labels: dict[str, str] | None = None,
    ike_id: str | None = None,
) -> dict[str, Any]:
    endpoints: dict[str, Any] = {}
    if public:
        endpoints["public"] = public
    if private:
        endpoints["private"] = private
    return {
        "apiVersion": API,
        "kind": "Node",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"site": site_name, "endpoints": endpoints, "identity": {"ikeId": ike_id or f"{name}.test"}},
    }


def policy(
    name: str, topology: str, scope: str, members: dict[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    spec: dict[str, Any] = {"topology": topology, "scope": scope, "members": members or {}}
    spec.update(extra)
    return {"apiVersion": API, "kind": "MeshPolicy", "metadata": {"name": name}, "spec": spec}


def external(
    name: str,
    sites: list[str],
    prefixes: list[str],
    profile: str = "aws",
    address: str = "198.18.200.1",
    **extra: Any,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "address": address,
        "auth": {"pskSecretRef": f"{name}-psk"},
        "prefixes": prefixes,
        "sites": sites,
        "profile": profile,
    }
    spec.update(extra)
    return {"apiVersion": API, "kind": "ExternalGateway", "metadata": {"name": name}, "spec": spec}


def parsed(*docs: dict[str, Any]) -> list[Resource]:
    return [parse_resource(d) for d in docs]


# --- naive reference ---------------------------------------------------------------------------


def reference_state(resources: Iterable[Resource]) -> dict[str, dict[str, Tunnel]]:
    sites = {r.metadata.name: r for r in resources if isinstance(r, Site)}
    nodes = {r.metadata.name: r for r in resources if isinstance(r, Node)}
    policies = [r for r in resources if isinstance(r, MeshPolicy)]
    externals = [r for r in resources if isinstance(r, ExternalGateway)]
    gateways: dict[str, list[str]] = {s: [] for s in sites}
    for n in nodes.values():
        s = sites.get(n.spec.site)
        if s is not None and s.spec.gateway_selector.matches(n.metadata.labels):
            gateways[n.spec.site].append(n.metadata.name)
    out: dict[str, dict[str, Tunnel]] = {n: {} for n in nodes}

    for p in policies:
        spec = p.spec
        if spec.scope is Scope.NODE:
            units = {n: nodes[n].metadata.labels for n in nodes}
        else:
            units = {s: sites[s].metadata.labels for s in sites}
        members = sorted(u for u, labels in units.items() if spec.members.matches(labels))
        hubs = {u for u in members if spec.hubs is not None and spec.hubs.selector.matches(units[u])}

        def ts(unit: str, spec=spec, nodes=nodes, sites=sites) -> list:  # type: ignore[no-untyped-def]
            if spec.scope is Scope.NODE:
                return [ip_network(a) for a in nodes[unit].traffic_addresses()]
            return list(sites[unit].spec.prefixes)

        for i, a in enumerate(members):
            for b in members[i + 1 :]:
                if not _connected(p, a, b, hubs, units):
                    continue
                a_sel, b_sel = prefix_selectors(ts(a)), prefix_selectors(ts(b))
                if spec.hubs is not None and spec.hubs.spoke_to_spoke and (a in hubs) != (b in hubs):
                    hub, spoke = (a, b) if a in hubs else (b, a)
                    extra = list(spec.hubs.transit_prefixes) or [
                        x for u in members if u != spoke for x in ts(u)
                    ]
                    hub_sel = prefix_selectors(ts(hub) + extra)
                    a_sel, b_sel = (hub_sel, b_sel) if a == hub else (a_sel, hub_sel)
                a_nodes = [a] if spec.scope is Scope.NODE else gateways[a]
                b_nodes = [b] if spec.scope is Scope.NODE else gateways[b]
                for x in a_nodes:
                    for y in b_nodes:
                        tx, ty = node_pair(p, nodes[x], nodes[y], a_sel, b_sel)
                        out[x][tx.id] = tx
                        out[y][ty.id] = ty
    for e in externals:
        for s in e.spec.sites:
            for g in gateways.get(s, []):
                t = external_tunnel(e, nodes[g], prefix_selectors(list(sites[s].spec.prefixes)))
                out[g][t.id] = t
    return out


def _connected(p: MeshPolicy, a: str, b: str, hubs: set[str], units: dict[str, Any]) -> bool:
    spec = p.spec
    if spec.topology is Topology.FULL_MESH:
        return True
    if spec.topology is Topology.HUB_AND_SPOKE:
        return a in hubs or b in hubs
    assert spec.partial is not None
    if tuple(sorted((a, b))) in spec.partial.pairs:
        return True
    la, lb = units[a], units[b]
    return any(
        (r.from_.matches(la) and r.to.matches(lb)) or (r.from_.matches(lb) and r.to.matches(la))
        for r in spec.partial.rules
    )
