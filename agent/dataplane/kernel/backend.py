"""The kernel data plane: `DataPlane` on Linux XFRM over netlink.

Modes, per policy: policy-based (no if_id: the selectors pick the tunnel; outbound tunnel policies
get a route in the agent's table, see routes.py) and route-based (an XFRM interface per tunnel, SAs
and policies carry its if_id, the caller's routes pick the tunnel), which needs xfrm interfaces:
SAs/policies with an if_id are refused on kernels without them.

SPI reservations: ALLOCSPI creates a larval SA (no algorithms) that the kernel deletes after
net.core.xfrm_acq_expires (30 s by default) unless `add_sa` fills it in (UPDSA; NEWSA would fail
with EEXIST on the reserved SPI). Each reservation gets its own reqid from a private range because
the kernel hands the same larval SA back for a repeated (src, dst, reqid) request.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import logging
import os
import secrets
import socket
from collections.abc import AsyncIterator, Sequence
from typing import Any

from pyroute2 import IPRoute

from meshsec.agent.dataplane.api import (
    Capabilities,
    DataPlaneError,
    DataPlaneEvent,
    Direction,
    IkeReceiver,
    IPAddress,
    IPNetwork,
    IpsecProtocol,
    Mode,
    OwnedState,
    Policy,
    SaCounters,
    SaId,
    SecurityAssociation,
    TrafficSelector,
    Unsupported,
)
from meshsec.agent.dataplane.kernel import bypass as socket_bypass
from meshsec.agent.dataplane.kernel import capabilities as caps_probe
from meshsec.agent.dataplane.kernel import mtu
from meshsec.agent.dataplane.kernel import routes as rt
from meshsec.agent.dataplane.kernel import translate as tr
from meshsec.agent.dataplane.kernel import xfrm_messages as xm
from meshsec.agent.dataplane.kernel.encap import EncapSocketReader
from meshsec.agent.dataplane.kernel.routes import DEFAULT_ROUTE_TABLE, RouteTable, TunnelRoute
from meshsec.agent.dataplane.kernel.translate import OwnerMark
from meshsec.agent.dataplane.kernel.xfrm_socket import KernelError, Label, XfrmMulticast, XfrmSocket
from meshsec.agent.dataplane.userspace.mtu import Suite

log = logging.getLogger(__name__)

# Outside RFC 7296's SPI ranges nothing is reserved, but 0-255 are reserved by IANA for ESP/AH.
DEFAULT_SPI_RANGE = (0xC000_0000, 0xFFFF_FFFF)
_ALLOC_REQIDS = (0xFFF0_0000, 0xFFFF_FFFF)  # private reqids for SPI reservations only
_GONE = {errno.ENOENT, errno.ESRCH}
_NOT_STARTED = Capabilities(backend="kernel", esp=False, ah=False, aead_gcm=False, udp_encapsulation=False,
                            notes=("not started: capabilities unknown",))


class KernelDataPlane:
    """One per agent. `netns` names the network namespace to program (None: the agent's own)."""

    def __init__(self, *, netns: str | None = None, owner: OwnerMark | None = None,
                 scratch_netns: str | None = None, spi_range: tuple[int, int] = DEFAULT_SPI_RANGE,
                 capabilities: Capabilities | None = None,
                 route_table: RouteTable | None = DEFAULT_ROUTE_TABLE, mss_clamping: bool = True) -> None:
        """`capabilities`: skip probing and use these (another plane on the same kernel found them;
        probes are per kernel, not per namespace). `route_table`: where routes for outbound tunnel
        policies go; None installs no routes (the caller routes). `mss_clamping`: keep the nftables
        table `inet meshsec` (TCP MSS clamped to the route MTU) while an outbound policy exists."""
        self.netns = netns
        self.owner = owner or OwnerMark()
        self.scratch_netns = scratch_netns or f"meshsec-probe-{os.getpid()}"
        self.spi_range = spi_range
        self._caps = capabilities or _NOT_STARTED
        self._sock = XfrmSocket(netns)
        self._mcast = XfrmMulticast((xm.XFRMNLGRP_ACQUIRE, xm.XFRMNLGRP_EXPIRE), netns)
        self._events: asyncio.Queue[DataPlaneEvent] = asyncio.Queue()
        self._event_task: asyncio.Task[None] | None = None
        self._reserved: set[SaId] = set()
        self._policy_if_ids: dict[tuple[TrafficSelector, Direction], int] = {}
        self.route_table = route_table
        # remote prefix -> the OUT tunnel policies (selectors) that need its route, and what the
        # installed route was made from (so re-ensuring an unchanged policy costs nothing)
        self._route_users: dict[IPNetwork, set[TrafficSelector]] = {}
        self._routes: dict[IPNetwork, TunnelRoute] = {}
        self._route_reqids: dict[IPNetwork, int] = {}
        # reqid -> the newest outbound SA's id and overhead (transforms, UDP encapsulation)
        self._out_overhead: dict[int, tuple[SaId, Suite | None, bool]] = {}
        self.mss_clamping = mss_clamping
        self._clamping_installed = False
        self.mss_clamping_errors = 0
        self._route_based_seen = False
        self.route_errors = 0
        # Random start: a previous process's reservations may still be alive (and reqid-keyed).
        first = _ALLOC_REQIDS[0] + secrets.randbelow(_ALLOC_REQIDS[1] - _ALLOC_REQIDS[0])
        self._alloc_reqid = itertools.chain(range(first, _ALLOC_REQIDS[1]),
                                            itertools.cycle(range(*_ALLOC_REQIDS)))
        self._encap: list[EncapSocketReader] = []
        self.events_dropped = 0
        self.events_lost_episodes = 0

    # -- life cycle ------------------------------------------------------------------------------

    @property
    def capabilities(self) -> Capabilities:
        return self._caps

    @property
    def routing_mode(self) -> str:
        """What the installed policies use so far: "route" once a policy with an if_id was
        installed, "policy" otherwise (route-based needs `capabilities.xfrm_interfaces`)."""
        return "route" if self._route_based_seen else "policy"

    async def detect(self) -> Capabilities:
        """Probe the kernel (once); `start` uses the result."""
        if self._caps is _NOT_STARTED:
            self._caps = await caps_probe.detect(self.scratch_netns)
        return self._caps

    async def start(self) -> None:
        await self.detect()
        await self._sock.open()
        await self._mcast.open()
        self._event_task = asyncio.create_task(self._pump_events(), name="xfrm-events")
        routes = (f"routes in table {self.route_table.table} (rule priority {self.route_table.rule_priority})"
                  if self.route_table else "no routes (the caller routes)")
        log.info("kernel data plane: esp=%s gcm=%s chacha20poly1305=%s ah=%s xfrm-interfaces=%s; "
                 "policy-based tunnels, %s; route-based (if_id) %s%s",
                 self._caps.esp, self._caps.aead_gcm, self._caps.aead_chacha20poly1305, self._caps.ah,
                 self._caps.xfrm_interfaces, routes,
                 "available on request" if self._caps.xfrm_interfaces else "unavailable",
                 "".join(f"; {n}" for n in self._caps.notes))

    async def close(self) -> None:
        for reader in self._encap:
            reader.stop()
        self._encap.clear()
        if self._event_task is not None:
            self._event_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._event_task
            self._event_task = None
        self._mcast.close()
        self._sock.close()

    # -- SAs -------------------------------------------------------------------------------------

    async def allocate_spi(self, protocol: IpsecProtocol, src: IPAddress, dst: IPAddress) -> int:
        msg = tr.allocspi_message(protocol, src, dst, next(self._alloc_reqid), self.owner, self.spi_range)
        answers = await self._call(lambda: f"ALLOCSPI {protocol.name} {src} -> {dst}", msg,
                                   xm.XFRM_MSG_ALLOCSPI, ack=False)
        if not answers:
            raise DataPlaneError(f"ALLOCSPI {src} -> {dst}: the kernel answered nothing")
        spi = int(answers[0]["id_spi"])
        self._reserved.add(SaId(dst=dst, spi=spi, protocol=protocol))
        return spi

    async def add_sa(self, sa: SecurityAssociation) -> None:
        self._check_supported(sa)
        msg = tr.sa_message(sa, self.owner)
        def what() -> str:
            return f"add SA {sa.id.protocol.name} {sa.id.spi:#x} {sa.src} -> {sa.id.dst}"

        if sa.id in self._reserved:
            await self._call(what, msg, xm.XFRM_MSG_UPDSA)
            self._reserved.discard(sa.id)
        else:
            try:
                await self._call(what, msg, xm.XFRM_MSG_NEWSA)
            except KernelError as exc:
                if exc.errno != errno.EEXIST:
                    raise
                # A reservation made before a restart: fill it in; a real SA: refuse.
                existing = await self._get_sa(sa.id)
                if existing is None or not tr.is_larval(existing):
                    raise DataPlaneError(f"{what()}: an SA with this SPI is already installed") from None
                await self._call(what, msg, xm.XFRM_MSG_UPDSA)
        await self._note_outbound(sa)

    async def update_sa(self, sa: SecurityAssociation) -> None:
        self._check_supported(sa)
        await self._call(f"update SA {sa.id.spi:#x}", tr.sa_message(sa, self.owner), xm.XFRM_MSG_UPDSA)
        self._reserved.discard(sa.id)
        await self._note_outbound(sa)

    async def migrate_sa(self, old: SaId, sa: SecurityAssociation) -> None:
        """GETSA `old`, then NEWSA `sa` with its replay state (sequence numbers, bitmap) and
        current lifetime (bytes, packets) (what strongSwan's kernel-netlink update_sa does).
        With the same id only the outer source changes, which UPDSA cannot do: the SA is deleted
        and added again at once (one netlink round trip without it)."""
        self._check_supported(sa)
        current = await self._get_sa(old)
        if current is None:
            raise DataPlaneError(f"migrate_sa: no SA {old.protocol.name} {old.spi:#x} to {old.dst}")
        msg = tr.continued_sa_message(sa, self.owner, current)

        def what() -> str:
            return f"migrate SA {sa.id.protocol.name} {sa.id.spi:#x} {old.dst} -> {sa.src} -> {sa.id.dst}"

        if sa.id == old:
            await self.delete_sa(old)
        await self._call(what, msg, xm.XFRM_MSG_NEWSA)
        await self._note_outbound(sa)

    async def delete_sa(self, sa_id: SaId) -> None:
        self._reserved.discard(sa_id)
        for reqid, (newest, _, _) in list(self._out_overhead.items()):
            if newest == sa_id:
                del self._out_overhead[reqid]
        try:
            await self._call(f"delete SA {sa_id.spi:#x}", tr.sa_id_message(sa_id, self.owner),
                             xm.XFRM_MSG_DELSA)
        except KernelError as exc:
            if exc.errno not in _GONE:
                raise

    async def counters(self, sa_id: SaId) -> SaCounters:
        msg = await self._get_sa(sa_id)
        if msg is None:
            raise DataPlaneError(f"counters: no SA {sa_id.protocol.name} {sa_id.spi:#x} to {sa_id.dst}")
        return tr.counters_from(msg)

    async def _get_sa(self, sa_id: SaId) -> Any | None:
        try:
            answers = await self._call(f"get SA {sa_id.spi:#x}", tr.sa_id_message(sa_id, self.owner),
                                       xm.XFRM_MSG_GETSA, ack=False)
        except KernelError as exc:
            if exc.errno in _GONE:
                return None
            raise
        return answers[0] if answers else None

    def _check_supported(self, sa: SecurityAssociation) -> None:
        caps = self._caps
        if caps is _NOT_STARTED:
            return
        if sa.id.protocol is IpsecProtocol.ESP and not caps.esp:
            raise Unsupported("this kernel has no ESP (esp4/esp6 missing): cannot install ESP SA "
                              f"{sa.id.spi:#x}; use the userspace data plane")
        if sa.id.protocol is IpsecProtocol.AH and not caps.ah:
            raise Unsupported(f"this kernel has no AH: cannot install AH SA {sa.id.spi:#x}")
        if sa.encryption is not None and sa.encryption.name == "aes-gcm-16" and not caps.aead_gcm:
            raise Unsupported(f"this kernel has no rfc4106(gcm(aes)): cannot install SA {sa.id.spi:#x}")
        if (sa.encryption is not None and sa.encryption.name == "chacha20-poly1305"
                and not caps.aead_chacha20poly1305):
            raise Unsupported("this kernel has no rfc7539esp(chacha20,poly1305) "
                              f"(CONFIG_CRYPTO_CHACHA20POLY1305): cannot install SA {sa.id.spi:#x}")
        if sa.if_id and not caps.xfrm_interfaces:
            raise Unsupported(f"SA {sa.id.spi:#x} has if_id {sa.if_id} but this kernel has no "
                              "xfrm interfaces")

    # -- policies --------------------------------------------------------------------------------

    async def ensure_policy(self, policy: Policy) -> None:
        if policy.if_id and self._caps is not _NOT_STARTED and not self._caps.xfrm_interfaces:
            raise Unsupported(f"policy {tr.describe(policy.selector, policy.direction)} has if_id "
                              f"{policy.if_id} but this kernel has no xfrm interfaces")
        key = (policy.selector, policy.direction)
        old_if_id = self._policy_if_ids.get(key)
        if old_if_id is not None and old_if_id != policy.if_id:
            # if_id is part of the kernel's policy key: replacing means removing the old one.
            await self.delete_policy(policy.selector, policy.direction)
        await self._call(lambda: f"policy {tr.describe(*key)}", tr.policy_message(policy, self.owner),
                         xm.XFRM_MSG_UPDPOLICY)
        self._policy_if_ids[key] = policy.if_id
        await self._update_routes([policy])
        await self._sync_mss_clamping()

    async def ensure_policies(self, policies: Sequence[Policy]) -> None:
        """`ensure_policy` for many at once, batched into few netlink writes (start-up, mesh
        changes). Every policy is attempted; failures are reported together."""
        for policy in policies:
            old = self._policy_if_ids.get((policy.selector, policy.direction))
            if old is not None and old != policy.if_id:
                await self.delete_policy(policy.selector, policy.direction)
        codes = await self._sock.batch([(tr.policy_message(p, self.owner), xm.XFRM_MSG_UPDPOLICY)
                                        for p in policies])
        failed = [str(KernelError(f"policy {tr.describe(p.selector, p.direction)}", code))
                  for p, code in zip(policies, codes, strict=True) if code]
        installed = [p for p, code in zip(policies, codes, strict=True) if not code]
        for policy in installed:
            self._policy_if_ids[(policy.selector, policy.direction)] = policy.if_id
        await self._update_routes(installed)
        await self._sync_mss_clamping(reapply=True)
        if failed:
            raise DataPlaneError(f"{len(failed)} of {len(policies)} policies failed: "
                                 + "; ".join(failed[:5]))

    async def delete_policy(self, selector: TrafficSelector, direction: Direction) -> None:
        key = (selector, direction)
        if_id = self._policy_if_ids.pop(key, None)
        if if_id is None:  # not installed by this process: find it (and its if_id) in the kernel
            dump = await self._dump_policies()
            found = [m for m in dump if tr.policy_key_from(m) == key]
            if not found:
                return
            if_id = found[0].get_attr("XFRMA_IF_ID") or 0
            if direction is Direction.OUT and self.route_table is not None:
                # A route an earlier process made: ours to remove unless another OUT policy uses it.
                others = [k for m in dump if (k := tr.policy_key_from(m)) is not None
                          and k != key and k[1] is Direction.OUT and k[0].dst == selector.dst]
                self._route_users.setdefault(selector.dst, set()).update(
                    {selector, *(k[0] for k in others)})
        await self._delete_policy(selector, direction, if_id)
        if direction is Direction.OUT:
            await self._release_routes([selector])
            await self._sync_mss_clamping()

    async def _delete_policy(self, selector: TrafficSelector, direction: Direction, if_id: int) -> None:
        try:
            await self._call(f"delete policy {tr.describe(selector, direction)}",
                             tr.policy_id_message(selector, direction, self.owner, if_id),
                             xm.XFRM_MSG_DELPOLICY)
        except KernelError as exc:
            if exc.errno not in _GONE:
                raise

    async def get_policy(self, selector: TrafficSelector, direction: Direction) -> Any | None:
        """The kernel's view of one owned policy (the raw message), or None."""
        if_id = self._policy_if_ids.get((selector, direction), 0)
        try:
            answers = await self._call(f"get policy {tr.describe(selector, direction)}",
                                       tr.policy_id_message(selector, direction, self.owner, if_id),
                                       xm.XFRM_MSG_GETPOLICY, ack=False)
        except KernelError as exc:
            if exc.errno in _GONE:
                return None
            raise
        return answers[0] if answers else None

    # -- ownership -------------------------------------------------------------------------------

    async def _dump_sas(self) -> list[Any]:
        msgs = await self._sock.dump("dump SAs", xm.xfrm_usersa_id(), xm.XFRM_MSG_GETSA)
        return [m for m in msgs if self.owner.matches(m)]

    async def _dump_policies(self) -> list[Any]:
        msgs = await self._sock.dump("dump policies", xm.xfrm_userpolicy_id(), xm.XFRM_MSG_GETPOLICY)
        return [m for m in msgs if self.owner.matches(m) and tr.policy_key_from(m) is not None]

    async def list_owned(self) -> OwnedState:
        sas = tuple(tr.sa_id_from(m) for m in await self._dump_sas())
        policies = tuple(k for m in await self._dump_policies() if (k := tr.policy_key_from(m)) is not None)
        return OwnedState(sas=sas, policies=policies)

    async def adopt(self) -> OwnedState:
        """After a restart stop: the SAs, policies and routes of the earlier run keep forwarding;
        this process takes over their bookkeeping (policy if_ids, which OUT policies use which
        route, MSS clamping) and removes only the routes in its table that no owned OUT tunnel
        policy needs. SAs and policies stay until CHILD_SAs replace them (the agent's sweeper
        removes those no live CHILD_SA accounts for)."""
        sa_msgs, policy_msgs = await self._dump_sas(), await self._dump_policies()
        policies: list[tuple[TrafficSelector, Direction]] = []
        policy_reqids: list[tuple[TrafficSelector, Direction, int]] = []
        for m in policy_msgs:
            key = tr.policy_key_from(m)
            if key is None:
                continue
            policies.append(key)
            if_id = m.get_attr("XFRMA_IF_ID") or 0
            self._policy_if_ids[key] = if_id
            templates = m.templates()
            if templates:
                policy_reqids.append((*key, int(templates[0]["reqid"])))
            tunnel = bool(templates) and templates[0]["mode"] == xm.XFRM_MODE_TUNNEL
            if key[1] is Direction.OUT and not if_id and tunnel:
                self._route_users.setdefault(key[0].dst, set()).add(key[0])
                self._route_reqids[key[0].dst] = templates[0]["reqid"]
            if if_id:
                self._route_based_seen = True
        if self.route_table is not None:
            stale = await asyncio.to_thread(rt.prefixes, self.netns, self.route_table)
            gone = [p for p in stale if p not in self._route_users]
            if gone:
                log.info("kernel data plane: removing %d route(s) no adopted policy needs", len(gone))
                await asyncio.to_thread(rt.delete, self.netns, self.route_table, gone)
        await self._sync_mss_clamping(reapply=True)
        # Reservations (ALLOCSPI) use private reqids; only installed SAs' count.
        reqids = [m["reqid"] for m in sa_msgs if m["reqid"] < _ALLOC_REQIDS[0]]
        return OwnedState(sas=tuple(tr.sa_id_from(m) for m in sa_msgs), policies=tuple(policies),
                          max_reqid=max(reqids, default=0), policy_reqids=tuple(policy_reqids))

    async def flush_owned(self) -> None:
        # Policies first, so no packet meets a policy whose SA was just removed and triggers ACQUIRE.
        for m in await self._dump_policies():
            key = tr.policy_key_from(m)
            if key is not None:
                await self._delete_policy(key[0], key[1], m.get_attr("XFRMA_IF_ID") or 0)
        for m in await self._dump_sas():
            await self.delete_sa(tr.sa_id_from(m))
        self._policy_if_ids.clear()
        self._reserved.clear()
        if self.route_table is not None:
            await asyncio.to_thread(rt.flush, self.netns, self.route_table)
        self._route_users.clear()
        self._routes.clear()
        self._route_reqids.clear()
        self._out_overhead.clear()
        if self.mss_clamping:  # also a table an earlier process left behind
            await self._sync_mss_clamping(reapply=True)

    # -- routes for outbound tunnel policies (policy-based mode) ---------------------------------

    async def _update_routes(self, policies: Sequence[Policy]) -> None:
        """Routes for the remote prefixes of installed OUT tunnel policies without if_id (route-based
        tunnels are routed by the caller); a policy that stopped being one releases its route."""
        if any(p.if_id for p in policies):
            self._route_based_seen = True
        if self.route_table is None:
            return
        wanted: dict[IPNetwork, TunnelRoute] = {}
        released: list[TrafficSelector] = []
        for p in policies:
            if p.direction is not Direction.OUT:
                continue
            t = p.template
            if p.if_id or t is None or t.mode is not Mode.TUNNEL or t.dst is None:
                released.append(p.selector)
                continue
            self._route_users.setdefault(p.selector.dst, set()).add(p.selector)
            self._route_reqids[p.selector.dst] = t.reqid
            route = self._tunnel_route(p.selector, t.dst, t.reqid)
            if self._routes.get(p.selector.dst) != route:
                wanted[p.selector.dst] = route
        if released:
            await self._release_routes(released)
        await self._install_routes(wanted)

    def _tunnel_route(self, selector: TrafficSelector, peer: IPAddress, reqid: int) -> TunnelRoute:
        """The route's MTU fits the tunnel's outbound SA (its transforms, UDP or not); while no
        outbound SA of the reqid is known, every negotiable suite in ESP-in-UDP."""
        known = self._out_overhead.get(reqid)
        if known is None:
            return TunnelRoute(selector.dst, selector.src, peer)
        return TunnelRoute(selector.dst, selector.src, peer, suite=known[1], udp_encap=known[2])

    async def _note_outbound(self, sa: SecurityAssociation) -> None:
        """Remember an outbound SA's overhead; re-size the routes of its reqid if it changed (a
        CHILD_SA that moved to UDP encapsulation, a rekey with other transforms)."""
        if sa.direction is not Direction.OUT or sa.mode is not Mode.TUNNEL:
            return
        overhead = (sa.id, mtu.sa_suite(sa), sa.encap is not None)
        old = self._out_overhead.get(sa.reqid)
        self._out_overhead[sa.reqid] = overhead
        if old is not None and old[1:] == overhead[1:]:
            return
        wanted = {}
        for prefix, route in self._routes.items():
            if self._route_reqids.get(prefix) == sa.reqid:
                sel = TrafficSelector(route.dst, route.src_selector)
                wanted[prefix] = self._tunnel_route(sel, route.peer, sa.reqid)
        await self._install_routes(wanted)

    async def _install_routes(self, wanted: dict[IPNetwork, TunnelRoute]) -> None:
        if not wanted or self.route_table is None:
            return
        failures = await rt.install(self.netns, self.route_table, list(wanted.values()))
        for prefix, route in wanted.items():
            if prefix not in failures:
                self._routes[prefix] = route
        for failure in failures.values():
            # The policy stands (forwarded traffic still matches it); only local senders lack the
            # route. The next ensure of the policy tries again.
            self.route_errors += 1
            log.warning("kernel data plane: %s", failure)

    async def _release_routes(self, selectors: Sequence[TrafficSelector]) -> None:
        gone: list[IPNetwork] = []
        for sel in selectors:
            users = self._route_users.get(sel.dst)
            if users is None or sel not in users:
                continue
            users.discard(sel)
            if not users:
                del self._route_users[sel.dst]
                self._routes.pop(sel.dst, None)
                self._route_reqids.pop(sel.dst, None)
                gone.append(sel.dst)
        if gone and self.route_table is not None:
            await asyncio.to_thread(rt.delete, self.netns, self.route_table, gone)

    # -- TCP MSS clamping ------------------------------------------------------------------------

    async def _sync_mss_clamping(self, *, reapply: bool = False) -> None:
        """Level-triggered: the nftables table exists while an outbound policy does (its `rt mtu`
        rules read each SYN's route, so they need no update per tunnel) and is removed with the
        last one. `reapply` re-installs it even if this process installed it already (bulk
        ensures and flushes: someone may have deleted it). A failure is logged and counted and
        tried again on the next change; the tunnels stand."""
        if not self.mss_clamping:
            return
        wanted = any(d is Direction.OUT for _, d in self._policy_if_ids)
        if wanted == self._clamping_installed and not reapply:
            return
        try:
            if wanted:
                await mtu.ensure_mss_clamping(self.netns)
            else:
                await mtu.remove_mss_clamping(self.netns)
        except (OSError, DataPlaneError) as exc:
            self.mss_clamping_errors += 1
            self._clamping_installed = not wanted  # unknown: try again next time
            log.warning("kernel data plane: TCP MSS clamping not %s: %s",
                        "installed" if wanted else "removed", exc)
            return
        self._clamping_installed = wanted

    # -- events ----------------------------------------------------------------------------------

    async def _pump_events(self) -> None:
        while True:
            try:
                async for msg in self._mcast.messages():
                    self._deliver(msg)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # E.g. ENOBUFS when the kernel overran the socket: events were lost, so say so
                # (the agent's periodic reconcile catches up) and listen again on a fresh socket.
                log.warning("XFRM event socket failed (%s); events may have been lost, re-subscribing", exc)
                self.events_lost_episodes += 1
                self._mcast.close()
                await asyncio.sleep(0.5)

    def _deliver(self, msg: Any) -> None:
        try:
            kind = msg["header"]["type"]
            if not self.owner.matches(msg):
                return
            if kind == xm.XFRM_MSG_EXPIRE:
                self._events.put_nowait(tr.expire_event(msg))
            elif kind == xm.XFRM_MSG_ACQUIRE:
                self._events.put_nowait(tr.acquire_event(msg))
        except Exception:  # one undecodable message must not end event delivery
            self.events_dropped += 1
            log.exception("dropping undecodable XFRM event")

    async def events(self) -> AsyncIterator[DataPlaneEvent]:
        while True:
            yield await self._events.get()

    # -- IKE socket ------------------------------------------------------------------------------

    async def bypass_socket(self, sock: socket.socket) -> None:
        # The socket lives in the agent's namespace, where `netns` is too (the agent runs there).
        socket_bypass.bypass(sock)

    def held_encap_socket(self, host: str, port: int) -> socket.socket | None:
        return None  # the agent binds its own

    async def attach_encap_socket(self, sock: socket.socket, ike_receiver: IkeReceiver) -> None:
        reader = EncapSocketReader(sock, ike_receiver)
        reader.start()
        self._encap.append(reader)

    # -- route-based mode ------------------------------------------------------------------------

    async def ensure_xfrm_interface(self, ifname: str, if_id: int, mtu: int) -> None:
        """Create (or adjust) the XFRM interface for a route-based tunnel and bring it up."""
        if not self._caps.xfrm_interfaces:
            raise Unsupported(f"cannot create {ifname}: this kernel has no xfrm interfaces")
        await asyncio.to_thread(_ensure_xfrm_interface, self.netns, ifname, if_id, mtu)

    async def delete_xfrm_interface(self, ifname: str) -> None:
        await asyncio.to_thread(_delete_link, self.netns, ifname)

    # -- plumbing --------------------------------------------------------------------------------

    async def _call(self, what: Label, msg: Any, msg_type: int, *, ack: bool = True) -> list[Any]:
        try:
            return await self._sock.request(what, msg, msg_type, ack=ack)
        except KernelError as exc:
            if exc.errno in (errno.EPROTONOSUPPORT, errno.ENOSYS):
                raise Unsupported(f"the kernel lacks this protocol or algorithm: {exc}") from None
            raise


def _ensure_xfrm_interface(netns: str | None, ifname: str, if_id: int, mtu: int) -> None:
    with IPRoute(netns=netns) as ipr:
        if not ipr.link_lookup(ifname=ifname):
            ipr.link("add", ifname=ifname, kind="xfrm", xfrm_if_id=if_id)
        idx = ipr.link_lookup(ifname=ifname)[0]
        ipr.link("set", index=idx, mtu=mtu, state="up")


def _delete_link(netns: str | None, ifname: str) -> None:
    with IPRoute(netns=netns) as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if found:
            ipr.link("del", index=found[0])
