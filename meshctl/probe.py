"""`meshctl diagnose NODE --probe`: active checks from this host toward NODE's peer endpoints.

Two bounded probes per tunnel end, sent only to the peer endpoints the controller lists for the
node's tunnels: one IKE_SA_INIT request on UDP 500 (and 4500 when NAT-T applies), built with the
engine's own codec with a fresh SPI and never followed up, and a short binary search of DF-set
pings for the largest packet that reaches the peer. Any IKE answer carrying our SPI (a response,
COOKIE, INVALID_KE_PAYLOAD, NO_PROPOSAL_CHOSEN) proves the path; silence means a firewall or a
dead peer. The probes must leave from the node's own address, so they run on the node.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import select
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass

from meshsec.agent.ike.address import Address
from meshsec.agent.ike.build import build_message
from meshsec.agent.ike.constants import ExchangeType, HeaderFlag, NotifyType, ProtocolId
from meshsec.agent.ike.crypto import default_dh_factory
from meshsec.agent.ike.natt import add_non_esp_marker, classify_4500, nat_detection_hash
from meshsec.agent.ike.parse import ParseError, parse_header
from meshsec.agent.ike.payloads import Header, KePayload, NoncePayload, NotifyPayload, Payload, SaPayload
from meshsec.agent.ike.proposals import ProposalError, parse_proposals
from meshsec.agent.ike.random import SystemRandom
from meshsec.agent.node.pathmtu import route_mtus
from meshsec.meshctl.diagnose import ERROR, INFO, WARNING, Finding
from meshsec.v1 import admin_pb2, common_pb2

IKE_PORT, NATT_PORT = 500, 4500
# Offered when the tunnel's desired state names no IKE proposal: one every peer of ours accepts.
FALLBACK_PROPOSAL = "aes256gcm16-prfsha256-x25519"
MIN_MTU = 1280  # IPv6's minimum; below it the underlay is broken, not merely small
_IP_OVERHEAD = {4: 28, 6: 48}  # IP + ICMP echo header: ping's -s is the payload only
_MAX_REPLIES = 16  # datagrams read per probe before giving up on strangers


@dataclass(frozen=True)
class ProbeTarget:
    tunnel: str
    local: str
    peer: str
    port: int
    natt: bool
    proposals: tuple[str, ...]


def ike_sa_init(spi: bytes, local: Address, remote: Address, proposals: Sequence[str]) -> bytes:
    """An initiator's first IKE_SA_INIT (RFC 7296 1.2) for ``proposals``; nothing is kept."""
    rnd = SystemRandom()
    texts = proposals or (FALLBACK_PROPOSAL,)
    specs = tuple(s for text in texts for s in parse_proposals(text, ProtocolId.IKE))
    group = specs[0].dh_groups()[0]
    payloads: list[Payload] = [
        SaPayload(tuple(spec.to_proposal(i + 1, b"") for i, spec in enumerate(specs))),
        KePayload(group, default_dh_factory(group, rnd).public_bytes()),
        NoncePayload(rnd.bytes(32)),
        NotifyPayload(NotifyType.NAT_DETECTION_SOURCE_IP, nat_detection_hash(spi, bytes(8), local)),
        NotifyPayload(NotifyType.NAT_DETECTION_DESTINATION_IP, nat_detection_hash(spi, bytes(8), remote)),
    ]
    header = Header(spi, bytes(8), 0, ExchangeType.IKE_SA_INIT, HeaderFlag.INITIATOR, 0, 0)
    return build_message(header, payloads)


def answers(datagram: bytes, spi: bytes, natt: bool) -> bool:
    """Whether ``datagram`` is an IKE_SA_INIT response to our request (our SPI as initiator's)."""
    if natt:
        kind, datagram = classify_4500(datagram)
        if kind != "ike":
            return False
    try:
        header = parse_header(datagram)
    except ParseError:
        return False
    return header.spi_i == spi and header.is_response and header.exchange == ExchangeType.IKE_SA_INIT


def is_local_address(address: str) -> bool:
    family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((address, 0))
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                return False
            raise
    return True


def probe_ike(local: str, peer: str, port: int, natt: bool, proposals: Sequence[str], wait_s: float) -> bool:
    """One IKE_SA_INIT from ``local`` (an ephemeral port: the agent holds 500) to ``peer:port``."""
    family = socket.AF_INET6 if ipaddress.ip_address(peer).version == 6 else socket.AF_INET
    spi = os.urandom(8)
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.bind((local, 0))
        here = Address(local, sock.getsockname()[1])
        message = ike_sa_init(spi, here, Address(peer, port), proposals)
        sock.sendto(add_non_esp_marker(message) if natt else message, (peer, port))
        deadline = time.monotonic() + wait_s
        for _ in range(_MAX_REPLIES):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([sock], [], [], left)[0]:
                return False
            try:
                data, source = sock.recvfrom(65535)
            except ConnectionRefusedError:  # ICMP port unreachable: nothing listens there
                return False
            if source[0] == peer and source[1] == port and answers(data, spi, natt):
                return True
    return False


def ping_passes(local: str, peer: str, size: int) -> bool:
    """One DF-set echo of ``size`` bytes on the wire (ping counts only the payload)."""
    version = ipaddress.ip_address(peer).version
    payload = size - _IP_OVERHEAD[version]
    argv = ["ping", f"-{version}", "-M", "do", "-s", str(payload), "-c", "1", "-W", "1", "-I", local, peer]
    try:
        done = subprocess.run(argv, capture_output=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def probe_path_mtu(local: str, peer: str, upper: int) -> int | None:
    """The largest packet up to ``upper`` that reaches ``peer`` with DF set, by binary search
    from MIN_MTU (about log2(upper - 1280) pings); None when not even MIN_MTU passes."""
    if ping_passes(local, peer, upper):
        return upper
    if not ping_passes(local, peer, MIN_MTU):
        return None
    low, high = MIN_MTU, upper  # low passes, high does not
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if ping_passes(local, peer, middle) else (low, middle)
    return low


def targets(tunnels: Sequence[admin_pb2.TunnelInfo], node: str, probe_from: str | None) -> list[ProbeTarget]:
    out: list[ProbeTarget] = []
    for info in tunnels:
        for index, end in enumerate(info.ends):
            if end.name != node or end.kind != common_pb2.PEER_KIND_NODE or len(info.ends) != 2:
                continue
            peer_end = info.ends[1 - index]
            peer = peer_end.endpoint.address
            natt = end.HasField("status") and end.status.ike_sa.nat_detected
            if end.HasField("status") and end.status.ike_sa.remote_endpoint.address:
                peer = end.status.ike_sa.remote_endpoint.address
            if not peer:
                continue
            out.append(
                ProbeTarget(
                    info.tunnel_id,
                    probe_from or end.endpoint.address,
                    peer,
                    peer_end.endpoint.port or IKE_PORT,
                    bool(natt),
                    tuple(info.desired.ike_proposals),
                )
            )
    return out


def probe_findings(
    tunnels: Sequence[admin_pb2.TunnelInfo],
    topology: admin_pb2.Topology,
    node: str,
    *,
    probe_from: str | None = None,
    wait_s: float = 2.0,
) -> list[Finding]:
    """Findings from probing each peer endpoint of ``node``'s tunnels from this host."""
    by_name = {n.name: n for n in topology.nodes}
    record = by_name.get(node)
    sized_for = record.status.dataplane_path_mtu if record is not None and record.HasField("status") else 0
    found: list[Finding] = []
    mtus: dict[tuple[str, str], int | None] = {}
    for target in targets(tunnels, node, probe_from):
        subject = f"tunnel/{target.tunnel}"
        if not target.local or not is_local_address(target.local):
            found.append(
                Finding(
                    WARNING,
                    subject,
                    "PROBE_SKIPPED",
                    f"{node}'s endpoint {target.local or '?'} is not an address of this host",
                    f"run `meshctl diagnose {node} --probe` on {node}, or pass --probe-from ADDRESS",
                )
            )
            continue
        ports = [target.port] + ([NATT_PORT] if target.natt and target.port != NATT_PORT else [])
        for port in ports:
            try:
                ok = probe_ike(target.local, target.peer, port, port == NATT_PORT, target.proposals, wait_s)
            except ProposalError:
                ok = probe_ike(target.local, target.peer, port, port == NATT_PORT, (), wait_s)
            if not ok:
                found.append(
                    Finding(
                        ERROR,
                        subject,
                        "PEER_UNREACHABLE_PROBE",
                        f"no IKE answer from {target.peer}:{port} in {wait_s:g} s",
                        f"check UDP 500/4500 firewalls between {target.local} and {target.peer}; "
                        f"check the peer's IKE daemon runs",
                    )
                )
        key = (target.local, target.peer)
        if key not in mtus:
            upper = _route_mtu(target.peer)
            mtus[key] = probe_path_mtu(target.local, target.peer, max(upper, MIN_MTU))
        found.append(mtu_finding(subject, target, mtus[key], sized_for))
    return found


def _route_mtu(peer: str) -> int:
    """The egress MTU toward ``peer`` (the search's upper end); 1500 when unknown."""
    try:
        return route_mtus([peer]).get(peer) or 1500
    except ImportError:  # no pyroute2 here
        return 1500


def mtu_finding(subject: str, target: ProbeTarget, probed: int | None, sized_for: int) -> Finding:
    where = f"{target.local} -> {target.peer}"
    if probed is None:
        return Finding(
            ERROR,
            subject,
            "PATH_MTU_PROBE",
            f"{where}: no DF-set ping of {MIN_MTU} bytes got through",
            "check ICMP echo is allowed and the underlay carries at least 1280-byte packets",
        )
    if sized_for and probed < sized_for:
        return Finding(
            ERROR,
            subject,
            "PATH_MTU_PROBE",
            f"{where}: the largest DF-set packet that passes is {probed}, below the {sized_for} "
            f"the data plane is sized for",
            f"raise the underlay MTU on the path to {sized_for}, or size the data plane for {probed}",
        )
    return Finding(
        INFO,
        subject,
        "PATH_MTU_PROBE",
        f"{where}: the largest DF-set packet that passes is {probed}"
        f"{f' (data plane sized for {sized_for})' if sized_for else ''}",
        "nothing to do",
    )
