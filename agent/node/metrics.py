"""Prometheus metrics of the agent, on their own registry (served on --metrics)."""

from __future__ import annotations

from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from meshsec.v1 import agent_pb2, common_pb2


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._server: WSGIServer | None = None
        r = self.registry
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
        self.child_bytes = Gauge(
            "meshsec_agent_child_sa_bytes", "Bytes through CHILD_SAs", ["tunnel", "direction"], registry=r
        )
        self.child_packets = Gauge(
            "meshsec_agent_child_sa_packets", "Packets through CHILD_SAs", ["tunnel", "direction"], registry=r
        )

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

    def observe(self, tunnels: list[agent_pb2.TunnelStatus]) -> None:
        counts = {name: 0 for name in common_pb2.TunnelState.keys()}  # noqa: SIM118
        self.child_bytes.clear()
        self.child_packets.clear()
        for t in tunnels:
            counts[common_pb2.TunnelState.Name(t.state)] += 1
            for direction, nbytes, packets in (
                ("in", sum(c.bytes_in for c in t.child_sas), sum(c.packets_in for c in t.child_sas)),
                ("out", sum(c.bytes_out for c in t.child_sas), sum(c.packets_out for c in t.child_sas)),
            ):
                self.child_bytes.labels(t.tunnel_id, direction).set(nbytes)
                self.child_packets.labels(t.tunnel_id, direction).set(packets)
        for name, n in counts.items():
            self.tunnels.labels(name.removeprefix("TUNNEL_STATE_").lower()).set(n)
