"""Prometheus metrics of the agent, on their own registry (served on --metrics).

Series labelled by tunnel exist only for the desired tunnels (`retain` drops the others), so the
number of series is bounded by the node's desired state; reason labels come from fixed sets."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from meshsec.agent.adapters.traffic import Traffic, TrafficOwner
from meshsec.common.metrics import register_build_info
from meshsec.v1 import agent_pb2, common_pb2

# The notify names a failure reason is recognised by, then the reasons an IKE SA of a tunnel
# fails for (`reconciler._fail_reason` maps the engine's texts to these; DPD has its own counter).
NOTIFY_FAILURES = ("AUTHENTICATION_FAILED", "NO_PROPOSAL_CHOSEN", "TS_UNACCEPTABLE", "INVALID_KE_PAYLOAD")
IKE_FAILURE_REASONS = (*NOTIFY_FAILURES, "TIMEOUT", "PEER_UNREACHABLE", "IKE_FAILED")
REKEY_SAS = ("ike", "child")


class TunnelCounters(Collector):
    """Counters labelled by tunnel (first label) and a fixed set of values of one more label
    (none with `values` empty); the values of a desired tunnel are listed from zero on."""

    def __init__(self, name: str, documentation: str, label: str = "", values: tuple[str, ...] = ()) -> None:
        self._name, self._doc, self._label, self._values = name, documentation, label, values
        self._counts: dict[str, dict[str, float]] = {}

    def inc(self, tunnel: str, value: str = "") -> None:
        if self._values and value not in self._values:
            raise ValueError(f"{self._name}: {value!r} is not one of {self._values}")
        self._counts.setdefault(tunnel, {})[value] = self._counts.get(tunnel, {}).get(value, 0.0) + 1

    def retain(self, tunnels: Collection[str]) -> None:
        self._counts = {t: self._counts.get(t, {}) for t in tunnels}

    def collect(self) -> Iterable[Metric]:
        labels = ["tunnel", self._label] if self._values else ["tunnel"]
        family = CounterMetricFamily(self._name, self._doc, labels=labels)
        for tunnel, counts in sorted(self._counts.items()):
            for value in self._values or ("",):
                family.add_metric([tunnel, value] if self._values else [tunnel], counts.get(value, 0.0))
        yield family


class TrafficCounters(Collector):
    """Bytes and packets per tunnel, CHILD_SA name and direction, retired SAs included, so the
    counters stay monotonic across rekeys (agent/adapters/traffic.py)."""

    def __init__(self) -> None:
        self._totals: dict[TrafficOwner, Traffic] = {}

    def set(self, totals: Mapping[TrafficOwner, Traffic], tunnels: Collection[str]) -> None:
        self._totals = {owner: t for owner, t in totals.items() if owner[0] in tunnels}

    def collect(self) -> Iterable[Metric]:
        labels = ["tunnel", "child", "direction"]
        help_text = "through the CHILD_SAs of a name, rekeys included"
        nbytes = CounterMetricFamily("meshsec_agent_child_sa_bytes", f"Bytes {help_text}", labels=labels)
        packets = CounterMetricFamily("meshsec_agent_child_sa_packets", f"Packets {help_text}", labels=labels)
        for (tunnel, child), t in sorted(self._totals.items()):
            nbytes.add_metric([tunnel, child, "in"], t.bytes_in)
            nbytes.add_metric([tunnel, child, "out"], t.bytes_out)
            packets.add_metric([tunnel, child, "in"], t.packets_in)
            packets.add_metric([tunnel, child, "out"], t.packets_out)
        yield nbytes
        yield packets


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._server: WSGIServer | None = None
        r = self.registry
        register_build_info(r)
        self.tunnels = Gauge("meshsec_agent_tunnels", "Desired tunnels by state", ["state"], registry=r)
        self.desired_version = Gauge(
            "meshsec_agent_desired_version", "Applied desired-state version", registry=r
        )
        self.connected = Gauge(
            "meshsec_agent_controller_connected", "1 while the watch stream is up", registry=r
        )
        self.reports = Counter("meshsec_agent_status_reports", "Status reports", ["result"], registry=r)
        self.reconnects = Counter("meshsec_agent_watch_reconnects", "Watch stream (re)connects", registry=r)
        self.updates = Counter("meshsec_agent_desired_updates", "Applied updates", ["kind"], registry=r)
        self.unauthenticated_failures = Counter(
            "meshsec_agent_ike_unauthenticated_failures",
            "Responder IKE SAs that failed before the peer authenticated (no tunnel to blame)",
            ["reason"],
            registry=r,
        )
        self.certificate_expiry = Gauge(
            "meshsec_agent_certificate_expiry_timestamp_seconds",
            "notAfter of the node certificate in use, unix seconds (0 before enrollment)",
            registry=r,
        )
        self.ike_failures = TunnelCounters(
            "meshsec_agent_ike_failures",
            "IKE SAs of a tunnel that failed, by reason",
            "reason",
            IKE_FAILURE_REASONS,
        )
        self.rekey_failures = TunnelCounters(
            "meshsec_agent_rekey_failures",
            "Rekeys refused or unanswered (sa: ike or child); retried until the SA's lifetime ends",
            "sa",
            REKEY_SAS,
        )
        self.dpd_failures = TunnelCounters(
            "meshsec_agent_dpd_failures", "IKE SAs of a tunnel cleared by dead peer detection"
        )
        self.traffic = TrafficCounters()
        for collector in (self.ike_failures, self.rekey_failures, self.dpd_failures, self.traffic):
            r.register(collector)

    def serve(self, address: str) -> int:
        """Serves /metrics on `address` (HOST:PORT, port 0 picks one); returns the port."""
        host, _, port = address.rpartition(":")
        self._server, _thread = start_http_server(
            int(port), host.strip("[]") or "0.0.0.0", registry=self.registry
        )
        return int(self._server.server_port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def retain(self, tunnels: Collection[str]) -> None:
        """Only these tunnels keep their series (called with each new desired state)."""
        for counters in (self.ike_failures, self.rekey_failures, self.dpd_failures):
            counters.retain(tunnels)

    def observe(
        self, tunnels: list[agent_pb2.TunnelStatus], traffic: Mapping[TrafficOwner, Traffic] | None = None
    ) -> None:
        counts = {name: 0 for name in common_pb2.TunnelState.keys()}  # noqa: SIM118
        for t in tunnels:
            counts[common_pb2.TunnelState.Name(t.state)] += 1
        for name, n in counts.items():
            self.tunnels.labels(name.removeprefix("TUNNEL_STATE_").lower()).set(n)
        if traffic is not None:
            self.traffic.set(traffic, {t.tunnel_id for t in tunnels})
