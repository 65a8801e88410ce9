"""The incremental mesh index: resources in, per-node tunnel deltas out.

State is resources plus small indices (nodes per site, gateways per site, members and roles per
policy). Tunnels are never stored: a node's list is computed on demand from the indices, and a
change is handled by recomputing only the tunnels incident to the nodes it "anchors":

- the tunnels of each anchor are computed before and after the change, and both ends of every
  such tunnel are compared, so a peer gets an O(1) delta for its one affected tunnel;
- a node join/leave/edit anchors that node (in every policy it belongs to, before or after);
  a site edit anchors the site's gateways; a policy or external-gateway edit anchors its
  members. A spoke-to-spoke policy without transitPrefixes lists every member's prefixes on
  each hub tunnel, so there any membership change anchors all members (documented cost).

Anything that appears as an anchor only after a change was not a member before it, so it had
no tunnels there; that is why the "before" pass needs only the anchors visible before.
A batch is all-or-nothing: it is applied, validated as a whole, and undone if invalid.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass

from meshsec.controller.mesh.membership import Membership
from meshsec.controller.mesh.model import NodeDelta, Tunnel
from meshsec.controller.mesh.tunnels import (
    external_tunnel,
    gateway_source,
    host_selectors,
    node_end,
    node_pair,
    policy_source,
    prefix_selectors,
    selectors_to_prefixes,
    tunnel_id,
)
from meshsec.controller.resources.errors import FieldError, ValidationError
from meshsec.controller.resources.model import (
    REMOTE_ACCESS_KINDS,
    ExternalGateway,
    Kind,
    MeshPolicy,
    Node,
    RemoteAccessPool,
    RemoteAccessUser,
    Resource,
    Scope,
    Site,
    Topology,
    resource_key,
)
from meshsec.controller.resources.validate import Touched, validate_all, validate_touched


@dataclass(frozen=True, slots=True)
class Upsert:
    resource: Resource

    @property
    def key(self) -> tuple[Kind, str]:
        return resource_key(self.resource)


@dataclass(frozen=True, slots=True)
class Delete:
    kind: Kind
    name: str

    @property
    def key(self) -> tuple[Kind, str]:
        return self.kind, self.name


Change = Upsert | Delete
_Source = tuple[Kind, str]  # a MeshPolicy or an ExternalGateway
_Anchors = dict[_Source, set[str]]
_Edges = dict[tuple[str, str], Tunnel]  # (node, tunnel id) -> that node's end
_Pending = dict[str, dict[str, tuple[Tunnel | None, Tunnel | None]]]


class MeshIndex:
    def __init__(self) -> None:
        self._sites: dict[str, Site] = {}
        self._nodes: dict[str, Node] = {}
        self._policies: dict[str, MeshPolicy] = {}
        self._externals: dict[str, ExternalGateway] = {}
        self._members: dict[str, Membership] = {}
        self._nodes_by_site: dict[str, set[str]] = {}
        self._gateways: dict[str, set[str]] = {}
        self._ike_ids: dict[str, set[str]] = {}
        self._externals_by_site: dict[str, set[str]] = {}
        self._policies_naming: dict[str, set[str]] = {}
        self._node_ts: dict[str, tuple[str, ...]] = {}
        self._site_ts: dict[str, tuple[str, ...]] = {}
        self._versions: dict[str, int] = {}
        # Remote access: kept and validated here, never a source of mesh tunnels.
        self._pools: dict[str, RemoteAccessPool] = {}
        self._users: dict[str, RemoteAccessUser] = {}
        self._users_by_pool: dict[str, set[str]] = {}
        self._user_identities: dict[str, set[str]] = {}

    # --- public API ------------------------------------------------------------------------------

    def apply(
        self, changes: Iterable[Change], *, validate: bool = True, deltas: bool = True
    ) -> dict[str, NodeDelta]:
        """Applies a batch atomically; returns the non-empty delta of every affected node.

        Raises ValidationError (and changes nothing) if the resulting resource set is invalid.
        ``deltas=False`` is for loading a stored resource set at start-up: a full mesh has N^2
        tunnel ends, which nobody needs as deltas then (agents fetch `desired_tunnels` on
        connect); versions are not bumped.
        """
        batch = list(changes)
        seen: set[tuple[Kind, str]] = set()
        dupes = []
        for change in batch:
            if change.key in seen:
                dupes.append(
                    FieldError(change.key[0].value, change.key[1], "", "appears more than once in the batch")
                )
            seen.add(change.key)
        if dupes:
            raise ValidationError(dupes)
        pending: _Pending | None = {} if deltas else None
        touched = Touched()
        undo: list[Change] = []
        try:
            for change in batch:
                undo.append(self._inverse(change))
                self._apply_one(change, pending, touched)
            if validate:
                errors = validate_touched(self, touched)
                if errors:
                    raise ValidationError(errors)
        except BaseException:
            for change in reversed(undo):
                self._apply_one(change, None, Touched())
            raise
        return self._finish(pending) if pending is not None else {}

    def desired_tunnels(self, node: str) -> list[Tunnel]:
        """The node's full desired state, sorted by tunnel id; O(its tunnels)."""
        n = self._nodes.get(node)
        if n is None:
            return []
        out = [t for m in self._members.values() for t in self._local_ends(m, n)]
        out += [self._external_edge(self._externals[e], n) for e in self._node_externals(n)]
        return sorted(out, key=lambda t: t.id)

    def has_tunnel(self, node: str, tid: str, peer: str) -> bool:
        """Whether ``tid`` is ``node``'s tunnel to ``peer``, without computing any tunnel.

        An id is a hash of its source and the pair (`tunnel_id`), so recomputing it for each source
        that pairs the two is exact; that costs O(sources naming the node), not O(its tunnels).
        """
        n = self._nodes.get(node)
        if n is None:
            return False
        if peer in self._node_externals(n) and tid == tunnel_id(gateway_source(peer), node, peer):
            return True
        p = self._nodes.get(peer)
        if p is None:
            return False
        for name, m in self._members.items():
            unit, peer_unit = self._unit_of(m, n), self._unit_of(m, p)
            if (
                unit is not None
                and peer_unit is not None
                and m.has_pair(unit, peer_unit)
                and tid == tunnel_id(policy_source(name), node, peer)
            ):
                return True
        return False

    def version(self, node: str) -> int:
        """Increments with every non-empty delta; a replica fed the same batches agrees."""
        return self._versions.get(node, 0)

    def nodes(self) -> list[str]:
        return sorted(self._nodes)

    def resources(self) -> list[Resource]:
        out: list[Resource] = [
            *self._sites.values(),
            *self._nodes.values(),
            *self._policies.values(),
            *self._externals.values(),
            *self._pools.values(),
            *self._users.values(),
        ]
        return sorted(out, key=lambda r: (r.kind.value, r.metadata.name))

    def get(self, kind: Kind, name: str) -> Resource | None:
        table: dict[str, Resource] = self._table(kind)  # type: ignore[assignment]
        return table.get(name)

    def validate_all(self) -> list[FieldError]:
        return validate_all(self)

    # --- ResourceView (read by validation) ------------------------------------------------------

    def site(self, name: str) -> Site | None:
        return self._sites.get(name)

    def node(self, name: str) -> Node | None:
        return self._nodes.get(name)

    def policy(self, name: str) -> MeshPolicy | None:
        return self._policies.get(name)

    def external_gateway(self, name: str) -> ExternalGateway | None:
        return self._externals.get(name)

    def all_sites(self) -> Iterable[Site]:
        return self._sites.values()

    def all_nodes(self) -> Iterable[Node]:
        return self._nodes.values()

    def all_policies(self) -> Iterable[MeshPolicy]:
        return self._policies.values()

    def all_external_gateways(self) -> Iterable[ExternalGateway]:
        return self._externals.values()

    def nodes_in_site(self, site: str) -> Collection[str]:
        return self._nodes_by_site.get(site, set())

    def gateways_of(self, site: str) -> Collection[str]:
        return self._gateways.get(site, set())

    def nodes_with_ike_id(self, ike_id: str) -> Collection[str]:
        """Case-insensitively: agents match FQDN IDs to certificate names that way (RFC 5280)."""
        return self._ike_ids.get(ike_id.lower(), set())

    def externals_of_site(self, site: str) -> Collection[str]:
        return self._externals_by_site.get(site, set())

    def policy_units(self, policy: str) -> Collection[str]:
        m = self._members.get(policy)
        return m.units if m else set()

    def policy_hubs(self, policy: str) -> Collection[str]:
        m = self._members.get(policy)
        return m.hubs if m else set()

    def policies_naming(self, unit: str) -> Collection[str]:
        return self._policies_naming.get(unit, set())

    def pool(self, name: str) -> RemoteAccessPool | None:
        return self._pools.get(name)

    def user(self, name: str) -> RemoteAccessUser | None:
        return self._users.get(name)

    def all_pools(self) -> Iterable[RemoteAccessPool]:
        return self._pools.values()

    def all_users(self) -> Iterable[RemoteAccessUser]:
        return self._users.values()

    def users_of_pool(self, pool: str) -> Collection[str]:
        return self._users_by_pool.get(pool, set())

    def users_with_identity(self, identity: str) -> Collection[str]:
        return self._user_identities.get(identity.lower(), set())

    def has_device(self, user: str, device: str) -> bool:
        """Whether `device` is (still) in RemoteAccessUser `user`'s spec.devices."""
        found = self._users.get(user)
        return found is not None and any(d.name == device for d in found.spec.devices)

    # --- one change ------------------------------------------------------------------------------

    def _table(
        self, kind: Kind
    ) -> (
        dict[str, Site]
        | dict[str, Node]
        | dict[str, MeshPolicy]
        | dict[str, ExternalGateway]
        | dict[str, RemoteAccessPool]
        | dict[str, RemoteAccessUser]
    ):
        if kind is Kind.REMOTE_ACCESS_POOL:
            return self._pools
        if kind is Kind.REMOTE_ACCESS_USER:
            return self._users
        if kind is Kind.SITE:
            return self._sites
        if kind is Kind.NODE:
            return self._nodes
        if kind is Kind.MESH_POLICY:
            return self._policies
        return self._externals

    def _inverse(self, change: Change) -> Change:
        old = self.get(*change.key)
        return Upsert(old) if old is not None else Delete(*change.key)

    def _apply_one(self, change: Change, pending: _Pending | None, touched: Touched) -> None:
        kind, name = change.key
        old = self.get(kind, name)
        new = change.resource if isinstance(change, Upsert) else None
        if old is None and new is None:
            return
        if kind in REMOTE_ACCESS_KINDS:
            self._set_remote_access(kind, name, old, new, touched)
            return
        if old is not None and new is not None and old.metadata == new.metadata and old.spec == new.spec:
            self._table(kind)[name] = new  # type: ignore[assignment]  # status only: no mesh input changed
            return
        before: _Edges = {}
        anchors: _Anchors = {}
        if pending is not None:
            anchors = self._anchors(kind, name, new)
            before = self._edges(anchors)
        self._mutate(kind, name, old, new, touched)
        if pending is None:
            return
        for source, nodes in self._anchors(kind, name).items():
            anchors.setdefault(source, set()).update(nodes)
        after = self._edges(anchors)
        # A join has no "before" and a leave no "after": no union of the two key sets is built.
        for (node, tid), end in after.items():
            slot = pending.get(node)
            if slot is None:
                slot = pending[node] = {}
            previous = slot.get(tid)
            slot[tid] = (previous[0] if previous else before.get((node, tid)), end)
        for key, end in before.items():
            if key not in after:
                node, tid = key
                slot = pending.setdefault(node, {})
                previous = slot.get(tid)
                slot[tid] = (previous[0] if previous else end, None)

    def _finish(self, pending: _Pending) -> dict[str, NodeDelta]:
        out: dict[str, NodeDelta] = {}
        versions = self._versions
        for node in sorted(pending):
            upserts: list[Tunnel] = []
            removals: list[str] = []
            for tid, (old, new) in pending[node].items():
                if new is None:
                    if old is not None:
                        removals.append(tid)
                elif new != old:
                    upserts.append(new)
            if upserts or removals:
                if len(upserts) > 1:
                    upserts.sort(key=_tunnel_id)
                removals.sort()
                base = versions.get(node, 0)
                versions[node] = base + 1
                out[node] = NodeDelta(node, base, base + 1, tuple(upserts), tuple(removals))
        return out

    # --- anchors and edges -------------------------------------------------------------------------

    def _anchors(self, kind: Kind, name: str, incoming: Resource | None = None) -> _Anchors:
        """Sources and nodes whose tunnels a change of ``kind/name`` can alter, in the current state.

        Before a change, ``incoming`` is its new version: a spoke-to-spoke policy without transit
        prefixes is anchored whole if the unit is a member now *or will be*, because the members
        anchored only afterwards would otherwise look as if they had had no tunnels before.
        """
        anchors: _Anchors = {}
        if kind is Kind.NODE:
            node = self._nodes.get(name)
            for policy, m in self._members.items():
                member = node is not None and self._unit_of(m, node) is not None
                if _is_wide(m) and (member or self._would_join(m, incoming)):
                    anchors[(Kind.MESH_POLICY, policy)] = self._all_endpoints(m)
                elif member:
                    anchors[(Kind.MESH_POLICY, policy)] = {name}
            for eg in self._node_externals(node) if node is not None else ():
                anchors[(Kind.EXTERNAL_GATEWAY, eg)] = {name}
        elif kind is Kind.SITE:
            for policy, m in self._members.items():
                if m.policy.spec.scope is not Scope.SITE:
                    continue
                member = name in m.units
                if _is_wide(m) and (member or self._would_join(m, incoming)):
                    anchors[(Kind.MESH_POLICY, policy)] = self._all_endpoints(m)
                elif member:
                    anchors[(Kind.MESH_POLICY, policy)] = set(self._gateways.get(name, ()))
            for eg in self._externals_by_site.get(name, ()):
                anchors[(Kind.EXTERNAL_GATEWAY, eg)] = set(self._gateways.get(name, ()))
        elif kind is Kind.MESH_POLICY:
            if name in self._members:
                anchors[(kind, name)] = self._all_endpoints(self._members[name])
        else:
            external = self._externals.get(name)
            if external is not None:
                anchors[(kind, name)] = {g for s in external.spec.sites for g in self._gateways.get(s, ())}
        return anchors

    def _would_join(self, m: Membership, incoming: Resource | None) -> bool:
        spec = m.policy.spec
        if isinstance(incoming, Site):
            return spec.scope is Scope.SITE and spec.members.matches(incoming.metadata.labels)
        if not isinstance(incoming, Node):
            return False
        if spec.scope is Scope.NODE:
            return spec.members.matches(incoming.metadata.labels)
        site = self._sites.get(incoming.spec.site)
        return (
            site is not None
            and incoming.spec.site in m.units
            and site.spec.gateway_selector.matches(incoming.metadata.labels)
        )

    def _edges(self, anchors: _Anchors) -> _Edges:
        out: _Edges = {}
        for (kind, source), nodes in anchors.items():
            if kind is Kind.EXTERNAL_GATEWAY:
                external = self._externals.get(source)
                for name in nodes:
                    node = self._nodes.get(name)
                    if external is not None and node is not None and source in self._node_externals(node):
                        t = self._external_edge(external, node)
                        out[(name, t.id)] = t
                continue
            m = self._members.get(source)
            if m is None:
                continue
            done: set[str] = set()
            for name in sorted(nodes):
                node = self._nodes.get(name)
                if node is None:
                    continue
                # An edge between two anchors is computed once, from the first one's side.
                for mine, theirs in self._policy_edges(m, node, done):
                    out[(mine.local_node, mine.id)] = mine
                    out[(theirs.local_node, theirs.id)] = theirs
                done.add(name)
        return out

    def _peers_of(
        self, m: Membership, node: Node, skip: Collection[str] = ()
    ) -> Iterator[tuple[Node, tuple[str, ...], tuple[str, ...]]]:
        """(peer node, what ``node`` protects towards it, what the peer protects) per tunnel."""
        unit = self._unit_of(m, node)
        if unit is None:
            return
        nodes = self._nodes
        if not _hub_transit(m) and m.policy.spec.scope is Scope.NODE:
            # The common case, one node per unit protecting only its own prefixes, without the
            # per-peer calls of the general case below (a full-mesh join visits every member).
            mine = self._node_ts.get(unit, ())
            node_ts = self._node_ts
            for peer_unit in m.peers(unit):
                if peer_unit not in skip:
                    yield nodes[peer_unit], mine, node_ts.get(peer_unit, ())
            return
        for peer_unit in m.peers(unit):
            mine = self._selectors(m, unit, peer_unit)
            theirs = self._selectors(m, peer_unit, unit)
            for peer_name in self._endpoints(m, peer_unit):
                if peer_name not in skip:
                    yield nodes[peer_name], mine, theirs

    def _policy_edges(
        self, m: Membership, node: Node, skip: Collection[str]
    ) -> Iterator[tuple[Tunnel, Tunnel]]:
        for peer, mine, theirs in self._peers_of(m, node, skip):
            yield node_pair(m.policy, node, peer, mine, theirs)

    def _local_ends(self, m: Membership, node: Node) -> Iterator[Tunnel]:
        for peer, mine, theirs in self._peers_of(m, node):
            yield node_end(m.policy, node, peer, mine, theirs)

    def _external_edge(self, external: ExternalGateway, node: Node) -> Tunnel:
        return external_tunnel(external, node, self._site_ts.get(node.spec.site, ()))

    def _node_externals(self, node: Node) -> list[str]:
        if node.metadata.name not in self._gateways.get(node.spec.site, ()):
            return []
        return sorted(self._externals_by_site.get(node.spec.site, ()))

    def _unit_of(self, m: Membership, node: Node) -> str | None:
        name = node.metadata.name
        if m.policy.spec.scope is Scope.NODE:
            return name if name in m.units else None
        site = node.spec.site
        return site if site in m.units and name in self._gateways.get(site, ()) else None

    def _endpoints(self, m: Membership, unit: str) -> Collection[str]:
        if m.policy.spec.scope is Scope.NODE:
            return (unit,)
        return self._gateways.get(unit, ())

    def _all_endpoints(self, m: Membership) -> set[str]:
        return {n for u in m.units for n in self._endpoints(m, u)}

    def _unit_ts(self, m: Membership, unit: str) -> tuple[str, ...]:
        table = self._node_ts if m.policy.spec.scope is Scope.NODE else self._site_ts
        return table.get(unit, ())

    def _selectors(self, m: Membership, unit: str, peer_unit: str) -> tuple[str, ...]:
        """What ``unit`` protects on its tunnel to ``peer_unit``: its own prefixes, plus, for a hub
        talking to a spoke with spokeToSpoke, what that spoke reaches through the hub."""
        own = self._unit_ts(m, unit)
        hubs = m.policy.spec.hubs
        if hubs is None or not _hub_transit(m) or unit not in m.hubs or peer_unit in m.hubs:
            return own
        if hubs.transit_prefixes:
            return prefix_selectors([*selectors_to_prefixes(own), *hubs.transit_prefixes])
        others = [p for u in m.units if u != peer_unit for p in selectors_to_prefixes(self._unit_ts(m, u))]
        return prefix_selectors(others)

    # --- mutation of the indices ------------------------------------------------------------------

    def _mutate(
        self, kind: Kind, name: str, old: Resource | None, new: Resource | None, touched: Touched
    ) -> None:
        if new is None:
            touched.removed.add((kind, name))
        if kind is Kind.NODE:
            self._set_node(name, old, new, touched)  # type: ignore[arg-type]
        elif kind is Kind.SITE:
            self._set_site(name, old, new, touched)  # type: ignore[arg-type]
        elif kind is Kind.MESH_POLICY:
            self._set_policy(name, old, new, touched)  # type: ignore[arg-type]
        else:
            self._set_external(name, old, new, touched)  # type: ignore[arg-type]

    def _set_node(self, name: str, old: Node | None, new: Node | None, touched: Touched) -> None:
        changed_sites: set[str] = set()
        if old is not None:
            _discard(self._nodes_by_site, old.spec.site, name)
            _discard(self._ike_ids, old.spec.identity.ike_id.lower(), name)
            if _discard(self._gateways, old.spec.site, name):
                changed_sites.add(old.spec.site)
            del self._nodes[name]
            self._node_ts.pop(name, None)
        if new is not None:
            touched.nodes.add(name)
            self._nodes[name] = new
            # Its addresses, then what it routes (podCIDRs); transport mode uses the endpoints.
            routed = prefix_selectors(new.spec.prefixes)
            self._node_ts[name] = host_selectors(new.traffic_addresses()) + routed
            self._nodes_by_site.setdefault(new.spec.site, set()).add(name)
            self._ike_ids.setdefault(new.spec.identity.ike_id.lower(), set()).add(name)
            site = self._sites.get(new.spec.site)
            if site is not None and site.spec.gateway_selector.matches(new.metadata.labels):
                self._gateways.setdefault(new.spec.site, set()).add(name)
                changed_sites.add(new.spec.site)
        labels = new.metadata.labels if new is not None else None
        for policy, m in self._members.items():
            if m.policy.spec.scope is Scope.NODE:
                was = name in m.units
                m.place(name, labels)
                if was or name in m.units:
                    touched.touch_policy(policy, name)
            else:
                for site_name in changed_sites:
                    if site_name in m.units:
                        touched.touch_policy(policy, site_name)

    def _set_site(self, name: str, old: Site | None, new: Site | None, touched: Touched) -> None:
        self._gateways.pop(name, None)
        if new is None:
            del self._sites[name]
            self._site_ts.pop(name, None)
        else:
            touched.sites.add(name)
            self._sites[name] = new
            self._site_ts[name] = prefix_selectors(new.spec.prefixes)
            selector = new.spec.gateway_selector
            gateways = {
                n
                for n in self._nodes_by_site.get(name, ())
                if selector.matches(self._nodes[n].metadata.labels)
            }
            if gateways:
                self._gateways[name] = gateways
        labels = new.metadata.labels if new is not None else None
        for policy, m in self._members.items():
            if m.policy.spec.scope is Scope.SITE:
                was = name in m.units
                m.place(name, labels)
                if was or name in m.units:
                    touched.touch_policy(policy, name)

    def _set_policy(
        self, name: str, old: MeshPolicy | None, new: MeshPolicy | None, touched: Touched
    ) -> None:
        if old is not None:
            del self._policies[name]
            del self._members[name]
            for unit in _pair_names(old):
                _discard(self._policies_naming, unit, name)
        if new is None:
            return
        touched.touch_policy(name, None)
        self._policies[name] = new
        m = Membership(new)
        if new.spec.scope is Scope.NODE:
            for node in self._nodes.values():
                m.place(node.metadata.name, node.metadata.labels)
        else:
            for site in self._sites.values():
                m.place(site.metadata.name, site.metadata.labels)
        self._members[name] = m
        for unit in _pair_names(new):
            self._policies_naming.setdefault(unit, set()).add(name)

    def _set_external(
        self, name: str, old: ExternalGateway | None, new: ExternalGateway | None, touched: Touched
    ) -> None:
        if old is not None:
            del self._externals[name]
            for site in old.spec.sites:
                _discard(self._externals_by_site, site, name)
        if new is not None:
            touched.external_gateways.add(name)
            self._externals[name] = new
            for site in new.spec.sites:
                self._externals_by_site.setdefault(site, set()).add(name)


    def _set_remote_access(
        self, kind: Kind, name: str, old: Resource | None, new: Resource | None, touched: Touched
    ) -> None:
        if new is None:
            touched.removed.add((kind, name))
        if kind is Kind.REMOTE_ACCESS_POOL:
            if new is None:
                del self._pools[name]
            else:
                assert isinstance(new, RemoteAccessPool)
                self._pools[name] = new
            touched.pools.add(name)
            return
        if isinstance(old, RemoteAccessUser):
            _discard(self._users_by_pool, old.spec.pool, name)
            _discard(self._user_identities, old.spec.identity.lower(), name)
            del self._users[name]
        if isinstance(new, RemoteAccessUser):
            self._users[name] = new
            self._users_by_pool.setdefault(new.spec.pool, set()).add(name)
            self._user_identities.setdefault(new.spec.identity.lower(), set()).add(name)
            touched.users.add(name)


def _tunnel_id(t: Tunnel) -> str:
    return t.id


def _hub_transit(m: Membership) -> bool:
    """Whether hubs relay spoke-to-spoke traffic, so their selectors towards spokes grow."""
    hubs = m.policy.spec.hubs
    return hubs is not None and hubs.spoke_to_spoke


def _is_wide(m: Membership) -> bool:
    hubs = m.policy.spec.hubs
    return (
        m.policy.spec.topology is Topology.HUB_AND_SPOKE
        and hubs is not None
        and hubs.spoke_to_spoke
        and not hubs.transit_prefixes
    )


def _pair_names(policy: MeshPolicy) -> set[str]:
    partial = policy.spec.partial
    return {u for pair in partial.pairs for u in pair} if partial else set()


def _discard(table: dict[str, set[str]], key: str, value: str) -> bool:
    members = table.get(key)
    if members is None or value not in members:
        return False
    members.discard(value)
    if not members:
        del table[key]
    return True


def desired_state(resources: Iterable[Resource]) -> dict[str, list[Tunnel]]:
    """From-scratch computation: every node's desired tunnels for a resource set (validated)."""
    index = MeshIndex()
    index.apply(Upsert(r) for r in resources)
    return {node: index.desired_tunnels(node) for node in index.nodes()}
