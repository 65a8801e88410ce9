"""Live status reported by agents: accepted by whichever replica the agent called, stored so
every replica (and so every admin) sees it, and turned into events when a tunnel changes state.

Reports are level-triggered (docs/api.md, "Status reports"): a full report replaces what a node
said before; a partial one applies on top of the last accepted report of the same agent instance
and asks for a full one (`resync_required`) when there is no such baseline or a seq was skipped.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from meshsec.controller.service.events import EventLog
from meshsec.controller.store import CompactedError, EventType, Store, StoreError
from meshsec.v1 import agent_pb2, common_pb2

log = logging.getLogger(__name__)

STALE_AFTER_INTERVALS = 3
UNKNOWN_WARNING_EVERY_S = 60.0


class TunnelClaims(Protocol):
    """The desired state a report is checked against (`meshsec.controller.service.claims`)."""

    def version(self, node: str) -> int: ...

    def removed_since(self, node: str, version: int) -> Collection[str] | None: ...

    def owns(self, node: str, tunnel_id: str, peer: str) -> bool: ...


@dataclass(slots=True)
class NodeReport:
    instance_id: str
    seq: int
    reported_at: float  # wall clock, seconds
    node: agent_pb2.NodeStatus | None
    tunnels: dict[str, agent_pb2.TunnelStatus] = field(default_factory=dict)
    received_version: int = 0
    reconciled_version: int = 0
    # The node's slice version at which every id in `tunnels` was checked against its desired
    # state (0: never). Slice versions are store revisions, alike on every replica, so it is stored.
    checked_version: int = 0
    # The agent's clock when it sent the report (StatusReport.sent_at), seconds; None: not sent.
    sent_at: float | None = None
    # A gateway's road warriors with their traffic, by (user, device): complete in every report.
    clients: dict[tuple[str, str], agent_pb2.RemoteAccessClientTraffic] = field(default_factory=dict)

    def encode(self) -> bytes:
        report = agent_pb2.StatusReport(
            agent_instance_id=self.instance_id,
            seq=self.seq,
            full=True,
            node=self.node,
            tunnels=list(self.tunnels.values()),
            received_version=self.received_version,
            reconciled_version=self.reconciled_version,
            remote_access_clients=list(self.clients.values()),
        )
        if self.sent_at is not None:
            report.sent_at.FromNanoseconds(int(self.sent_at * 1e9))
        return json.dumps(
            {
                "at": self.reported_at,
                "report": base64.b64encode(report.SerializeToString()).decode(),
                "checked": self.checked_version,
            }
        ).encode()

    @classmethod
    def decode(cls, raw: bytes) -> NodeReport:
        doc = json.loads(raw)
        report = agent_pb2.StatusReport.FromString(base64.b64decode(doc["report"]))
        return cls(
            report.agent_instance_id,
            report.seq,
            float(doc["at"]),
            report.node if report.HasField("node") else None,
            {t.tunnel_id: t for t in report.tunnels},
            report.received_version,
            report.reconciled_version,
            int(doc.get("checked", 0)),
            _sent_at(report),
            clients_of(report),
        )


def clients_of(report: agent_pb2.StatusReport) -> dict[tuple[str, str], agent_pb2.RemoteAccessClientTraffic]:
    return {(c.user, c.device): c for c in report.remote_access_clients}


def _sent_at(report: agent_pb2.StatusReport) -> float | None:
    return report.sent_at.ToNanoseconds() / 1e9 if report.HasField("sent_at") else None


def _state_key(status: agent_pb2.TunnelStatus | None) -> int:
    return status.state if status is not None else common_pb2.TUNNEL_STATE_UNSPECIFIED


def merged_state(states: list[int]) -> int:
    """TunnelInfo.state over the ends that reported (docs/api.md, "Tunnels")."""
    if not states:
        return common_pb2.TUNNEL_STATE_DOWN
    if common_pb2.TUNNEL_STATE_FAILED in states:
        return common_pb2.TUNNEL_STATE_FAILED
    if all(s == common_pb2.TUNNEL_STATE_ESTABLISHED for s in states):
        return common_pb2.TUNNEL_STATE_ESTABLISHED
    if all(s in (common_pb2.TUNNEL_STATE_ESTABLISHED, common_pb2.TUNNEL_STATE_REKEYING) for s in states):
        return common_pb2.TUNNEL_STATE_REKEYING
    for state in (common_pb2.TUNNEL_STATE_DELETING, common_pb2.TUNNEL_STATE_CONNECTING):
        if state in states:
            return state
    return common_pb2.TUNNEL_STATE_DOWN


class StatusBook:
    def __init__(
        self,
        store: Store,
        prefix: str,
        events: EventLog,
        interval_s: int,
        claims: TunnelClaims,
        on_received: Callable[[str, int], None] | None = None,
    ) -> None:
        self._store = store
        self._prefix = prefix
        self._events = events
        self._claims = claims
        self.unknown_tunnels = 0  # reported tunnel statuses dropped: not in the node's desired state
        self._unknown_warned_at = -UNKNOWN_WARNING_EVERY_S
        self._unknown_unwarned = 0
        self.interval_s = interval_s
        self._on_received = on_received
        self._reports: dict[str, NodeReport] = {}
        self._persisted: dict[str, float] = {}  # node -> monotonic time of our last write
        self._lost: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        listing = await self._store.range(self._prefix)
        for kv in listing.kvs:
            self._take(kv.key.removeprefix(self._prefix), kv.value)
        self._task = asyncio.create_task(self._follow(listing.revision + 1), name="status-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def get(self, node: str) -> NodeReport | None:
        return self._reports.get(node)

    def stale(self, node: str, now: float) -> bool:
        report = self._reports.get(node)
        return report is None or now - report.reported_at > STALE_AFTER_INTERVALS * self.interval_s

    def online_count(self, nodes: Iterable[str], now: float) -> int:
        """How many of `nodes` reported within the heartbeat window (`now`: wall clock)."""
        return sum(not self.stale(node, now) for node in nodes)

    def established_tunnels(self) -> int:
        ids = {
            tid
            for r in self._reports.values()
            for tid, t in r.tunnels.items()
            if t.state in (common_pb2.TUNNEL_STATE_ESTABLISHED, common_pb2.TUNNEL_STATE_REKEYING)
        }
        return len(ids)

    def forget(self, node: str) -> None:
        self._reports.pop(node, None)
        self._persisted.pop(node, None)
        self._lost.discard(node)

    async def accept(self, node: str, report: agent_pb2.StatusReport, now: float) -> agent_pb2.StatusAck:
        current = self._reports.get(node)
        same_instance = current is not None and current.instance_id == report.agent_instance_id
        ack = agent_pb2.StatusAck(next_report_seconds=self.interval_s)
        if current is not None and same_instance and report.seq <= current.seq:
            ack.seq = current.seq
            return ack
        resync = False
        if report.full:
            tunnels = {t.tunnel_id: t for t in report.tunnels}
        else:
            tunnels = dict(current.tunnels) if current is not None and same_instance else {}
            resync = current is None or not same_instance or report.seq != current.seq + 1
            for t in report.tunnels:
                tunnels[t.tunnel_id] = t
            for tid in report.removed_tunnel_ids:
                tunnels.pop(tid, None)
        checked = self._drop_unknown(node, current if same_instance else None, tunnels)
        updated = NodeReport(
            report.agent_instance_id,
            report.seq,
            now,
            report.node if report.HasField("node") else (current.node if current is not None else None),
            tunnels,
            max(report.received_version, current.received_version if same_instance and current else 0),
            report.reconciled_version,
            checked,
            _sent_at(report),
            clients_of(report),
        )
        self._reports[node] = updated
        if node in self._lost:
            self._lost.discard(node)
        changed = current is None or current.tunnels != tunnels or current.node != updated.node
        await self._emit_transitions(node, current, updated)
        if self._on_received is not None and report.received_version:
            self._on_received(node, report.received_version)
        last_write = self._persisted.get(node, 0.0)
        if changed or time.monotonic() - last_write >= self.interval_s / 2:
            self._persisted[node] = time.monotonic()
            try:
                await self._store.put(f"{self._prefix}{node}", updated.encode())
            except StoreError as exc:
                log.warning("status of %s not stored: %s", node, exc)
        ack.seq = report.seq
        ack.resync_required = resync
        return ack

    def _drop_unknown(
        self, node: str, previous: NodeReport | None, tunnels: dict[str, agent_pb2.TunnelStatus]
    ) -> int:
        """Removes from ``tunnels`` every status for a tunnel ``node`` does not have; returns the
        slice version they were checked at.

        Only ids not already checked are looked up (`TunnelClaims.owns`, O(policies) each): the
        previous report's ids stay good while the node's slice version is unchanged, and after a
        change only those its history removed need a look again. So a steady full mesh costs a
        dict lookup per reported tunnel, and a change costs one look per changed tunnel.
        """
        claims = self._claims
        version = claims.version(node)
        known: dict[str, agent_pb2.TunnelStatus] = {}
        stale: Collection[str] = ()
        if previous is not None and version and previous.checked_version:
            since = previous.checked_version
            removed = () if since == version else claims.removed_since(node, since)
            if removed is not None:
                known, stale = previous.tunnels, removed
        unknown = []
        for tid, status in tunnels.items():
            old = known.get(tid)
            if old is not None and old.peer_name == status.peer_name and tid not in stale:
                continue
            if not claims.owns(node, tid, status.peer_name):
                unknown.append(tid)
        for tid in unknown:
            del tunnels[tid]
        if unknown:
            self._warn_unknown(node, unknown)
        return version

    def _warn_unknown(self, node: str, unknown: list[str]) -> None:
        # Counted always, logged at most once a minute: a node can send thousands per report, and
        # an honest one still reports a tunnel for a moment after the controller removed it.
        self.unknown_tunnels += len(unknown)
        self._unknown_unwarned += len(unknown)
        now = time.monotonic()
        if now - self._unknown_warned_at < UNKNOWN_WARNING_EVERY_S:
            return
        log.warning(
            "dropped %d reported tunnel status(es) not in the reporting node's desired state "
            "(%d in all so far); latest from %s: %s",
            self._unknown_unwarned,
            self.unknown_tunnels,
            node,
            ", ".join(repr(t) for t in unknown[:5]) + (" ..." if len(unknown) > 5 else ""),
        )
        self._unknown_warned_at = now
        self._unknown_unwarned = 0

    async def _emit_transitions(self, node: str, before: NodeReport | None, after: NodeReport) -> None:
        for tid, status in after.tunnels.items():
            old = before.tunnels.get(tid) if before is not None else None
            if _state_key(old) == status.state:
                continue
            if status.state == common_pb2.TUNNEL_STATE_ESTABLISHED:
                await self._events.emit(
                    "TunnelEstablished",
                    "Tunnel",
                    tid,
                    f"{node}: tunnel to {status.peer_name} established",
                    source=f"agent/{node}",
                )
            elif status.state == common_pb2.TUNNEL_STATE_FAILED:
                why = (
                    f"{status.last_error.reason}: {status.last_error.message}"
                    if status.last_error.reason
                    else ""
                )
                await self._events.emit(
                    "TunnelFailed",
                    "Tunnel",
                    tid,
                    f"{node}: tunnel to {status.peer_name} failed {why}".strip(),
                    warning=True,
                    source=f"agent/{node}",
                )

    async def find_lost(self, now: float) -> list[str]:
        """Nodes that stopped reporting since the last call (leader-only: emits NodeLost once)."""
        lost = []
        for node, report in sorted(self._reports.items()):
            if node not in self._lost and now - report.reported_at > STALE_AFTER_INTERVALS * self.interval_s:
                self._lost.add(node)
                lost.append(node)
                await self._events.emit(
                    "NodeLost",
                    "Node",
                    node,
                    f"no status report for {now - report.reported_at:.0f} s",
                    warning=True,
                )
        return lost

    def _take(self, node: str, raw: bytes) -> None:
        try:
            incoming = NodeReport.decode(raw)
        except (ValueError, KeyError) as exc:
            log.error("unreadable stored status of %s: %s", node, exc)
            return
        current = self._reports.get(node)
        if current is None or incoming.reported_at >= current.reported_at:
            self._reports[node] = incoming

    async def _follow(self, start: int) -> None:
        while True:
            try:
                async with self._store.watch(self._prefix, start_revision=start) as watch:
                    async for event in watch:
                        start = event.revision + 1
                        node = event.key.removeprefix(self._prefix)
                        if event.type is EventType.PUT:
                            self._take(node, event.value)
                        else:
                            self.forget(node)
            except CompactedError:
                listing = await self._store.range(self._prefix)
                for kv in listing.kvs:
                    self._take(kv.key.removeprefix(self._prefix), kv.value)
                start = listing.revision + 1
            except StoreError as exc:
                log.warning("status watch failed (%s); retrying", exc)
                await asyncio.sleep(1.0)
