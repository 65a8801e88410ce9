"""The controller's view of the resources: documents and mesh index kept current from the store.

Every replica loads the resources, builds its own `ControllerIndex`, and follows the store's
watch, so all replicas see the same revisions in the same order and compute the same deltas. A
node's desired-state version is the store revision of the last change to its slice; a replica
that started at revision R0 numbers every slice R0 at first, so replicas that started from the
same revision number identically, and an agent resuming with a version a replica does not know
gets a fresh snapshot (never a wrong delta).

Writes go through `commit`: validate against the index at the revision of the guard key, then
write in one transaction that also bumps the guard, guarded by its mod_revision. Any replica can
accept writes; two concurrent writes cannot both pass validation against stale state.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from meshsec.common.deadline import within
from meshsec.controller.api.convert import node_config
from meshsec.controller.mesh import Change, Delete, NodeDelta, PeerKind, Tunnel, Upsert
from meshsec.controller.mesh.routes import SiteRoute, site_reach, site_routes
from meshsec.controller.remoteaccess.credentials import DeviceCertificate, is_revoked
from meshsec.controller.resources import Kind, Node, ValidationError, parse_resource
from meshsec.controller.service.index import ControllerIndex
from meshsec.controller.service.keys import Keys
from meshsec.controller.store import CompactedError, Compare, Event, EventType, Put, Store, StoreError
from meshsec.controller.store.api import Op
from meshsec.controller.store.errors import StoreUnavailableError
from meshsec.v1 import agent_pb2

log = logging.getLogger(__name__)

# Bumped on every ExternalGateway whose PSK is written, in the same transaction as the secret:
# the tunnels' spec is unchanged, so this is what carries the key change into the revision stream.
PSK_SET_AT = "meshsec.io/psk-set-at"
# Signals one watch may have pending. A stalled agent (connected, not reading: its stream blocks
# on flow control) would otherwise keep every update of its slice; past this it gets a Resync.
MAX_BACKLOG = 1024
# A commit that loses the guard race to another replica retries this often, pausing a random
# time up to BASE * 2^n (capped) between tries: about 5 s of contention in all before giving up.
COMMIT_ATTEMPTS = 20
COMMIT_BACKOFF_BASE_S = 0.005
COMMIT_BACKOFF_CAP_S = 0.5


@dataclass(frozen=True, slots=True)
class StoredDoc:
    doc: dict[str, Any]
    mod_revision: int
    create_revision: int


def _psk_set_at(doc: dict[str, Any]) -> Any:
    return doc.get("metadata", {}).get("annotations", {}).get(PSK_SET_AT)


class NodeUpdate(NamedTuple):
    """One version of a node's slice: a delta on `base_version`, or the whole slice (snapshot).

    A NamedTuple, like the mesh's Tunnel: one is built per affected node per change."""

    version: int
    base_version: int
    upserts: tuple[Tunnel, ...]
    removals: tuple[str, ...]
    config: agent_pb2.NodeConfig | None
    at: float  # monotonic time this replica computed it (push latency)
    snapshot: bool = False


class Resync:
    """Pushed to subscribers when the replica rebuilt its index: they must resend a snapshot."""


class NodeGone:
    """Pushed to subscribers when their node was deleted."""


Signal = NodeUpdate | Resync | NodeGone


@dataclass(slots=True)
class NodeSlice:
    version: int
    config: agent_pb2.NodeConfig | None
    history: deque[NodeUpdate]
    subscribers: set[asyncio.Queue[Signal]] = field(default_factory=set)


@dataclass(slots=True)
class WritePlan:
    """What a write does: `changes` are validated against the index, `ops` are written with them."""

    changes: list[Change]
    ops: list[Op]
    compares: list[Compare] = field(default_factory=list)


class MeshState:
    ANNOUNCE_AFTER_CHANGES = 500  # revisions with resource changes between numbering announcements
    REPLAY_TIMEOUT_S = 600

    def __init__(
        self,
        store: Store,
        keys: Keys,
        *,
        history: int = 16,
        status_interval_s: int = 30,
        on_updates: Callable[[int, float], None] | None = None,
        rebase_changes: int = 256,
        rebase_tunnels: int = 200_000,
        reload_secrets: Callable[[], Awaitable[None]] | None = None,
        max_backlog: int = MAX_BACKLOG,
        certificates: Callable[[], Awaitable[Iterable[DeviceCertificate]]] | None = None,
    ) -> None:
        self.store = store
        self.keys = keys
        self.index = ControllerIndex()
        self.docs: dict[tuple[Kind, str], StoredDoc] = {}
        self.revision = 0  # the store revision the index reflects
        self._history = history
        self._status_interval_s = status_interval_s
        self._slices: dict[str, NodeSlice] = {}
        # Per site: the routes of its non-gateway nodes and the tunnel ids they come from.
        self._site_routes: dict[str, tuple[tuple[SiteRoute, ...], frozenset[str]]] = {}
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._on_updates = on_updates  # (number of node updates, seconds spent) per processed revision
        # Beyond these (changes in one revision, or a policy edit, on a mesh of this many tunnels)
        # slices are resnapshotted instead of diffed; see `_too_wide`.
        self._rebase_changes = rebase_changes
        self._rebase_tunnels = rebase_tunnels
        # Called before a batch that touches an ExternalGateway is applied, so the PSKs its tunnels
        # are encoded with are at least as new as the batch (the secrets watch may lag this one).
        self._reload_secrets = reload_secrets
        self._max_backlog = max_backlog
        self._changes_since_announcement = 0
        self._commit_lock = asyncio.Lock()  # local writers take turns; see `commit`
        # The registered device certificates (RemoteAccessCredentials.certificates), reread before
        # every batch that changes a RemoteAccessUser: with the index they give the revocation list
        # the gateways' NodeConfigs carry (`_revoked`). Issuing a certificate needs no reread: a
        # new certificate is of a device that exists, so it is on no list until a user change.
        self._load_certificates = certificates
        self._certificates: tuple[DeviceCertificate, ...] = ()
        self._revoked_cache: tuple[str, ...] | None = None

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Load and follow the store. Versions must mean the same on every replica and across
        restarts, so the state is loaded as of the last numbering announcement (when every replica
        moved every slice to that revision) and the changes since are replayed through the same
        delta computation; serving starts once the replay has caught up. Without a usable
        announcement (none yet, or compacted away) this replica loads the present and announces."""
        replay_to = await self._load(replay=True)
        self._tasks.append(asyncio.create_task(self._follow(), name="mesh-state-watch"))
        if replay_to is None:
            await self.announce()
            return
        if replay_to <= self.revision:
            return
        try:
            await self.wait_for(replay_to, timeout=self.REPLAY_TIMEOUT_S)
        except StoreUnavailableError:
            log.warning(
                "replay not at revision %d after %d s; serving anyway", replay_to, self.REPLAY_TIMEOUT_S
            )

    async def announce(self) -> None:
        """A numbering point: every replica moves all its slices to this write's revision."""
        await self.store.put(self.keys.numbering, json.dumps({"loaded_at": self.revision}).encode())

    async def announce_if_due(self) -> None:
        """Keep the replay a restart needs short (and inside the store's history)."""
        if self._changes_since_announcement >= self.ANNOUNCE_AFTER_CHANGES:
            await self.announce()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def _load(self, *, replay: bool) -> int | None:
        """Build the index; with `replay`, as of the last announcement if the store still has its
        history, returning the revision the replay must reach (else None: loaded the present)."""
        listing = await self.store.range(self.keys.resources)
        await self._reload_certificates()
        replay_to: int | None = None
        numbered_at = listing.revision
        announced = next((kv for kv in listing.kvs if kv.key == self.keys.numbering), None)
        if replay and announced is not None:
            guard = await self.store.get(self.keys.guard)
            target = max([kv.mod_revision for kv in listing.kvs] + [guard.mod_revision if guard else 0])
            if target <= announced.mod_revision:
                # No resource written since: the present is the state at the announcement, which
                # may itself be compacted away by other writes (status reports, events).
                numbered_at = replay_to = announced.mod_revision
            else:
                try:
                    listing = await self.store.range(self.keys.resources, revision=announced.mod_revision)
                    numbered_at, replay_to = listing.revision, target
                except CompactedError:
                    log.info(
                        "numbering announcement at %d compacted away; loading the present",
                        announced.mod_revision,
                    )
        index = ControllerIndex()
        docs: dict[tuple[Kind, str], StoredDoc] = {}
        resources = []
        for kv in listing.kvs:
            if kv.key == self.keys.numbering:
                continue
            parsed = self._parse(kv.key, kv.value)
            if parsed is None:
                continue
            key, doc, resource = parsed
            docs[key] = StoredDoc(doc, kv.mod_revision, kv.create_revision)
            if resource is not None:
                resources.append(resource)
        index.load(resources)
        self.index, self.docs = index, docs
        self._site_routes = {}
        self._revoked_cache = None
        self._set_revision(listing.revision)
        old = self._slices
        self._slices = {}
        for name in index.nodes():
            node = index.node(name)
            assert node is not None
            s = NodeSlice(numbered_at, self._config(node), deque(maxlen=self._history))
            if name in old:
                s.subscribers = old[name].subscribers
            self._slices[name] = s
        for name, s in old.items():
            for queue in s.subscribers:
                queue.put_nowait(Resync() if name in self._slices else NodeGone())
        self._changes_since_announcement = 0
        log.info(
            "loaded %d resources at revision %d%s",
            len(resources),
            listing.revision,
            f", replaying to {replay_to}" if replay_to is not None else "",
        )
        return replay_to

    def _parse(self, key: str, value: bytes) -> tuple[tuple[Kind, str], dict[str, Any], Any] | None:
        kind_text, _, name = key.removeprefix(self.keys.resources).partition("/")
        try:
            kind = Kind(kind_text)
            doc = json.loads(value)
        except ValueError:
            log.error("ignoring unreadable store entry %s", key)
            return None
        try:
            resource = parse_resource(doc)
        except ValidationError as exc:
            # Written by an older controller or by hand: keep the document visible, keep it out of the mesh.
            log.error("stored %s/%s no longer validates, left out of the mesh: %s", kind.value, name, exc)
            resource = None
        return (kind, name), doc, resource

    async def _follow(self) -> None:
        backoff = 0.1
        while True:
            queue: asyncio.Queue[Event] = asyncio.Queue()
            reader = asyncio.create_task(self._read(self.revision + 1, queue))
            try:
                while True:
                    get = asyncio.ensure_future(queue.get())
                    done, _ = await asyncio.wait({get, reader}, return_when=asyncio.FIRST_COMPLETED)
                    if get not in done:
                        get.cancel()
                        reader.result()  # raises what ended the watch
                        raise StoreUnavailableError("watch ended")
                    batch = [get.result()]
                    while not queue.empty():
                        batch.append(queue.get_nowait())
                    gateways = self.keys.resource(Kind.EXTERNAL_GATEWAY, "")
                    if self._reload_secrets is not None and any(e.key.startswith(gateways) for e in batch):
                        await self._reload_secrets()
                    users = self.keys.resource(Kind.REMOTE_ACCESS_USER, "")
                    if any(e.key.startswith(users) for e in batch):
                        # A deleted user or device revokes certificates registered before it went:
                        # the registry is read after the batch was committed, so it has them.
                        await self._reload_certificates()
                    self._apply_events(batch)
                    backoff = 0.1
            except CompactedError:
                log.warning("watch history compacted past revision %d; reloading", self.revision)
                await self._load(replay=False)
                await self.announce()  # our numbering restarted: make everyone's restart with it
            except StoreError as exc:
                log.warning("resource watch failed (%s); resuming from revision %d", exc, self.revision + 1)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, StoreError):
                    await reader

    async def _read(self, start: int, queue: asyncio.Queue[Event]) -> None:
        async with self.store.watch(self.keys.resources, start_revision=start) as watch:
            async for event in watch:
                queue.put_nowait(event)

    # --- applying store events -----------------------------------------------------------------

    def _apply_events(self, events: list[Event]) -> None:
        group: list[Event] = []
        for event in events:
            if group and event.revision != group[0].revision:
                self._apply_revision(group)
                group = []
            group.append(event)
        if group:
            self._apply_revision(group)

    def _apply_revision(self, events: list[Event]) -> None:
        started = time.monotonic()
        revision = events[0].revision
        if revision <= self.revision:
            return  # already loaded (a reload raced the watch)
        changes: list[Change] = []
        nodes: set[str] = set()
        sites: set[str] = set()
        gateway_sites: set[str] = set()  # sites whose routes may have moved
        pools_changed = False  # a RemoteAccessPool changed: gateways NodeConfig.remote_access
        users_changed = False  # a RemoteAccessUser changed: the revocation list may have moved
        gateways_before: dict[str, set[str]] = {}  # of the sites changed Nodes were or are in
        rekeyed: set[str] = set()  # ExternalGateways whose PSK was written
        if any(event.key == self.keys.numbering for event in events):
            self._renumber(revision, started)
            self._changes_since_announcement = 0
            return
        self._changes_since_announcement += 1
        for event in events:
            kind_text, _, name = event.key.removeprefix(self.keys.resources).partition("/")
            try:
                kind = Kind(kind_text)
            except ValueError:
                continue
            resource = None
            if event.type is EventType.PUT:
                parsed = self._parse(event.key, event.value)
                if parsed is not None:
                    old = self.docs.get((kind, name))
                    if kind is Kind.EXTERNAL_GATEWAY and _psk_set_at(parsed[1]) != (
                        _psk_set_at(old.doc) if old else None
                    ):
                        rekeyed.add(name)
                    self.docs[(kind, name)] = StoredDoc(parsed[1], event.revision, event.create_revision)
                    resource = parsed[2]
            else:
                self.docs.pop((kind, name), None)
            changes.append(Upsert(resource) if resource is not None else Delete(kind, name))
            if kind is Kind.NODE:
                nodes.add(name)
                before = self.index.node(name)  # the index still holds the old one
                if before is not None and name in self.index.gateways_of(before.spec.site):
                    gateway_sites.add(before.spec.site)  # a gateway moved or went
                for site in (before.spec.site if before else None, _site_of(resource)):
                    if site and site not in gateways_before:
                        gateways_before[site] = set(self.index.gateways_of(site))
            elif kind is Kind.SITE:
                sites.add(name)
            elif kind is Kind.REMOTE_ACCESS_POOL:
                pools_changed = True
            elif kind is Kind.REMOTE_ACCESS_USER:
                users_changed = True
        if self._too_wide(changes):
            self._rebase(changes, revision, started)
            return
        deltas = self.index.apply(changes, validate=False)
        if users_changed:
            self._revoked_cache = None
        for gateway in sorted(rekeyed):
            self._resend_gateway_tunnels(gateway, deltas)
        # Only a node's own resource or its site's can change its NodeConfig; everyone else here
        # merely has tunnel changes, so their config is not recomputed (O(affected tunnels) work).
        # A site's routes follow its gateways and their tunnels; where they moved, every node of
        # the site is reconfigured (rare: a gateway or a site-scope policy changed).
        gateway_sites.update(s for s, g in gateways_before.items() if set(self.index.gateways_of(s)) != g)
        for name, delta in deltas.items():
            site = _site_of(self.index.node(name))
            if site and name in self.index.gateways_of(site) and self._moves_routes(site, delta):
                gateway_sites.add(site)
        routed = self._rerouted(sites | gateway_sites)
        reconfigured = nodes | {n for s in sites | routed for n in self.index.nodes_in_site(s)}
        if pools_changed:  # which gateways serve a pool, and how: rare edits, every node looked at
            reconfigured |= set(self.index.nodes())
        elif users_changed:  # the revocation list goes to the gateways; their config says if it moved
            reconfigured |= self._pool_gateways()
        updates = 0
        for name in sorted(set(deltas) | reconfigured):
            updates += self._update_slice(name, revision, deltas.get(name), started, name in reconfigured)
        self._set_revision(revision)
        if self._on_updates is not None:
            self._on_updates(updates, time.monotonic() - started)

    def _renumber(self, revision: int, started: float) -> None:
        """Every slice moves to `revision` with an empty delta (connected agents get it, and an
        agent a step behind catches up through it): the numbering point all replicas share."""
        for current in self._slices.values():
            update = NodeUpdate(revision, current.version, (), (), None, started)
            current.version = revision
            current.history.append(update)
            for queue in current.subscribers:
                self._signal(queue, update)
        self._set_revision(revision)
        if self._on_updates is not None:
            self._on_updates(len(self._slices), time.monotonic() - started)

    def _resend_gateway_tunnels(self, gateway: str, deltas: dict[str, NodeDelta]) -> None:
        """Add every tunnel to `gateway` to its node's delta: its key changed, nothing else did."""
        eg = self.index.external_gateway(gateway)
        if eg is None:
            return
        for site in eg.spec.sites:
            for node in self.index.nodes_in_site(site):
                mine = [
                    t
                    for t in self.index.desired_tunnels(node)
                    if t.peer_kind is PeerKind.EXTERNAL_GATEWAY and t.peer == gateway
                ]
                if not mine:
                    continue
                delta = deltas.get(node)
                upserts = {t.id: t for t in (delta.upserts if delta else ())}
                upserts.update((t.id, t) for t in mine)
                deltas[node] = NodeDelta(
                    node,
                    delta.base_version if delta else 0,
                    delta.version if delta else 0,
                    tuple(sorted(upserts.values(), key=lambda t: t.id)),
                    delta.removals if delta else (),
                )

    def _too_wide(self, changes: list[Change]) -> bool:
        """Whether computing this batch's deltas would cost more than resending the slices.

        A bulk apply or a policy/gateway edit can touch every tunnel of a large mesh (a full-mesh
        policy over 10k nodes anchors 50 M tunnels); the deltas would be as big as the slices, and
        most nodes may not even be connected. The decision depends only on the batch and the
        resources, so every replica takes the same one and numbers the versions alike.
        """
        wide_kinds = (Kind.MESH_POLICY, Kind.EXTERNAL_GATEWAY)
        if len(changes) <= self._rebase_changes and not any(c.key[0] in wide_kinds for c in changes):
            return False
        return self.index.tunnel_count() > self._rebase_tunnels

    def _rebase(self, changes: list[Change], revision: int, started: float) -> None:
        """Apply without computing deltas: every slice gets version `revision`, its history is
        dropped, and connected agents are told to take a fresh snapshot."""
        self.index.apply_quietly(changes)
        self._site_routes = {}
        self._revoked_cache = None
        for name in list(self._slices):
            if self.index.node(name) is None:
                gone = self._slices.pop(name)
                for queue in gone.subscribers:
                    queue.put_nowait(NodeGone())
        for name in self.index.nodes():
            node = self.index.node(name)
            assert node is not None
            current = self._slices.get(name)
            subscribers = current.subscribers if current is not None else set()
            self._slices[name] = NodeSlice(
                revision, self._config(node), deque(maxlen=self._history), subscribers
            )
            for queue in subscribers:
                self._signal(queue, Resync())
        self._set_revision(revision)
        log.info(
            "revision %d touched too much of the mesh for deltas; %d slices resnapshotted",
            revision,
            len(self._slices),
        )
        if self._on_updates is not None:
            self._on_updates(len(self._slices), time.monotonic() - started)

    def _update_slice(self, name: str, revision: int, delta: Any, at: float, reconfigured: bool) -> int:
        node = self.index.node(name)
        current = self._slices.get(name)
        if node is None:
            if current is not None:
                del self._slices[name]
                for queue in current.subscribers:
                    queue.put_nowait(NodeGone())
            return 0
        if current is None:
            current = self._slices[name] = NodeSlice(0, None, deque(maxlen=self._history))
        config = self._config(node) if reconfigured or current.config is None else current.config
        # Identity first: comparing two NodeConfig messages serializes both.
        config_changed = config is not current.config and config != current.config
        if not delta and not config_changed:
            return 0
        update = NodeUpdate(
            version=revision,
            base_version=current.version,
            upserts=delta.upserts if delta else (),
            removals=delta.removals if delta else (),
            config=config if config_changed else None,
            at=at,
        )
        current.version, current.config = revision, config
        current.history.append(update)
        for queue in current.subscribers:
            self._signal(queue, update)
        return 1

    def _signal(self, queue: asyncio.Queue[Signal], signal: NodeUpdate | Resync) -> None:
        """Queue `signal`; a backlog at the bound is replaced by one Resync (a snapshot then)."""
        if queue.qsize() >= self._max_backlog:
            while not queue.empty():
                queue.get_nowait()
            signal = Resync()
        queue.put_nowait(signal)

    def _config(self, node: Node) -> agent_pb2.NodeConfig:
        site = self.index.site(node.spec.site)
        stored = self.docs.get((Kind.NODE, node.metadata.name))
        uid = stored.doc.get("metadata", {}).get("uid", "") if stored else ""
        gateway = node.metadata.name in self.index.gateways_of(node.spec.site)
        pools = tuple(
            sorted(
                (p for p in self.index.all_pools() if p.spec.gateways.matches(node.metadata.labels)),
                key=lambda p: p.metadata.name,
            )
        )
        return node_config(
            node,
            uid,
            tuple(str(p) for p in site.spec.prefixes) if site else (),
            gateway,
            self._status_interval_s,
            () if gateway else self._routes_of(node.spec.site),
            pools,
            self._revoked() if pools else (),
        )

    async def _reload_certificates(self) -> None:
        if self._load_certificates is not None:
            self._certificates = tuple(await self._load_certificates())
            self._revoked_cache = None

    def _revoked(self) -> tuple[str, ...]:
        """Serials of unexpired device certificates whose user or device is gone (the list
        ListRevokedCertificates answers too), computed once per change of users or registry."""
        if self._revoked_cache is None:
            now, has_device = time.time(), self.index.has_device
            gone = (c for c in self._certificates if is_revoked(c, has_device, now))
            self._revoked_cache = tuple(sorted(c.serial for c in gone))
        return self._revoked_cache

    def _pool_gateways(self) -> set[str]:
        """Nodes some RemoteAccessPool's gateways selector picks."""
        pools = list(self.index.all_pools())
        out = set()
        for name in self.index.nodes():
            node = self.index.node(name)
            if node is not None and any(p.spec.gateways.matches(node.metadata.labels) for p in pools):
                out.add(name)
        return out

    def _routes_of(self, site: str) -> tuple[SiteRoute, ...]:
        known = self._site_routes.get(site)
        if known is None:
            index = self.index
            known = site_routes(index.gateways_of(site), index.node, index.desired_tunnels, index.policy)
            self._site_routes[site] = known
        return known[0]

    def _moves_routes(self, site: str, delta: NodeDelta) -> bool:
        """Whether a gateway's delta touches a tunnel the site's routes come (or would come) from:
        a node-scope mesh's churn on the gateway recomputes nothing."""
        sources = self._site_routes.get(site, ((), frozenset()))[1]
        if any(tid in sources for tid in delta.removals):
            return True
        return any(site_reach(t, self.index.policy) for t in delta.upserts)

    def _rerouted(self, sites: Iterable[str]) -> set[str]:
        """Of these sites, those whose routes changed (mesh/routes.py): all their nodes need a
        new NodeConfig. Recomputed only for sites whose gateways or gateway tunnels changed."""
        changed = set()
        for site in sites:
            before = self._site_routes.pop(site, None)
            if self._routes_of(site) != (before[0] if before else ()):
                changed.add(site)
        return changed

    def _set_revision(self, revision: int) -> None:
        self.revision = max(self.revision, revision)
        ready = [w for w in self._waiters if w[0] <= self.revision]
        self._waiters = [w for w in self._waiters if w[0] > self.revision]
        for _, future in ready:
            if not future.done():
                future.set_result(None)

    async def caught_up(self) -> int:
        """Return once the index reflects every resource write committed so far on any replica
        (the guard's revision, returned): a read that follows a write made elsewhere sees it."""
        guard = await self.store.get(self.keys.guard)
        revision = guard.mod_revision if guard is not None else 0
        await self.wait_for(revision)
        return revision

    async def wait_for(self, revision: int, timeout: float = 10.0) -> None:
        """Return once the index reflects `revision` (read-your-writes on this replica)."""
        if revision <= self.revision:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((revision, future))
        try:
            await within(timeout, future)
        except TimeoutError as exc:
            raise StoreUnavailableError(
                f"this replica has not seen store revision {revision} after {timeout} s"
            ) from exc

    # --- node slices ---------------------------------------------------------------------------

    def version(self, node: str) -> int:
        s = self._slices.get(node)
        return s.version if s else 0

    def subscribe(self, node: str) -> asyncio.Queue[Signal] | None:
        s = self._slices.get(node)
        if s is None:
            return None
        queue: asyncio.Queue[Signal] = asyncio.Queue()
        s.subscribers.add(queue)
        return queue

    def unsubscribe(self, node: str, queue: asyncio.Queue[Signal]) -> None:
        s = self._slices.get(node)
        if s is not None:
            s.subscribers.discard(queue)

    def subscriber_count(self) -> int:
        return sum(len(s.subscribers) for s in self._slices.values())

    def snapshot(self, node: str) -> NodeUpdate | None:
        s = self._slices.get(node)
        if s is None:
            return None
        return NodeUpdate(
            s.version,
            0,
            tuple(self.index.desired_tunnels(node)),
            (),
            s.config,
            time.monotonic(),
            snapshot=True,
        )

    def catch_up(self, node: str, resume_from: int) -> list[NodeUpdate] | None:
        """What to send an agent at `resume_from`, or None if only a snapshot will do (or no node)."""
        s = self._slices.get(node)
        if s is None or resume_from == 0 or resume_from > s.version:
            return None
        if resume_from == s.version:
            return [NodeUpdate(s.version, s.version, (), (), None, time.monotonic())]
        history = list(s.history)
        for i, update in enumerate(history):
            if update.base_version == resume_from:
                return history[i:]
        return None

    # --- documents and writes --------------------------------------------------------------------

    def doc(self, kind: Kind, name: str) -> StoredDoc | None:
        return self.docs.get((kind, name))

    def docs_of(self, kind: Kind) -> Iterable[tuple[str, StoredDoc]]:
        return sorted(((n, d) for (k, n), d in self.docs.items() if k is kind), key=lambda item: item[0])

    async def commit(
        self, build: Callable[[], Awaitable[WritePlan]], *, attempts: int = COMMIT_ATTEMPTS
    ) -> tuple[int, WritePlan]:
        """Validate and write `build()`'s plan; returns (revision written, plan).

        `build` runs against the index at the guard's current revision and again after every lost
        race, so it sees the latest state; it may raise to refuse the write (ValidationError etc.).

        Commits on this replica take turns (one lock), so they never race each other for the
        guard: only writes from other replicas can make a transaction lose, and those are retried
        after a jittered, growing pause so that contending replicas fall out of step.
        """
        async with self._commit_lock:
            for attempt in range(attempts):
                if attempt:
                    await asyncio.sleep(_backoff_s(attempt))
                guard_revision = await self.caught_up()
                plan = await build()
                self.index.check_or_raise(plan.changes)
                if not plan.ops:
                    return self.revision, plan
                # A write without resources (a secret nobody uses yet) is still ordered by the guard
                # but does not bump it: the resource watch would never see that revision, and every
                # replica waits for the guard's revision before validating.
                touches = any(op.key.startswith(self.keys.resources) for op in plan.ops)
                bump = [Put(self.keys.guard, str(guard_revision).encode())] if touches else []
                result = await self.store.txn(
                    [Compare.mod_revision(self.keys.guard, guard_revision), *plan.compares],
                    [*plan.ops, *bump],
                )
                if result.succeeded:
                    if touches:
                        await self.wait_for(result.revision)
                    return result.revision, plan
        raise StoreUnavailableError(
            f"write lost {attempts} races in a row against other controller replicas; retry"
        )


def _backoff_s(attempt: int) -> float:
    """Full jitter over a doubling window (AWS architecture blog, "Exponential Backoff and Jitter")."""
    window = min(COMMIT_BACKOFF_CAP_S, COMMIT_BACKOFF_BASE_S * 2 ** (attempt - 1))
    return random.uniform(0, window)


def _site_of(resource: object) -> str | None:
    return resource.spec.site if isinstance(resource, Node) else None
