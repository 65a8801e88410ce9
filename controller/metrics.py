"""Prometheus metrics of one controller replica, served on ``/metrics`` (`serve`).

Each replica has its own registry (several replicas can share a process in tests). Gauges that
describe the mesh are computed when scraped, from counters the index keeps anyway.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TypeVar
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from meshsec.common.metrics import register_build_info
from meshsec.controller.store import Lease, RangeResult, Store, TxnResult, Watch
from meshsec.controller.store.api import Compare, KeyValue, Op

T = TypeVar("T")

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ControllerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        register_build_info(r)
        self.nodes = Gauge("meshsec_controller_nodes", "Node resources known to this replica", registry=r)
        self.nodes_online = Gauge(
            "meshsec_controller_nodes_online",
            "Node resources whose agent reported within the heartbeat window (Online)",
            registry=r,
        )
        self.ca_expiry = Gauge(
            "meshsec_controller_ca_certificate_expiry_timestamp_seconds",
            "notAfter of the controller CA certificate, unix seconds",
            registry=r,
        )
        self.tunnels_desired = Gauge(
            "meshsec_controller_tunnels_desired", "Tunnels the mesh computation asks for", registry=r
        )
        self.tunnels_established = Gauge(
            "meshsec_controller_tunnels_established",
            "Tunnels at least one end reports ESTABLISHED or REKEYING",
            registry=r,
        )
        self.agents_connected = Gauge(
            "meshsec_controller_agents_connected",
            "Desired-state watch streams open on this replica",
            registry=r,
        )
        self.push_seconds = LoopHistogram(
            "meshsec_controller_push_seconds",
            "From processing a store change to writing the node's update on its watch stream",
            _LATENCY_BUCKETS,
        )
        r.register(self.push_seconds)
        self.push_ack_seconds = Histogram(
            "meshsec_controller_push_ack_seconds",
            "From processing a store change to the agent acknowledging it (StatusReport.received_version)",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.recompute_seconds = Histogram(
            "meshsec_controller_recompute_seconds",
            "Time to turn one store revision into node deltas",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.node_updates = Counter(
            "meshsec_controller_node_updates", "Per-node desired-state versions produced", registry=r
        )
        self.store_seconds = Histogram(
            "meshsec_controller_store_seconds",
            "Store call latency",
            labelnames=["op"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.store_errors = Counter(
            "meshsec_controller_store_errors", "Store calls that raised", labelnames=["op"], registry=r
        )
        self.is_leader = Gauge("meshsec_controller_leader", "1 while this replica is the leader", registry=r)
        self._bytes_by_kind = {kind: LoopCounter() for kind in ("snapshot", "delta")}
        r.register(
            LabelledCounters(
                "meshsec_controller_pushed_bytes",
                "Serialized desired-state bytes written to agents",
                "kind",
                self._bytes_by_kind,
            )
        )
        self._pending_ack: dict[str, tuple[int, float]] = {}

    def bind(
        self,
        nodes: Callable[[], float],
        nodes_online: Callable[[], float],
        tunnels_desired: Callable[[], float],
        tunnels_established: Callable[[], float],
        agents_connected: Callable[[], float],
        unknown_tunnel_statuses: Callable[[], float],
    ) -> None:
        self.nodes.set_function(nodes)
        self.nodes_online.set_function(nodes_online)
        self.tunnels_desired.set_function(tunnels_desired)
        self.tunnels_established.set_function(tunnels_established)
        self.agents_connected.set_function(agents_connected)
        self.registry.register(
            FunctionCounter(
                "meshsec_controller_unknown_tunnel_statuses",
                "Tunnel statuses agents reported for tunnels they do not have (dropped)",
                unknown_tunnel_statuses,
            )
        )

    def recomputed(self, updates: int, seconds: float) -> None:
        self.node_updates.inc(updates)
        self.recompute_seconds.observe(seconds)

    def pushed(self, node: str, version: int, computed_at: float, size: int, kind: str) -> None:
        now = time.monotonic()
        self.push_seconds.observe(now - computed_at)
        self._bytes_by_kind[kind].value += size
        self._pending_ack[node] = (version, computed_at)

    def acknowledged(self, node: str, version: int) -> None:
        pending = self._pending_ack.get(node)
        if pending is not None and version >= pending[0]:
            del self._pending_ack[node]
            self.push_ack_seconds.observe(time.monotonic() - pending[1])

    def serve(self, host: str, port: int) -> tuple[WSGIServer, int]:
        """Starts the /metrics HTTP server in a thread; returns it and the bound port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server, int(server.server_port)


class LoopHistogram(Collector):
    """A histogram observed only from the event loop's thread, so without prometheus_client's lock.

    A full-mesh join pushes one update to each of 10k agents; observing each through
    prometheus_client (a lock, a bucket scan, a counter per bucket) cost ~5 us a push, a measurable
    share of the join. Buckets are found by bisection and kept as plain counts.
    """

    def __init__(self, name: str, documentation: str, buckets: Sequence[float]) -> None:
        self._name, self._doc = name, documentation
        self._bounds = list(buckets)
        self._counts = [0] * (len(self._bounds) + 1)  # the last is +Inf
        self._sum = 0.0

    def observe(self, value: float) -> None:
        self._counts[bisect.bisect_left(self._bounds, value)] += 1
        self._sum += value

    def collect(self) -> Iterable[Metric]:
        cumulative, buckets = 0, []
        for bound, count in zip([*map(floatToGoString, self._bounds), "+Inf"], self._counts, strict=True):
            cumulative += count
            buckets.append((bound, cumulative))
        yield HistogramMetricFamily(self._name, self._doc, buckets=buckets, sum_value=self._sum)


class LoopCounter:
    """A counter value updated only from the event loop's thread (see LoopHistogram)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0


class LabelledCounters(Collector):
    """LoopCounters exposed as one counter family with one label."""

    def __init__(self, name: str, documentation: str, label: str, counters: dict[str, LoopCounter]) -> None:
        self._name, self._doc, self._label = name, documentation, label
        self._counters = counters

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(self._name, self._doc, labels=[self._label])
        for value, counter in self._counters.items():
            family.add_metric([value], counter.value)
        yield family


class FunctionCounter(Collector):
    """A counter whose value another component keeps (read when scraped)."""

    def __init__(self, name: str, documentation: str, value: Callable[[], float]) -> None:
        self._name, self._doc, self._value = name, documentation, value

    def collect(self) -> Iterable[Metric]:
        yield CounterMetricFamily(self._name, self._doc, value=self._value())


class TimedStore(Store):
    """A `Store` that records the latency of every call (watches are timed only when opened)."""

    def __init__(self, inner: Store, metrics: ControllerMetrics) -> None:
        self.inner = inner
        self._m = metrics

    async def _timed(self, op: str, call: Awaitable[T]) -> T:
        started = time.monotonic()
        try:
            return await call
        except Exception:
            self._m.store_errors.labels(op).inc()
            raise
        finally:
            self._m.store_seconds.labels(op).observe(time.monotonic() - started)

    async def get(self, key: str) -> KeyValue | None:
        return await self._timed("get", self.inner.get(key))

    async def range(self, prefix: str, *, revision: int = 0) -> RangeResult:
        return await self._timed("range", self.inner.range(prefix, revision=revision))

    async def txn(self, compares: Sequence[Compare], ops: Sequence[Op]) -> TxnResult:
        return await self._timed("txn", self.inner.txn(compares, ops))

    def watch(self, prefix: str, *, start_revision: int) -> Watch:
        return self.inner.watch(prefix, start_revision=start_revision)

    async def compact(self, revision: int) -> None:
        await self._timed("compact", self.inner.compact(revision))

    async def grant_lease(self, ttl: int) -> Lease:
        return await self._timed("grant_lease", self.inner.grant_lease(ttl))

    async def keepalive(self, lease_id: int) -> int:
        return await self._timed("keepalive", self.inner.keepalive(lease_id))

    async def revoke_lease(self, lease_id: int) -> None:
        await self._timed("revoke_lease", self.inner.revoke_lease(lease_id))

    async def close(self) -> None:
        await self.inner.close()
