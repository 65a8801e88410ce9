"""Builds `StatusReport`s (docs/api.md, "Status reports") from the reconciler's tunnels and the
IKE runtime's views of their SAs and CHILD_SA counters (ike_port.py). Algorithms are spelled in
proposal notation ("aes256gcm16", "prfsha384", "ecp384") like the desired state spells them."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Mapping

from google.protobuf.timestamp_pb2 import Timestamp

from meshsec.agent.ike import Algorithms, ChildSaEstablished, Ts
from meshsec.agent.ike.constants import DhId, EncrId, IntegId, PrfId, ProtocolId
from meshsec.agent.node.ike_port import SaPhase, SaView
from meshsec.agent.node.pathmtu import PathMtu
from meshsec.agent.node.reconciler import Reconciler
from meshsec.v1 import agent_pb2, common_pb2

_INTEG: dict[int, str] = {IntegId.HMAC_SHA2_256_128: "sha256", IntegId.HMAC_SHA2_384_192: "sha384",
          IntegId.HMAC_SHA2_512_256: "sha512"}  # fmt: skip
_PRF: dict[int, str] = {
    PrfId.HMAC_SHA2_256: "prfsha256",
    PrfId.HMAC_SHA2_384: "prfsha384",
    PrfId.HMAC_SHA2_512: "prfsha512",
}
_DH: dict[int, str] = {DhId.CURVE25519: "x25519", DhId.ECP_256: "ecp256", DhId.ECP_384: "ecp384",
       DhId.MODP_2048: "modp2048", DhId.MODP_3072: "modp3072", DhId.ML_KEM_768: "mlkem768",
       DhId.ML_KEM_1024: "mlkem1024"}  # fmt: skip


def encryption_name(alg: Algorithms) -> str:
    if alg.encr == EncrId.CHACHA20_POLY1305:
        return "chacha20poly1305"
    bits = alg.encr_key_bits or 128
    if alg.encr == EncrId.AES_GCM_16:
        return f"aes{bits}gcm16"
    if alg.encr == EncrId.AES_CBC:
        return f"aes{bits}"
    return "" if alg.encr is None else f"encr{alg.encr}"


def _name(table: Mapping[int, str], value: int | None) -> str:
    return "" if value is None else table.get(value, str(value))


def timestamp(wall: float | None) -> Timestamp | None:
    if wall is None:
        return None
    ts = Timestamp()
    ts.FromNanoseconds(int(wall * 1e9))
    return ts


def endpoint(host: str, port: int) -> common_pb2.Endpoint:
    return common_pb2.Endpoint(address=host, port=port)


def selector(ts: Ts) -> common_pb2.TrafficSelector:
    nets = list(ipaddress.summarize_address_range(ts.start, ts.end))
    whole = ts.start_port == 0 and ts.end_port == 65535
    return common_pb2.TrafficSelector(
        cidr=str(nets[0]) if len(nets) == 1 else f"{ts.start}-{ts.end}",
        protocol=ts.protocol,
        port_start=0 if whole else ts.start_port,
        port_end=0 if whole else ts.end_port,
    )


def _set_time(field: Timestamp, wall: float | None) -> None:
    ts = timestamp(wall)
    if ts is not None:
        field.CopyFrom(ts)


class ReportBuilder:
    def __init__(self, reconciler: Reconciler) -> None:
        self.reconciler = reconciler
        self.peer_names: dict[str, str] = {}  # tunnel_id -> DesiredTunnel.peer_name
        self._last: dict[str, bytes] = {}  # tunnel_id -> status without updated_at
        self._updated: dict[str, float] = {}
        self.path_mtu = PathMtu()

    async def tunnels(self) -> list[agent_pb2.TunnelStatus]:
        groups = self.reconciler.sas_by_tunnel()
        out = []
        ids = sorted(set(self.reconciler.plans) | set(self.reconciler.invalid))
        statuses = [await self._tunnel(tid, groups.get(tid, [])) for tid in ids]
        peers = {s.tunnel_id: self._peer_address(s) for s in statuses}
        mtus = await self.path_mtu.lookup(a for a in peers.values() if a)
        for status in statuses:
            tid = status.tunnel_id
            status.path_mtu = mtus.get(peers[tid], 0)
            key = status.SerializeToString(deterministic=True)
            if self._last.get(tid) != key:
                self._last[tid] = key
                self._updated[tid] = time.time()
            ts = timestamp(self._updated[tid])
            assert ts is not None
            status.updated_at.CopyFrom(ts)
            out.append(status)
        for gone in set(self._last) - set(ids):
            self._last.pop(gone, None)
            self._updated.pop(gone, None)
        return out

    def _peer_address(self, status: agent_pb2.TunnelStatus) -> str:
        """The endpoint in use, else the first one the tunnel would try."""
        if status.ike_sa.remote_endpoint.address:
            return status.ike_sa.remote_endpoint.address
        plan = self.reconciler.plans.get(status.tunnel_id)
        return plan.remotes[0] if plan is not None and plan.remotes else ""

    async def _tunnel(self, tid: str, sas: list[SaView]) -> agent_pb2.TunnelStatus:
        rec = self.reconciler
        rt = rec.runtime.get(tid)
        status = agent_pb2.TunnelStatus(tunnel_id=tid, peer_name=self.peer_names.get(tid, ""))
        established = [s for s in sas if s.is_established]
        current = established[0] if established else (sas[0] if sas else None)
        if tid in rec.invalid:
            status.state = common_pb2.TUNNEL_STATE_FAILED
        elif current is None:
            failed = rt is not None and rt.last_error is not None
            status.state = common_pb2.TUNNEL_STATE_FAILED if failed else common_pb2.TUNNEL_STATE_DOWN
        elif current.is_established and current.rekeying:
            status.state = common_pb2.TUNNEL_STATE_REKEYING
        elif current.is_established:
            status.state = common_pb2.TUNNEL_STATE_ESTABLISHED
        elif current.phase is SaPhase.DELETING:
            status.state = common_pb2.TUNNEL_STATE_DELETING
        else:
            status.state = common_pb2.TUNNEL_STATE_CONNECTING
        status.peer_reachable = bool(established)
        if current is not None:
            status.ike_sa.CopyFrom(self._ike_sa(current))
            _set_time(status.ike_sa.last_rekey_at, rt.last_ike_rekey if rt else None)
            for child in current.children:
                if child.event is None:  # not announced yet
                    continue
                child_status = await self._child(current, child.event)
                _set_time(child_status.last_rekey_at, rt.last_child_rekey.get(child.name) if rt else None)
                status.child_sas.append(child_status)
        if rt is not None and rt.last_error is not None and not established:
            err = rt.last_error
            status.last_error.reason = err.reason
            status.last_error.message = err.message
            at = timestamp(err.at)
            assert at is not None
            status.last_error.at.CopyFrom(at)
        return status

    def _ike_sa(self, sa: SaView) -> agent_pb2.IkeSaStatus:
        out = agent_pb2.IkeSaStatus(
            spi_initiator=int.from_bytes(sa.spi_i, "big"),
            spi_responder=int.from_bytes(sa.spi_r, "big"),
            initiator=sa.initiator,
            local_endpoint=endpoint(sa.local.host, sa.local.port),
            remote_endpoint=endpoint(sa.remote.host, sa.remote.port),
            nat_detected=sa.nat_detected,
        )
        if sa.established is not None:
            alg = sa.established.algorithms
            out.encryption_algorithm = encryption_name(alg)
            out.integrity_algorithm = _name(_INTEG, alg.integ)
            out.prf_algorithm = _name(_PRF, alg.prf)
            out.dh_group = _name(_DH, alg.dh)
            at = timestamp(sa.established_at)
            if at is not None:
                out.established_at.CopyFrom(at)
        return out

    async def _child(self, sa: SaView, ev: ChildSaEstablished) -> agent_pb2.ChildSaStatus:
        out = agent_pb2.ChildSaStatus(
            name=ev.name,
            spi_in=ev.spi_in,
            spi_out=ev.spi_out,
            protocol=common_pb2.IPSEC_PROTOCOL_AH
            if ev.protocol == ProtocolId.AH
            else common_pb2.IPSEC_PROTOCOL_ESP,
            mode=common_pb2.MODE_TRANSPORT if ev.mode == "transport" else common_pb2.MODE_TUNNEL,
            encryption_algorithm=encryption_name(ev.algorithms),
            integrity_algorithm=_name(_INTEG, ev.algorithms.integ),
            dh_group=_name(_DH, ev.algorithms.dh),
            local_ts=[selector(t) for t in ev.ts_local],
            remote_ts=[selector(t) for t in ev.ts_remote],
            udp_encapsulated=ev.udp_encap,
        )
        traffic = await self.reconciler.ike.child_traffic(sa.handle, ev.spi_in)
        if traffic is not None:
            out.bytes_in, out.packets_in = traffic.bytes_in, traffic.packets_in
            out.bytes_out, out.packets_out = traffic.bytes_out, traffic.packets_out
        return out
