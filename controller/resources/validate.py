"""Checks that span several resources: references, prefix overlaps, hub reachability, identities.

The checks read a `ResourceView` (the mesh index implements it) and look only at what a batch
touched, so validating one node join costs about as much as the join itself; `validate_all`
runs every check over every resource for a from-scratch verdict. Both use the same functions.
Prefix overlaps are looked up in one `PrefixOwners` built per validation (O(n log n) over all
Site and ExternalGateway prefixes), not compared pairwise: a batch of n Sites was O(n^2).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from ipaddress import ip_network
from typing import Protocol

from meshsec.controller.resources.errors import FieldError
from meshsec.controller.resources.model import (
    ExternalGateway,
    Kind,
    MeshPolicy,
    Node,
    Prefix,
    Scope,
    Site,
    Topology,
)
from meshsec.controller.resources.overlap import PrefixOwners, first_overlaps
from meshsec.controller.resources.validate_remote import (
    RemoteAccessView,
    check_pools,
    check_removed_pool,
    check_user,
)


class ResourceView(RemoteAccessView, Protocol):
    def site(self, name: str) -> Site | None: ...
    def node(self, name: str) -> Node | None: ...
    def policy(self, name: str) -> MeshPolicy | None: ...
    def external_gateway(self, name: str) -> ExternalGateway | None: ...
    def all_sites(self) -> Iterable[Site]: ...
    def all_nodes(self) -> Iterable[Node]: ...
    def all_policies(self) -> Iterable[MeshPolicy]: ...
    def all_external_gateways(self) -> Iterable[ExternalGateway]: ...
    def nodes_in_site(self, site: str) -> Collection[str]: ...
    def gateways_of(self, site: str) -> Collection[str]: ...
    def nodes_with_ike_id(self, ike_id: str) -> Collection[str]: ...
    def externals_of_site(self, site: str) -> Collection[str]: ...
    def policy_units(self, policy: str) -> Collection[str]: ...
    def policy_hubs(self, policy: str) -> Collection[str]: ...
    def policies_naming(self, unit: str) -> Collection[str]: ...


@dataclass
class Touched:
    """What a batch changed. ``policy_units`` maps a policy to the members whose placement changed
    (None: the policy itself changed, so every member is rechecked)."""

    nodes: set[str] = field(default_factory=set)
    sites: set[str] = field(default_factory=set)
    external_gateways: set[str] = field(default_factory=set)
    removed: set[tuple[Kind, str]] = field(default_factory=set)
    policy_units: dict[str, set[str] | None] = field(default_factory=dict)
    pools: set[str] = field(default_factory=set)
    users: set[str] = field(default_factory=set)

    def touch_policy(self, policy: str, unit: str | None) -> None:
        if policy in self.policy_units and self.policy_units[policy] is None:
            return
        if unit is None:
            self.policy_units[policy] = None
        else:
            units = self.policy_units.setdefault(policy, set())
            assert units is not None
            units.add(unit)


def validate_touched(view: ResourceView, touched: Touched) -> list[FieldError]:
    errors: list[FieldError] = []
    for name in sorted(touched.nodes):
        node = view.node(name)
        if node is not None:
            errors += check_node(view, node)
    owners = _owners(view) if touched.sites or touched.external_gateways else None
    for name in sorted(touched.sites):
        site = view.site(name)
        if site is not None:
            errors += check_site(view, site, owners)
    for name in sorted(touched.external_gateways):
        eg = view.external_gateway(name)
        if eg is not None:
            errors += check_external_gateway(view, eg, owners)
    for kind, name in sorted(touched.removed, key=lambda k: (k[0].value, k[1])):
        errors += check_removed(view, kind, name)
    for name, units in sorted(touched.policy_units.items()):
        policy = view.policy(name)
        if policy is not None:
            errors += check_policy(view, policy, units)
    errors += _check_remote_access(view, touched)
    return errors


def _check_remote_access(view: ResourceView, touched: Touched) -> list[FieldError]:
    errors: list[FieldError] = []
    # A Site or ExternalGateway that moved its prefixes may now overlap a pool: recheck them all
    # (pools are few; their overlap check is one sorted pass).
    moved = touched.sites or touched.external_gateways
    pools = {p.metadata.name for p in view.all_pools()} if moved else set()
    errors += check_pools(view, pools | touched.pools)
    # A pool that changed its auth methods may no longer allow its users' method (a deleted one
    # is reported once, by check_removed_pool).
    users = touched.users | {u for p in touched.pools if view.pool(p) for u in view.users_of_pool(p)}
    for name in sorted(users):
        user = view.user(name)
        if user is not None:
            errors += check_user(view, user)
    for kind, name in sorted(touched.removed, key=lambda k: (k[0].value, k[1])):
        if kind is Kind.REMOTE_ACCESS_POOL:
            errors += check_removed_pool(view, name)
    return errors


def validate_all(view: ResourceView) -> list[FieldError]:
    touched = Touched(
        nodes={n.metadata.name for n in view.all_nodes()},
        sites={s.metadata.name for s in view.all_sites()},
        external_gateways={e.metadata.name for e in view.all_external_gateways()},
        policy_units=dict.fromkeys((p.metadata.name for p in view.all_policies()), None),
        pools={p.metadata.name for p in view.all_pools()},
        users={u.metadata.name for u in view.all_users()},
    )
    return validate_touched(view, touched)


def _err(resource: Node | Site | MeshPolicy | ExternalGateway, path: str, reason: str) -> FieldError:
    return FieldError(resource.kind.value, resource.metadata.name, path, reason)


def check_node(view: ResourceView, node: Node) -> list[FieldError]:
    errors = []
    if view.site(node.spec.site) is None:
        errors.append(_err(node, "spec.site", f"references unknown Site/{node.spec.site}"))
    others = sorted(n for n in view.nodes_with_ike_id(node.spec.identity.ike_id) if n != node.metadata.name)
    if others:
        errors.append(
            _err(
                node,
                "spec.identity.ikeId",
                f"{node.spec.identity.ike_id!r} is also the IKE ID of Node/{others[0]}",
            )
        )
    # A node certificate names the node and its IKE ID (ca.authority.sign_node): one node's name
    # being another's IKE ID would let the first authenticate as the second.
    name = node.metadata.name
    named = node.spec.identity.ike_id.lower()
    if named != name and view.node(named) is not None:
        errors.append(
            _err(node, "spec.identity.ikeId", f"{node.spec.identity.ike_id!r} is the name of Node/{named}")
        )
    claimed = sorted(n for n in view.nodes_with_ike_id(name) if n != name)
    if claimed:
        errors.append(_err(node, "metadata.name", f"{name!r} is the IKE ID of Node/{claimed[0]}"))
    return errors


def _owners(view: ResourceView) -> PrefixOwners[tuple[Kind, str]]:
    """Every Site's and ExternalGateway's prefixes, for the overlap checks of one validation."""
    entries: list[tuple[Prefix, tuple[Kind, str]]] = []
    for site in view.all_sites():
        entries += [(p, (Kind.SITE, site.metadata.name)) for p in site.spec.prefixes]
    for eg in view.all_external_gateways():
        entries += [(p, (Kind.EXTERNAL_GATEWAY, eg.metadata.name)) for p in eg.spec.prefixes]
    return PrefixOwners(entries)


def _overlap_errors(
    resource: Site | ExternalGateway, owners: PrefixOwners[tuple[Kind, str]], against: Collection[Kind]
) -> list[FieldError]:
    hits = first_overlaps(resource.spec.prefixes, owners, skip=(resource.kind, resource.metadata.name))
    return [
        _err(resource, "spec.prefixes", f"{mine} overlaps {kind.value}/{name} prefix {theirs}")
        for (kind, name), (mine, theirs) in sorted(
            hits.items(), key=lambda item: (item[0][0].value, item[0][1])
        )
        if kind in against
    ]


def check_site(
    view: ResourceView, site: Site, owners: PrefixOwners[tuple[Kind, str]] | None = None
) -> list[FieldError]:
    """Its prefixes against every other Site's and every ExternalGateway's."""
    return _overlap_errors(
        site, owners if owners is not None else _owners(view), (Kind.SITE, Kind.EXTERNAL_GATEWAY)
    )


def check_external_gateway(
    view: ResourceView, eg: ExternalGateway, owners: PrefixOwners[tuple[Kind, str]] | None = None
) -> list[FieldError]:
    errors = []
    for i, name in enumerate(eg.spec.sites):
        if view.site(name) is None:
            errors.append(_err(eg, f"spec.sites[{i}]", f"references unknown Site/{name}"))
    # Against Sites only: two gateways may well announce the same remote network.
    return errors + _overlap_errors(eg, owners if owners is not None else _owners(view), (Kind.SITE,))


def check_removed(view: ResourceView, kind: Kind, name: str) -> list[FieldError]:
    """A resource may go only when nothing still points at it (or goes in the same batch)."""
    if kind is Kind.SITE and view.site(name) is None:
        users = [f"Node/{n}" for n in sorted(view.nodes_in_site(name))[:1]]
        users += [f"ExternalGateway/{e}" for e in sorted(view.externals_of_site(name))[:1]]
        users += _pair_users(view, name, Scope.SITE)
    elif kind is Kind.NODE and view.node(name) is None:
        users = _pair_users(view, name, Scope.NODE)
    else:
        return []
    return [FieldError(kind.value, name, "", f"cannot delete: still referenced by {u}") for u in users]


def _pair_users(view: ResourceView, name: str, scope: Scope) -> list[str]:
    out = []
    for p in sorted(view.policies_naming(name)):
        policy = view.policy(p)
        if policy is not None and policy.spec.scope is scope:
            out.append(f"MeshPolicy/{p} spec.partial.pairs")
    return out


def check_policy(view: ResourceView, policy: MeshPolicy, units: Collection[str] | None) -> list[FieldError]:
    """``units``: the members to recheck, None for all of them."""
    spec = policy.spec
    name = policy.metadata.name
    unit_kind = "node" if spec.scope is Scope.NODE else "site"
    errors: list[FieldError] = []
    if units is None and spec.partial is not None:
        exists = view.node if spec.scope is Scope.NODE else view.site
        for i, pair in enumerate(spec.partial.pairs):
            for member in pair:
                if exists(member) is None:
                    errors.append(
                        _err(
                            policy,
                            f"spec.partial.pairs[{i}]",
                            f"references unknown {unit_kind.capitalize()}/{member}",
                        )
                    )
    if spec.topology is not Topology.HUB_AND_SPOKE or spec.hubs is None:
        return errors
    members = view.policy_units(name)
    hubs = view.policy_hubs(name)
    if len(members) > len(hubs):
        if not hubs:
            errors.append(_err(policy, "spec.hubs.selector", f"selects no {unit_kind}"))
        elif spec.scope is Scope.SITE and not any(view.gateways_of(h) for h in hubs):
            errors.append(
                _err(
                    policy,
                    "spec.hubs.selector",
                    f"hub sites {', '.join(sorted(hubs))} have no gateway node; spokes unreachable",
                )
            )
    transit = spec.hubs.transit_prefixes
    if transit:
        check = members if units is None else [u for u in units if u in members]
        for unit in sorted(check):
            if unit in hubs:
                continue
            for prefix in _unit_prefixes(view, spec.scope, unit):
                if not any(prefix.version == t.version and prefix.subnet_of(t) for t in transit):  # type: ignore[arg-type]
                    errors.append(
                        _err(
                            policy,
                            "spec.hubs.transitPrefixes",
                            f"do not cover {unit_kind.capitalize()}/{unit} prefix {prefix}; "
                            "spoke unreachable from other spokes",
                        )
                    )
                    break
    return errors


def _unit_prefixes(view: ResourceView, scope: Scope, unit: str) -> tuple[Prefix, ...]:
    if scope is Scope.SITE:
        site = view.site(unit)
        return site.spec.prefixes if site else ()
    node = view.node(unit)
    return tuple(ip_network(a) for a in node.traffic_addresses()) if node else ()
