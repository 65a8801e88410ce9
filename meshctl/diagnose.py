"""`meshctl diagnose`: what is wrong with a tunnel or node, from what the controller knows.

Everything here is a pure function of the controller's tunnel list (both ends' reported status
and the desired configuration) and its topology (each node's last NodeStatus, its clock at the
last report, when that report arrived). Each finding says how bad it is, what is wrong and what
to do; `-o json` gives the same findings with a stable ``code`` per kind of problem.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from meshsec.agent.ike.constants import ProtocolId
from meshsec.agent.ike.proposals import ProposalError, parse_proposals, select_proposal
from meshsec.meshctl.convert import timestamp
from meshsec.meshctl.table import Cell, Column, Styled
from meshsec.meshctl.views import duration, state_name, tunnel_ends
from meshsec.v1 import admin_pb2, common_pb2

ERROR, WARNING, INFO = "error", "warning", "info"
_SEVERITY_ORDER = {ERROR: 0, WARNING: 1, INFO: 2}
_COLOURS = {ERROR: "red", WARNING: "yellow", INFO: "cyan"}

# The controller backdates certificates by 5 minutes: a clock further ahead than that sees a
# fresh certificate as not yet valid. 30 s is already enough to confuse logs and lifetimes.
SKEW_ERROR = timedelta(minutes=5)
SKEW_WARNING = timedelta(seconds=30)
# Agents renew at two thirds of the lifetime (8 h before the end with the default 24 h): an hour
# left means renewal has been failing for a long time.
CERT_WARNING = timedelta(hours=1)

_UNREACHABLE = {"TIMEOUT", "PEER_UNREACHABLE", "DPD_TIMEOUT"}
_IKE_ADVICE = {
    "NO_PROPOSAL_CHOSEN": "give both ends proposals with a cipher, integrity/PRF and DH group in common",
    "AUTHENTICATION_FAILED": "check both ends use the same PSK (meshctl get secrets) or certificates from "
    "a CA the peer trusts, and the IKE IDs each end expects",
    "TS_UNACCEPTABLE": "make the site prefixes (traffic selectors) of both ends agree",
    "INVALID_KE_PAYLOAD": "put a DH group both ends accept first in the proposals",
}


@dataclass(frozen=True)
class Finding:
    severity: str  # error | warning | info
    object: str  # "tunnel/<id>" or "node/<name>"
    code: str  # stable, for scripts: PEER_UNREACHABLE, PATH_MTU, CLOCK_SKEW, ...
    message: str
    action: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


COLUMNS = [Column("SEVERITY", False), Column("OBJECT"), Column("FINDING"), Column("ACTION")]


def finding_row(f: Finding) -> list[Cell]:
    return [Styled(f.severity, _COLOURS[f.severity]), f.object, f"{f.code}: {f.message}", f.action]


def diagnose(
    tunnels: Sequence[admin_pb2.TunnelInfo],
    topology: admin_pb2.Topology,
    nodes: Iterable[str],
    now: datetime | None = None,
    *,
    all_tunnels: Sequence[admin_pb2.TunnelInfo] | None = None,
) -> list[Finding]:
    """Findings for ``tunnels`` and for the nodes named in ``nodes``, worst first. Proposals are
    compared with the reverse tunnel, looked for in ``all_tunnels`` (default ``tunnels``)."""
    when = now or datetime.now(UTC)
    by_name = {n.name: n for n in topology.nodes}
    found: list[Finding] = []
    for name in sorted(set(nodes)):
        node = by_name.get(name)
        if node is not None:
            found += node_findings(node, when)
    for info in tunnels:
        found += tunnel_findings(info, by_name, when)
    in_scope = {f"tunnel/{t.tunnel_id}" for t in tunnels}
    found += [f for f in proposal_findings(all_tunnels or tunnels, topology) if f.object in in_scope]
    return ordered(found)


def ordered(findings: Iterable[Finding]) -> list[Finding]:
    """Worst first, then by object and code."""
    return sorted(findings, key=lambda f: (_SEVERITY_ORDER[f.severity], f.object, f.code))


# -- nodes ------------------------------------------------------------------------------------


def node_findings(node: admin_pb2.TopologyNode, now: datetime) -> list[Finding]:
    subject = f"node/{node.name}"
    out: list[Finding] = []
    seen = timestamp(node.last_seen) if node.HasField("last_seen") else None
    if seen is None:
        out.append(
            Finding(
                ERROR,
                subject,
                "NOT_REPORTING",
                "the agent never reported",
                "start meshsec-agent on the node and check it can reach the controller",
            )
        )
    elif not node.online:
        out.append(
            Finding(
                ERROR,
                subject,
                "NODE_OFFLINE",
                f"no status report for {duration(int((now - seen).total_seconds()))}",
                "check the agent runs and reaches the controller (its log, `meshsec-agent "
                "status`); its tunnels keep running headless",
            )
        )
    clock = timestamp(node.agent_clock) if node.HasField("agent_clock") else None
    if clock is not None and seen is not None:
        skew = clock - seen
        size = abs(skew)
        if size >= SKEW_WARNING:
            ahead = "ahead of" if skew > timedelta(0) else "behind"
            out.append(
                Finding(
                    ERROR if size >= SKEW_ERROR else WARNING,
                    subject,
                    "CLOCK_SKEW",
                    f"the node's clock is {duration(int(size.total_seconds()))} {ahead} the controller's",
                    "synchronise the node's clock (chrony/systemd-timesyncd)",
                )
            )
    status = node.status if node.HasField("status") else None
    not_after = (
        timestamp(status.certificate_not_after)
        if status is not None and status.HasField("certificate_not_after")
        else None
    )
    if not_after is not None:
        left = not_after - now
        renew = (
            f"the agent renews by itself before expiry: check it reaches the controller; "
            f"else re-enroll (meshctl token create {node.name} --site {node.site} --allow-reenroll)"
        )
        if left <= timedelta(0):
            out.append(
                Finding(
                    ERROR,
                    subject,
                    "CERTIFICATE_EXPIRED",
                    f"node certificate expired {not_after.isoformat()} "
                    f"({duration(int(-left.total_seconds()))} ago)",
                    renew,
                )
            )
        elif left < CERT_WARNING:
            out.append(
                Finding(
                    WARNING,
                    subject,
                    "CERTIFICATE_EXPIRING",
                    f"node certificate expires {not_after.isoformat()} "
                    f"(in {duration(int(left.total_seconds()))})",
                    renew,
                )
            )
    return out


# -- tunnels ----------------------------------------------------------------------------------


def tunnel_findings(
    info: admin_pb2.TunnelInfo, nodes: dict[str, admin_pb2.TopologyNode], now: datetime
) -> list[Finding]:
    subject = f"tunnel/{info.tunnel_id}"
    ends = tunnel_ends(info)
    out: list[Finding] = []
    for index, end in enumerate(info.ends):
        if end.kind != common_pb2.PEER_KIND_NODE:
            continue
        peer = info.ends[1 - index] if len(info.ends) == 2 else None
        peer_addr = peer.endpoint.address if peer is not None and peer.endpoint.address else "?"
        if peer is not None and end.HasField("status") and end.status.ike_sa.remote_endpoint.address:
            peer_addr = end.status.ike_sa.remote_endpoint.address
        where = f"{ends}: {end.name}"
        if not end.HasField("status"):
            out.append(
                Finding(
                    WARNING,
                    subject,
                    "NOT_REPORTED",
                    f"{where} has not reported this tunnel",
                    f"check the agent on {end.name} runs and has this tunnel (meshsec-agent status)",
                )
            )
            continue
        status = end.status
        if end.stale:
            out.append(
                Finding(
                    WARNING,
                    subject,
                    "STALE_STATUS",
                    f"{where}: its last report is out of date",
                    f"see `meshctl diagnose {end.name}`",
                )
            )
        state = state_name(status.state)
        up = state in ("ESTABLISHED", "REKEYING")
        reason = status.last_error.reason
        detail = status.last_error.message
        if not up and (
            reason in _UNREACHABLE or (state == "CONNECTING" and not status.peer_reachable and not reason)
        ):
            out.append(
                Finding(
                    ERROR,
                    subject,
                    "PEER_UNREACHABLE",
                    f"{where} gets no IKE answer from {peer_addr} ({reason or state}"
                    f"{': ' + detail if detail else ''})",
                    f"allow UDP 500 and 4500 (and ESP, protocol 50) both ways between "
                    f"{end.endpoint.address or end.name} and {peer_addr}; check the peer is up",
                )
            )
        elif reason and not up:
            offered = ""
            if reason == "NO_PROPOSAL_CHOSEN":
                offered = (
                    f"; offered IKE {','.join(info.desired.ike_proposals) or '-'}, "
                    f"ESP {','.join(info.desired.esp_proposals) or '-'}"
                )
            out.append(
                Finding(
                    ERROR,
                    subject,
                    reason,
                    f"{where}: last IKE failure {reason}{': ' + detail if detail else ''}{offered}",
                    _IKE_ADVICE.get(reason, f"see the agent log on {end.name}"),
                )
            )
        if status.ike_sa.nat_detected:
            out.append(
                Finding(
                    INFO,
                    subject,
                    "NAT",
                    f"{where}: NAT detected on the path to {peer_addr}; ESP runs inside UDP 4500",
                    "keep UDP 4500 open both ways; DPD keeps the NAT mapping alive",
                )
            )
        node = nodes.get(end.name)
        sized_for = node.status.dataplane_path_mtu if node is not None and node.HasField("status") else 0
        if status.path_mtu and sized_for and status.path_mtu < sized_for:
            out.append(
                Finding(
                    ERROR,
                    subject,
                    "PATH_MTU",
                    f"{where}: the path MTU toward {peer_addr} is {status.path_mtu}, below the "
                    f"{sized_for} its data plane sizes tunnelled packets for: large packets are lost",
                    f"raise the underlay MTU on {end.name} to {sized_for}, or size the data plane "
                    f"for {status.path_mtu}",
                )
            )
    return out


# -- proposals --------------------------------------------------------------------------------


def proposals_match(ours: Sequence[str], theirs: Sequence[str], protocol: ProtocolId) -> bool | None:
    """Whether a responder with ``ours`` accepts one of ``theirs`` (the engine's own selection);
    None when either side has none or one cannot be parsed."""
    try:
        mine = tuple(s for text in ours for s in parse_proposals(text, protocol))
        offered = tuple(
            spec.to_proposal(number, b"")
            for number, spec in enumerate((s for text in theirs for s in parse_proposals(text, protocol)), 1)
        )
    except ProposalError:
        return None
    if not mine or not offered:
        return None
    return select_proposal(mine, offered) is not None


def proposal_findings(tunnels: Sequence[admin_pb2.TunnelInfo], topology: admin_pb2.Topology) -> list[Finding]:
    """Gateway tunnels that meet each other: node A's ExternalGateway is node B's address and B's
    points back at A. Both ends' desired proposals are known then; disjoint ones never match."""
    address_of = {n.name: {e.address for e in n.endpoints} for n in topology.nodes}
    owner = {a: name for name, addrs in address_of.items() for a in addrs}
    gateway_tunnels = [
        t for t in tunnels if len(t.ends) == 2 and t.ends[1].kind == common_pb2.PEER_KIND_EXTERNAL_GATEWAY
    ]
    out: list[Finding] = []
    for info in gateway_tunnels:
        node, gateway = info.ends
        peer_node = owner.get(gateway.endpoint.address)
        if peer_node is None:
            continue
        reverse = next(
            (
                r
                for r in gateway_tunnels
                if r.ends[0].name == peer_node
                and r.ends[1].endpoint.address in address_of.get(node.name, set())
            ),
            None,
        )
        if reverse is None:
            continue
        for what, protocol, ours, theirs in (
            ("IKE", ProtocolId.IKE, info.desired.ike_proposals, reverse.desired.ike_proposals),
            ("ESP", ProtocolId.ESP, info.desired.esp_proposals, reverse.desired.esp_proposals),
        ):
            if proposals_match(theirs, ours, protocol) is False:
                out.append(
                    Finding(
                        ERROR,
                        f"tunnel/{info.tunnel_id}",
                        "PROPOSAL_MISMATCH",
                        f"{node.name} offers {what} {','.join(ours)} to {gateway.name} "
                        f"({peer_node}), which accepts only {','.join(theirs)} "
                        f"(ExternalGateway {reverse.ends[1].name})",
                        f"give ExternalGateways {gateway.name} and {reverse.ends[1].name} "
                        f"{what} proposals in common",
                    )
                )
    return out


def document(findings: Sequence[Finding]) -> dict[str, Any]:
    return {"kind": "Diagnosis", "findings": [f.as_dict() for f in findings]}
