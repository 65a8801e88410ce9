"""The level-triggered reconciler: desired tunnels vs the live IKE SAs, one tunnel at a time.

Each tunnel is a key in a work queue (workqueue.py, as in controller-runtime): events, a new
desired state and a periodic resync put keys in; `reconcile_tunnel` looks only at the current
state of that tunnel (its plan and the runtime's views of its SAs, ike_port.py), never at what
happened before, makes one idempotent step and says when to look again. So it can run at any
time and any number of times (after a delta, a timer, an SA closing, a restart or a crash), and
an exception in one tunnel requeues only that tunnel, with back-off. The rules (convergence.py):

- an IKE SA whose tunnel is gone, or whose tunnel's IKE part changed, is deleted (INFORMATIONAL
  DELETE);
- a change of the CHILD_SA part only (selectors, ESP proposals, mode, lifetimes) keeps the IKE SA:
  the runtime takes the new config, and each changed CHILD_SA is replaced by the engine's
  `replace_child`, make-before-break (a new one by CREATE_CHILD_SA, sharing the old one's reqid
  in the data plane; outbound moves over, then the engine deletes the old one). The designated
  initiator asks for that; the other end only if a changed CHILD_SA is still there after
  CHILD_GRACE (the peer negotiated before this end had the change, so the CHILD_SA still has
  the old selectors; acting at once would race the peer's own replacement whenever both get
  the change together). Should both ends replace it at once, the engine settles the collision
  (RFC 7296 2.8.1);
- a tunnel without IKE SA is initiated by its designated initiator (DesiredTunnel.initiator),
  with per-tunnel back-off and jitter, trying the remote endpoints in turn; the other end
  initiates too, but only after `responder_grace` without any SA (the designated initiator may be
  gone or may have lost its state) or at once after a restart of this agent;
- two established IKE SAs for one tunnel (both ends initiated at once) are resolved the same way
  at both ends: the one created by the designated initiator stays, ties go to the lower SPIi;
- rekeying (CHILD_SA and IKE SA) and dead peer detection run inside the engine; an SA cleared
  by DPD is just an SA that is gone, and the rules above bring the tunnel back.

INITIAL_CONTACT (RFC 7296 2.4) is sent only when we hold no other SA for the tunnel, and a
received one drops the tunnel's SAs established before the new SA began (the peer lost them).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from meshsec.agent.adapters.failclosed import strict
from meshsec.agent.ike import (
    Address,
    ChildSaFailed,
    ChildSaRekeyed,
    Event,
    IkeConfig,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaFailed,
    IkeSaRekeyed,
    InitialContactReceived,
    PeerDead,
    RekeyFailed,
)
from meshsec.agent.ike.certs import Credentials
from meshsec.agent.node.convergence import (
    child_only_change,
    child_steps,
    duplicates_to_delete,
    matches,
    without_ic,
)
from meshsec.agent.node.failure_reasons import failure_reason
from meshsec.agent.node.ike_port import IkeRuntime, SaPhase, SaView
from meshsec.agent.node.metrics import AgentMetrics
from meshsec.agent.node.translate import IdentityNotInCertificate, TunnelError, TunnelPlan, fingerprint, plan
from meshsec.agent.node.workqueue import WorkQueue
from meshsec.common.deadline import set_within
from meshsec.v1 import agent_pb2

log = logging.getLogger(__name__)

BACKOFF_MIN = 1.0
BACKOFF_MAX = 30.0
# How long the non-designated end leaves a changed CHILD_SA to its peer: the designated initiator
# replaces it as soon as it has the change, so waiting longer only means the peer negotiated
# before this end had the change (its CHILD_SA here still has the old config).
CHILD_GRACE = 2.0
RESYNC = 1.0  # seconds: every tunnel is looked at this often even without an event
MIN_REQUEUE = 0.05  # seconds: the soonest a tunnel asks to be looked at again


@dataclass
class LastError:
    reason: str
    message: str
    at: float  # wall clock


@dataclass
class TunnelRuntime:
    """What the reconciler remembers per tunnel between passes (not needed for correctness
    after a restart: everything here rebuilds from the SA table)."""

    since: float  # clock: when the tunnel was last without any SA (for the responder grace)
    attempts: int = 0
    next_attempt: float = 0.0
    last_error: LastError | None = None
    last_ike_rekey: float | None = None  # wall clock
    last_child_rekey: dict[str, float] = field(default_factory=dict)  # child name -> wall clock
    child_stale_since: dict[str, float] = field(default_factory=dict)  # child name -> clock
    child_deletes: set[int] = field(default_factory=set)  # inbound SPIs we asked to delete
    skip_grace: bool = False  # this agent restarted: initiate at once, without responder grace


class Reconciler:
    def __init__(
        self,
        ike: IkeRuntime,
        *,
        responder_grace: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        metrics: AgentMetrics | None = None,
        resync: float = RESYNC,
    ) -> None:
        self.ike = ike
        self.metrics = metrics
        self.responder_grace = responder_grace
        self.clock = clock
        self.rng = rng or random.Random()
        self.resync = resync
        self.plans: dict[str, TunnelPlan] = {}
        self.invalid: dict[str, str] = {}  # tunnel_id -> why it cannot run
        self.credentials: Credentials | None = None  # the node certificate, for certificate auth
        self.missing_ids: set[str] = set()  # local IDs of tunnels the node certificate does not name
        self._tunnels: dict[str, agent_pb2.DesiredTunnel] = {}
        self.runtime: dict[str, TunnelRuntime] = {}
        self.restarted = False  # set by the agent when it recovered state: initiate everything now
        # Tunnels whose IKE SA a restart could not resume: the new one goes without INITIAL_CONTACT
        # where this end is the designated initiator (the peer keeps the newer of two SAs from
        # one end and drops the old one after the new CHILD_SAs are in: make-before-break). Where
        # the peer is the designated initiator it would keep its own old SA instead, so there
        # INITIAL_CONTACT tells it to drop that one once ours is up.
        self.without_initial_contact: set[str] = set()
        self.reconciled_version = 0  # the desired version every tunnel was reconciled to
        self.queue: WorkQueue[str] = WorkQueue()
        self.stats: Counter[str] = Counter()
        self._pending_version = 0
        self._unreconciled: set[str] = set()  # keys not reconciled since the pending version came
        self._resync_at = float("-inf")
        self.changed = asyncio.Event()  # something a status report should show
        self._wake = asyncio.Event()

    # ------------------------------------------------------------------ inputs

    def set_credentials(self, credentials: Credentials) -> None:
        """A new node certificate (enrollment, renewal): IKE SAs made from now on use it; the
        established ones stay (see `convergence.without_ic`)."""
        self.credentials = credentials
        self.plans = {tid: p for tid, p in self.plans.items() if p.ike.credentials is None}
        self.set_desired(self._tunnels, self._pending_version)

    def set_desired(self, tunnels: dict[str, agent_pb2.DesiredTunnel], version: int = 0) -> None:
        self._tunnels = tunnels
        self._pending_version = version
        now = self.clock()
        plans: dict[str, TunnelPlan] = {}
        invalid: dict[str, str] = {}
        missing: set[str] = set()
        for tid, tunnel in tunnels.items():
            old = self.plans.get(tid)
            if old is not None and old.fingerprint == fingerprint(tunnel):
                plans[tid] = old
                continue
            try:
                plans[tid] = plan(tunnel, self.credentials)
            except TunnelError as exc:
                invalid[tid] = str(exc)
                if isinstance(exc, IdentityNotInCertificate):
                    missing.add(exc.local_id)
                log.error("%s", exc)
        # The tunnels to look at: every one desired now or before (whose SAs may have to go).
        keys = set(plans) | set(invalid) | set(self.plans)
        self.plans, self.invalid, self.missing_ids = plans, invalid, missing
        if self.metrics is not None:
            self.metrics.retain(tunnels.keys())
        for tid in list(self.runtime):
            if tid not in plans:
                del self.runtime[tid]
        for tid in plans:
            self.runtime.setdefault(tid, TunnelRuntime(since=now, skip_grace=self.restarted))
        for tid, why in invalid.items():
            self.runtime.setdefault(tid, TunnelRuntime(since=now)).last_error = LastError(
                "UNSUPPORTED", why, time.time()
            )
        self._unreconciled = keys
        for tid in keys:
            self.queue.add(tid, now)
        self._wake.set()

    def wake(self, tunnel: str | None = None) -> None:
        """Looks at `tunnel` (every tunnel: None) as soon as possible."""
        now = self.clock()
        for tid in self._keys() if tunnel is None else (tunnel,):
            self.queue.add(tid, now)
        self._wake.set()

    def lookup(self, local: Address, remote: Address) -> list[IkeConfig]:
        """The responder's candidates for a peer at `remote`: tunnels naming that address first,
        then every other tunnel (a peer behind NAT arrives from an address nobody configured);
        IKE_AUTH picks the one whose remote identity matches."""
        by_addr = [p.ike for p in self.plans.values() if remote.host in p.remotes]
        others = [p.ike for p in self.plans.values() if remote.host not in p.remotes]
        return by_addr + others

    # ------------------------------------------------------------------ events from the runtime

    def on_event(self, sa: SaView, ev: Event) -> None:
        if not sa.authenticated:
            # The peer has not authenticated: `sa.tunnel` is only the responder's first
            # candidate, and anyone can send an IKE_SA_INIT. Blaming that tunnel would let a
            # spoofer paint errors on healthy tunnels; such an SA never belonged to one.
            if isinstance(ev, IkeSaFailed) and self.metrics is not None:
                self.metrics.unauthenticated_failures.labels(failure_reason(ev)).inc()
            return
        tid = sa.tunnel
        rt = self.runtime.get(tid)
        if isinstance(ev, IkeSaEstablished) and rt is not None:
            rt.attempts, rt.last_error = 0, None
            self.without_initial_contact.discard(tid)
            creds = sa.config.credentials
            if creds is not None:
                log.info("%s: IKE SA %s authenticated by certificates: ours serial %x, peer %s verified "
                         "against %d trusted CA(s)", tid, sa.local_spi.hex(),
                         creds.chain[0].serial_number, ev.remote_id, len(creds.trusted))  # fmt: skip
        elif isinstance(ev, IkeSaFailed) and rt is not None:
            reason = failure_reason(ev)
            rt.last_error = LastError(reason, ev.reason, time.time())
            if self.metrics is not None and reason != "DPD_TIMEOUT":  # that one: dpd_failures
                self.metrics.ike_failures.inc(tid, reason)
        elif isinstance(ev, RekeyFailed) and rt is not None:
            log.warning("%s: %s rekey of %s failed: %s", tid, ev.sa.upper(), ev.name, ev.reason)
            if self.metrics is not None:
                self.metrics.rekey_failures.inc(tid, ev.sa)
        elif isinstance(ev, IkeSaRekeyed) and rt is not None:
            rt.last_ike_rekey = time.time()
        elif isinstance(ev, ChildSaRekeyed) and rt is not None:
            rt.last_child_rekey[ev.name] = time.time()
        elif isinstance(ev, PeerDead) and rt is not None:
            rt.last_error = LastError(
                "DPD_TIMEOUT", "dead peer detection: no answer from the peer", time.time()
            )
            if self.metrics is not None:
                self.metrics.dpd_failures.inc(tid)
        elif isinstance(ev, ChildSaFailed) and rt is not None:
            rt.last_error = LastError(failure_reason(ev), f"CHILD_SA {ev.name}: {ev.reason}", time.time())
        elif isinstance(ev, InitialContactReceived):
            asyncio.get_running_loop().call_soon(self._initial_contact, sa)
        if isinstance(ev, IkeSaEstablished | IkeSaFailed | IkeSaDeleted | InitialContactReceived):
            self.wake(tid)
        self.changed.set()

    def _initial_contact(self, fresh: SaView) -> None:
        """The peer forgot every SA with us: drop the ones established before `fresh` began,
        without a DELETE (the peer would not know the SPIs). Called on the loop's next turn,
        not from within the engine's event dispatch."""
        stale = [
            s
            for s in self.ike.sas()
            if s.handle != fresh.handle
            and s.tunnel == fresh.tunnel
            and s.established_at is not None
            and s.established_at < fresh.created
        ]
        for s in stale:
            log.info("%s: INITIAL_CONTACT from the peer; dropping IKE SA %s", s.tunnel, s.local_spi.hex())
            self.ike.drop(s.handle)
        if stale:
            self.wake(fresh.tunnel)

    # ------------------------------------------------------------------ the loop

    async def run(self, period: float | None = None) -> None:
        """Processes the queue for ever. `period`: the resync interval (default `resync`)."""
        if period is not None:
            self.resync = period
        while True:
            self._wake.clear()
            try:
                await self.process()
            except Exception:
                if strict():
                    raise
                log.exception("reconciler pass failed; retrying")
            due = self.queue.next_due()
            wait = max(0.0, min(self._resync_at, due if due is not None else float("inf")) - self.clock())
            await set_within(self._wake, wait)

    async def reconcile(self) -> None:
        """Reconciles every tunnel now (tests, and whoever wants one full pass)."""
        self.wake()
        await self.process()

    async def process(self) -> None:
        """Reconciles the tunnels that are due; one tunnel's exception requeues only it."""
        now = self.clock()
        # One snapshot for the batch: an SA that moved on meanwhile (an initiation awaits) is
        # safe, as the runtime ignores a command that no longer applies, and its event requeues
        # the tunnel.
        groups: dict[str, list[SaView]] | None = None
        if now >= self._resync_at:
            self._resync_at = now + self.resync
            groups = self.sas_by_tunnel()
            for tid in set(self.plans) | set(groups):
                self.queue.add(tid, now)
        due = self.queue.pop_due(now)
        if not due:
            # A desired state with no tunnels (a site's non-gateway node, whose only desired
            # state is its routes) queues nothing, yet it is applied: say so, or it never is.
            self._note_reconciled()
            return
        if self.restarted:  # the SAs behind this agent's earlier run are gone
            for rt in self.runtime.values():
                rt.skip_grace = True
            self.restarted = False
        if groups is None:
            groups = self.sas_by_tunnel()
        for tid in due:
            try:
                after = await self.reconcile_tunnel(tid, groups.get(tid, []))
            except Exception as exc:
                self._failed(tid, exc)
                if strict():
                    raise
                continue
            self.queue.forget(tid)
            self._unreconciled.discard(tid)
            if after is not None:
                self.queue.add_after(tid, max(MIN_REQUEUE, after), self.clock())
        self._note_reconciled()

    def _note_reconciled(self) -> None:
        """The pending version is reconciled once every tunnel it names (or named) was looked at."""
        if not self._unreconciled and self.reconciled_version != self._pending_version:
            self.reconciled_version = self._pending_version
            self.changed.set()

    def _failed(self, tid: str, exc: Exception) -> None:
        self.stats["reconcile_errors"] += 1
        delay = self.queue.failed(tid, self.clock())
        log.exception("%s: reconcile failed; retrying in %.1f s", tid, delay)
        rt = self.runtime.get(tid)
        if rt is not None:
            message = f"reconcile failed: {type(exc).__name__}"
            rt.last_error = LastError("INTERNAL_ERROR", message, time.time())
            self.changed.set()

    def _keys(self) -> set[str]:
        """Every tunnel to look at: the desired ones and those some live SA belongs to."""
        return set(self.plans) | set(self.sas_by_tunnel())

    def sas_by_tunnel(self) -> dict[str, list[SaView]]:
        """Live SAs grouped by tunnel. A responder SA belongs to a tunnel only once IKE_AUTH
        chose its config (before that, `config` is just the first candidate)."""
        groups: dict[str, list[SaView]] = {}
        for sa in self.ike.sas():
            if sa.authenticated:
                groups.setdefault(sa.tunnel, []).append(sa)
        return groups

    # ------------------------------------------------------------------ one tunnel

    async def reconcile_tunnel(self, tid: str, sas: list[SaView]) -> float | None:
        """One step of `tid` toward its plan, given the views of its live SAs. Returns the
        seconds until it wants another look (None: when something happens)."""
        now = self.clock()
        p = self.plans.get(tid)
        current: list[SaView] = []
        for sa in sas:
            if p is not None and sa.phase is not SaPhase.DELETING and child_only_change(sa, p):
                log.info("%s: CHILD_SA configuration changed; keeping IKE SA %s", tid, sa.local_spi.hex())
                config = without_ic(sa.config, p.ike)
                self.ike.reconfigure(sa.handle, config)
                sa = dataclasses.replace(sa, config=config)
            if not matches(sa, p) and sa.phase is not SaPhase.DELETING:
                why = "no longer desired" if p is None else "configuration changed"
                log.info("%s: deleting IKE SA %s (%s)", tid, sa.local_spi.hex(), why)
                self.ike.delete(sa.handle)
                sa = dataclasses.replace(sa, phase=SaPhase.DELETING)
            current.append(sa)
        if p is None:
            return None
        rt = self.runtime[tid]
        keep, losers = duplicates_to_delete(current)
        for loser in losers:
            assert keep is not None
            log.info("%s: duplicate IKE SA %s; keeping %s", tid, loser.spi_i.hex(), keep.spi_i.hex())
            self.ike.delete(loser.handle)
        gone = {s.handle for s in losers}
        current = [dataclasses.replace(s, phase=SaPhase.DELETING) if s.handle in gone else s for s in current]
        waits: list[float] = []
        for sa in current:
            if matches(sa, p) and sa.is_established and not sa.rekeying_ike:
                wait = self._converge_children(p, rt, sa, now)
                if wait is not None:
                    waits.append(wait)
        skip_grace, rt.skip_grace = rt.skip_grace, False
        if any(matches(s, p) and s.phase is not SaPhase.DELETING for s in current):
            rt.since = now
            return min(waits) if waits else None
        if now < rt.next_attempt:
            return rt.next_attempt - now
        grace_left = rt.since + self.responder_grace - now
        if not p.initiator and not skip_grace and grace_left > 0:
            return grace_left
        await self._initiate(p, rt, now, others=bool(current))
        return rt.next_attempt - now

    async def _initiate(self, p: TunnelPlan, rt: TunnelRuntime, now: float, *, others: bool) -> None:
        remote = p.remotes[rt.attempts % len(p.remotes)]
        delay = min(BACKOFF_MAX, BACKOFF_MIN * 2 ** min(rt.attempts, 8))
        rt.next_attempt = now + delay * (0.5 + self.rng.random())
        rt.attempts += 1
        quiet = others or (p.initiator and p.tunnel_id in self.without_initial_contact)
        config = p.ike if not quiet else dataclasses.replace(p.ike, send_initial_contact=False)
        port = self.ike.ike_port
        local = Address(p.local, port) if p.local else None
        try:
            await self.ike.initiate(config, Address(remote, port), local)
        except OSError as exc:
            rt.last_error = LastError("PEER_UNREACHABLE", f"initiate to {remote}: {exc}", time.time())
            if self.metrics is not None:
                self.metrics.ike_failures.inc(p.tunnel_id, "PEER_UNREACHABLE")
            log.warning("%s: cannot initiate to %s: %s", p.tunnel_id, remote, exc)
        self.changed.set()

    def _converge_children(self, p: TunnelPlan, rt: TunnelRuntime, sa: SaView, now: float) -> float | None:
        """Replaces CHILD_SAs negotiated with an older config of their name (convergence.py);
        returns the seconds until a held-back replacement is due."""
        rt.child_deletes &= {c.spi_in for c in sa.children}
        steps = child_steps(
            sa,
            designated=p.initiator,
            stale_since=rt.child_stale_since,
            deleting=rt.child_deletes,
            now=now,
            grace=min(self.responder_grace, CHILD_GRACE),
        )
        for doomed, kept in steps.delete:
            log.info("%s: deleting CHILD_SA %s %08x_i, replaced by %08x_i (new configuration)",
                     p.tunnel_id, doomed.name, doomed.spi_in, kept.spi_in)  # fmt: skip
            rt.child_deletes.add(doomed.spi_in)
            self.ike.delete_child(sa.handle, doomed.spi_in)
        for stale, cfg in steps.replace:
            log.info("%s: replacing CHILD_SA %s %08x_i on IKE SA %s (configuration changed)",
                     p.tunnel_id, cfg.name, stale.spi_in, sa.local_spi.hex())  # fmt: skip
            self.ike.replace_child(sa.handle, stale.spi_in, cfg)
        return steps.wait
