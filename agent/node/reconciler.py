"""The level-triggered reconciler: desired tunnels vs the IKE SAs in the adapter's table.

`reconcile()` looks only at the current state of both sides, never at what happened before, so
it can run at any time and any number of times (after a delta, a timer, an SA closing, a restart):

- an IKE SA whose tunnel is gone, or whose tunnel's IKE part changed, is deleted (INFORMATIONAL
  DELETE);
- a change of the CHILD_SA part only (selectors, ESP proposals, mode, lifetimes) keeps the IKE SA:
  its config is updated in place and each changed CHILD_SA is replaced make-before-break (a new
  one by CREATE_CHILD_SA, sharing the old one's reqid in the data plane, then the old one
  deleted). The designated initiator does that; the other end only if a changed CHILD_SA is
  still there after CHILD_GRACE (the peer negotiated before this end had the change, so the
  CHILD_SA still has the old selectors; acting at once would race the peer's own replacement
  whenever both get the change together, and a duplicate pair costs packets to delete);
  should both ends replace it at once, both keep the same new pair (the one with the lowest
  SPI) and delete the other;
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
import contextlib
import dataclasses
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from meshsec.agent.adapters.ike import IkeAdapter, SaRecord
from meshsec.agent.ike.address import Address
from meshsec.agent.ike.certs import Credentials
from meshsec.agent.ike.config import IkeConfig
from meshsec.agent.ike.events import (
    ChildSaFailed,
    ChildSaRekeyed,
    Event,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaFailed,
    IkeSaRekeyed,
    InitialContactReceived,
    PeerDead,
    RekeyFailed,
)
from meshsec.agent.ike.sa import ChildState
from meshsec.agent.node.metrics import NOTIFY_FAILURES, AgentMetrics
from meshsec.agent.node.translate import IdentityNotInCertificate, TunnelError, TunnelPlan, fingerprint, plan
from meshsec.v1 import agent_pb2

log = logging.getLogger(__name__)

BACKOFF_MIN = 1.0
BACKOFF_MAX = 30.0
# How long the non-designated end leaves a changed CHILD_SA to its peer: the designated initiator
# replaces it as soon as it has the change, so waiting longer only means the peer negotiated
# before this end had the change (its CHILD_SA here still has the old config).
CHILD_GRACE = 2.0


@dataclass
class LastError:
    reason: str
    message: str
    at: float  # wall clock


@dataclass
class TunnelRuntime:
    """What the reconciler remembers per tunnel between passes (not needed for correctness
    after a restart: everything here rebuilds from the SA table)."""

    since: float  # monotonic: when the tunnel was last without any SA (for the responder grace)
    attempts: int = 0
    next_attempt: float = 0.0
    last_error: LastError | None = None
    last_ike_rekey: float | None = None  # wall clock
    last_child_rekey: dict[str, float] = field(default_factory=dict)  # child name -> wall clock
    child_stale_since: dict[str, float] = field(default_factory=dict)  # child name -> monotonic
    child_deletes: set[int] = field(default_factory=set)  # inbound SPIs we asked to delete


def _fail_reason(text: str) -> str:
    upper = text.upper()
    for known in NOTIFY_FAILURES:
        if known in upper:
            return known
    if "dead peer detection" in text:
        return "DPD_TIMEOUT"
    if "timeout" in text.lower() or "retransmi" in text.lower():
        return "TIMEOUT"
    return "IKE_FAILED"


class Reconciler:
    def __init__(
        self,
        adapter: IkeAdapter,
        *,
        responder_grace: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        metrics: AgentMetrics | None = None,
    ) -> None:
        self.adapter = adapter
        self.metrics = metrics
        self.responder_grace = responder_grace
        self.clock = clock
        self.rng = rng or random.Random()
        self.plans: dict[str, TunnelPlan] = {}
        self.invalid: dict[str, str] = {}  # tunnel_id -> why it cannot run
        self.credentials: Credentials | None = None  # the node certificate, for certificate auth
        self.missing_ids: set[str] = set()  # local IDs of tunnels the node certificate does not name
        self._tunnels: dict[str, agent_pb2.DesiredTunnel] = {}
        self.runtime: dict[str, TunnelRuntime] = {}
        self.restarted = False  # set by the agent when it recovered state: initiate everything now
        self.reconciled_version = 0  # the desired version the last complete pass converged to
        self._pending_version = 0
        self.changed = asyncio.Event()  # something a status report should show
        self._wake = asyncio.Event()

    # ------------------------------------------------------------------ inputs

    def set_credentials(self, credentials: Credentials) -> None:
        """A new node certificate (enrollment, renewal): IKE SAs made from now on use it; the
        established ones stay (see `_matches`)."""
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
        self.plans, self.invalid, self.missing_ids = plans, invalid, missing
        if self.metrics is not None:
            self.metrics.retain(tunnels.keys())
        for tid in list(self.runtime):
            if tid not in plans:
                del self.runtime[tid]
        for tid in plans:
            self.runtime.setdefault(tid, TunnelRuntime(since=now))
        for tid, why in invalid.items():
            self.runtime.setdefault(tid, TunnelRuntime(since=now)).last_error = LastError(
                "UNSUPPORTED", why, time.time()
            )
        self.wake()

    def wake(self) -> None:
        self._wake.set()

    def lookup(self, local: Address, remote: Address) -> list[IkeConfig]:
        """The responder's candidates for a peer at `remote`: tunnels naming that address first,
        then every other tunnel (a peer behind NAT arrives from an address nobody configured);
        IKE_AUTH picks the one whose remote identity matches."""
        by_addr = [p.ike for p in self.plans.values() if remote.host in p.remotes]
        others = [p.ike for p in self.plans.values() if remote.host not in p.remotes]
        return by_addr + others

    # ------------------------------------------------------------------ events from the adapter

    def on_event(self, record: SaRecord, ev: Event) -> None:
        if not record.sa.initiator and record.sa.remote_identity is None:
            # The peer has not authenticated: `record.name` is only the responder's first
            # candidate, and anyone can send an IKE_SA_INIT. Blaming that tunnel would let a
            # spoofer paint errors on healthy tunnels; such an SA never belonged to one.
            if isinstance(ev, IkeSaFailed) and self.metrics is not None:
                self.metrics.unauthenticated_failures.labels(_fail_reason(ev.reason)).inc()
            return
        tid = record.name
        rt = self.runtime.get(tid)
        if isinstance(ev, IkeSaEstablished) and rt is not None:
            rt.attempts, rt.last_error = 0, None
            creds = record.sa.config.credentials
            if creds is not None:
                log.info("%s: IKE SA %s authenticated by certificates: ours serial %x, peer %s verified "
                         "against %d trusted CA(s)", tid, record.sa.local_spi.hex(),
                         creds.chain[0].serial_number, ev.remote_id, len(creds.trusted))  # fmt: skip
        elif isinstance(ev, IkeSaFailed) and rt is not None:
            reason = _fail_reason(ev.reason)
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
            rt.last_error = LastError(
                _fail_reason(ev.reason), f"CHILD_SA {ev.name}: {ev.reason}", time.time()
            )
        elif isinstance(ev, InitialContactReceived):
            asyncio.get_running_loop().call_soon(self._initial_contact, record)
        if isinstance(ev, IkeSaEstablished | IkeSaFailed | IkeSaDeleted):
            self.wake()
        self.changed.set()

    def _initial_contact(self, fresh: SaRecord) -> None:
        """The peer forgot every SA with us: drop the ones established before `fresh` began,
        without a DELETE (the peer would not know the SPIs)."""
        stale = [
            r
            for r in self.adapter.active()
            if r is not fresh
            and r.name == fresh.name
            and r.established_at is not None
            and r.established_at < fresh.created
        ]
        for r in stale:
            log.info("%s: INITIAL_CONTACT from the peer; dropping IKE SA %s", r.name, r.sa.local_spi.hex())
            self.adapter.drop(r)
        if stale:
            self.wake()

    # ------------------------------------------------------------------ the loop

    async def run(self, period: float = 1.0) -> None:
        while True:
            try:
                await self.reconcile()
            except Exception:
                log.exception("reconcile pass failed; retrying")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), period)

    def sas_by_tunnel(self) -> dict[str, list[SaRecord]]:
        """Live SAs grouped by tunnel. A responder SA belongs to a tunnel only once IKE_AUTH
        chose its config (before that, `config` is just the first candidate)."""
        groups: dict[str, list[SaRecord]] = {}
        # During an IKE rekey the adapter lists a record under both SAs until the old one closes.
        for record in {id(r): r for r in self.adapter.active()}.values():
            sa = record.sa
            if sa.closed or (not sa.initiator and sa.remote_identity is None):
                continue
            groups.setdefault(record.name, []).append(record)
        return groups

    async def reconcile(self) -> None:
        version = self._pending_version
        await self._reconcile()
        if self.reconciled_version != version:
            self.reconciled_version = version
            self.changed.set()

    async def _reconcile(self) -> None:
        now = self.clock()
        groups = self.sas_by_tunnel()
        for tid, records in groups.items():
            p = self.plans.get(tid)
            for record in records:
                if p is not None and not _deleting(record) and _child_only_change(record, p):
                    log.info("%s: CHILD_SA configuration changed; keeping IKE SA %s",
                             tid, record.sa.local_spi.hex())  # fmt: skip
                    record.sa.config = _without_ic(record.sa.config, p.ike)
                if not _matches(record, p) and not _deleting(record):
                    why = "no longer desired" if p is None else "configuration changed"
                    log.info("%s: deleting IKE SA %s (%s)", tid, record.sa.local_spi.hex(), why)
                    self.adapter.delete(record)
            if p is not None:
                self._resolve_duplicates(p, records)
                for record in records:
                    if _matches(record, p) and record.sa.established and not record.sa.rekeying_ike():
                        self._converge_children(p, self.runtime[tid], record, now)
        for tid, p in self.plans.items():
            rt = self.runtime[tid]
            live = [r for r in groups.get(tid, []) if _matches(r, p) and not _deleting(r)]
            if live:
                rt.since = now
                continue
            if now < rt.next_attempt:
                continue
            if not p.initiator and not self.restarted and now - rt.since < self.responder_grace:
                continue
            await self._initiate(p, rt, now, others=bool(groups.get(tid)))
        self.restarted = False

    async def _initiate(self, p: TunnelPlan, rt: TunnelRuntime, now: float, *, others: bool) -> None:
        remote = p.remotes[rt.attempts % len(p.remotes)]
        delay = min(BACKOFF_MAX, BACKOFF_MIN * 2 ** min(rt.attempts, 8))
        rt.next_attempt = now + delay * (0.5 + self.rng.random())
        rt.attempts += 1
        config = p.ike if not others else dataclasses.replace(p.ike, send_initial_contact=False)
        local = Address(p.local, self.adapter.settings.ike_port) if p.local else None
        try:
            await self.adapter.initiate(config, Address(remote, self.adapter.settings.ike_port), local)
        except OSError as exc:
            rt.last_error = LastError("PEER_UNREACHABLE", f"initiate to {remote}: {exc}", time.time())
            if self.metrics is not None:
                self.metrics.ike_failures.inc(p.tunnel_id, "PEER_UNREACHABLE")
            log.warning("%s: cannot initiate to %s: %s", p.tunnel_id, remote, exc)
        self.changed.set()

    def _converge_children(self, p: TunnelPlan, rt: TunnelRuntime, record: SaRecord, now: float) -> None:
        """Replaces CHILD_SAs negotiated with an older config of their name, make-before-break."""
        sa = record.sa
        rt.child_deletes &= set(sa.children)
        for cfg in sa.config.children:
            mine = [c for c in sa.children.values() if c.name == cfg.name]
            stale = [c for c in mine if c.config != cfg]
            ready = [
                c
                for c in mine
                if c.config == cfg
                and c.state is ChildState.INSTALLED  # not a rekey's loser or predecessor
                and (cr := record.children.get(c.spi_in)) is not None
                and cr.installed
                and cr.holds_for is None
            ]
            if ready:  # the new pair carries the traffic: the old one can go
                # Both ends replaced it at once: both keep the same pair (its lower SPI is lowest).
                keep = min(ready, key=lambda c: (min(c.spi_in, c.spi_out), max(c.spi_in, c.spi_out)))
                doomed = [*stale, *(c for c in ready if c is not keep)]
                for c in doomed:
                    if c.state is ChildState.INSTALLED and c.spi_in not in rt.child_deletes:
                        log.info("%s: deleting CHILD_SA %s %08x_i, replaced by %08x_i (new configuration)",
                                 p.tunnel_id, c.name, c.spi_in, keep.spi_in)  # fmt: skip
                        rt.child_deletes.add(c.spi_in)
                        self.adapter.delete_child(record, c.spi_in)
            if not stale:
                rt.child_stale_since.pop(cfg.name, None)
                continue
            if ready or len(stale) < len(mine) or cfg.name in record.replacing:
                continue  # the new one is on its way (or held until the peer deletes the old one)
            if sa.child_exchange_in_flight():
                continue
            since = rt.child_stale_since.setdefault(cfg.name, now)
            if not p.initiator and now - since < min(self.responder_grace, CHILD_GRACE):
                continue
            log.info("%s: replacing CHILD_SA %s on IKE SA %s (configuration changed)",
                     p.tunnel_id, cfg.name, sa.local_spi.hex())  # fmt: skip
            self.adapter.replace_child(record, cfg)

    def _resolve_duplicates(self, p: TunnelPlan, records: list[SaRecord]) -> None:
        established = [r for r in records if r.sa.established]
        if len(established) < 2:
            return
        # Both ends sort the same SAs the same way: "created by the designated initiator" is
        # `sa.initiator == p.initiator` seen from either end (this settles simultaneous
        # initiation); between SAs from the same end the newest wins (after a restart); the
        # shared SPIi breaks exact ties.
        keep = min(
            established,
            key=lambda r: (r.sa.initiator != p.initiator, -(r.established_at or 0.0), r.sa.spi_i),
        )
        for r in established:
            if r is not keep:
                log.info(
                    "%s: duplicate IKE SA %s; keeping %s", p.tunnel_id, r.sa.spi_i.hex(), keep.sa.spi_i.hex()
                )
                self.adapter.delete(r)


def _deleting(record: SaRecord) -> bool:
    return record.sa.state.name == "DELETING"


def _matches(record: SaRecord, p: TunnelPlan | None) -> bool:
    return p is not None and record.sa.config == _without_ic(record.sa.config, p.ike)


def _child_only_change(record: SaRecord, p: TunnelPlan) -> bool:
    """The IKE SA can stay: established, and only CHILD_SA settings of the same named children
    differ (anything else, e.g. the peer, IDs, auth or IKE proposals, needs a new IKE SA)."""
    actual = record.sa.config
    desired = _without_ic(actual, p.ike)
    if actual == desired or not record.sa.established:
        return False
    names = sorted(c.name for c in actual.children)
    return names == sorted(c.name for c in desired.children) and dataclasses.replace(
        actual, children=()
    ) == dataclasses.replace(desired, children=())


def _without_ic(actual: IkeConfig, desired: IkeConfig) -> IkeConfig:
    """`desired` as we would have initiated it: INITIAL_CONTACT is per attempt, not config, and
    a renewed node certificate is for the next IKE SAs (an established SA is not torn down for
    it, only for a change of the CAs it trusts)."""
    changes: dict[str, object] = {}
    if actual.send_initial_contact != desired.send_initial_contact:
        changes["send_initial_contact"] = actual.send_initial_contact
    ours, wanted = actual.credentials, desired.credentials
    if ours is not None and wanted is not None and ours is not wanted and ours.trusted == wanted.trusted:
        changes["credentials"] = ours
    return dataclasses.replace(desired, **changes) if changes else desired  # type: ignore[arg-type]
