"""DesiredTunnel (what the controller wants) -> IkeConfig (what the IKEv2 engine runs).

Pure functions: the reconciler compares translated configs to decide whether an existing IKE SA
still matches its tunnel. A tunnel the engine cannot run (an identity type it does not speak,
certificate auth before enrollment or with a local ID the node certificate does not name) is
rejected with a `TunnelError` that ends up in the tunnel's `last_error`.

Certificate auth signs with the node certificate and key from enrollment and trusts the
controller CA (ca.pem) unless the tunnel names its own bundle; the engine checks the peer's
chain to that CA and the peer's IKE ID against the peer certificate's subjectAltName."""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass

from cryptography import x509

from meshsec.agent.ike.certs import Credentials, describe, id_in_certificate, wall_clock
from meshsec.agent.ike.config import ChildConfig, ConfigError, IkeConfig, RetransmitConfig
from meshsec.agent.ike.constants import ProtocolId
from meshsec.agent.ike.identity import Identity
from meshsec.agent.ike.ts import Ts
from meshsec.common.secrets import Secret
from meshsec.v1 import agent_pb2, common_pb2

# Shorter than strongSwan's ~165 s give-up, so a dead peer is noticed and retried within a minute.
RETRANSMIT = RetransmitConfig(timeout=2.0, base=1.8, tries=4)


class TunnelError(ValueError):
    """The tunnel cannot be run by this agent; the message says why."""


class IdentityNotInCertificate(TunnelError):
    """Our IKE ID is not in the node certificate: a certificate issued for the current IKE ID
    (the controller signs the Node's ikeId at renewal) fixes it."""

    def __init__(self, message: str, local_id: str) -> None:
        super().__init__(message)
        self.local_id = local_id


def node_credentials(certificate_pem: bytes, key_pem: Secret, ca_pem: bytes) -> Credentials:
    """The engine's credentials from the enrollment files: node certificate and key, trusting
    the controller CA bundle. Raises CredentialError naming what is wrong with them."""
    return Credentials.load(certificate_pem, key_pem, [ca_pem], wall_clock)


@dataclass(frozen=True)
class TunnelPlan:
    """One desired tunnel, ready for the engine."""

    tunnel_id: str
    ike: IkeConfig
    local: str | None  # our address, None: the kernel's source address for the peer
    remotes: tuple[str, ...]  # in preference order
    initiator: bool
    start: bool  # any child asks to be started (START_ACTION_START)
    fingerprint: bytes  # the desired tunnel without `generation`: equal means unchanged


def identity_text(ident: common_pb2.Identity, where: str) -> str:
    t = common_pb2.Identity
    if ident.type in (t.TYPE_IPV4_ADDR, t.TYPE_IPV6_ADDR):
        try:
            return str(ipaddress.ip_address(ident.value))
        except ValueError as exc:
            raise TunnelError(f"{where}: {ident.value!r} is not an IP address") from exc
    if ident.type == t.TYPE_FQDN:
        return "@" + ident.value
    if ident.type == t.TYPE_RFC822_ADDR:
        return ident.value
    if ident.type == t.TYPE_KEY_ID:
        return "keyid:" + ident.value
    raise TunnelError(f"{where}: identity type {ident.type} is not supported by this agent")


def _ts(sel: common_pb2.TrafficSelector, where: str) -> Ts:
    try:
        ts = Ts.from_cidr(sel.cidr, sel.protocol)
    except ValueError as exc:
        raise TunnelError(f"{where}: {exc}") from exc
    if sel.port_start or sel.port_end:
        ts = Ts(ts.start, ts.end, ts.protocol, sel.port_start, sel.port_end or sel.port_start)
    return ts


def _child(tunnel: agent_pb2.DesiredTunnel, child: agent_pb2.ChildConfig, index: int) -> ChildConfig:
    where = f"tunnel {tunnel.tunnel_id} children[{index}]"
    protocol = ProtocolId.AH if child.protocol == common_pb2.IPSEC_PROTOCOL_AH else ProtocolId.ESP
    hard = int(child.lifetimes.hard_seconds) or 3960
    soft = min(int(child.lifetimes.soft_seconds) or hard, hard)
    kwargs: dict[str, object] = {"rand_time": _jitter(child.lifetimes, soft)}
    if tunnel.esp_proposals:
        kwargs["proposals"] = ",".join(tunnel.esp_proposals)
    return ChildConfig(
        name=child.name,
        local_ts=tuple(_ts(s, f"{where}.local_ts") for s in child.local_ts),
        remote_ts=tuple(_ts(s, f"{where}.remote_ts") for s in child.remote_ts),
        protocol=protocol,
        mode="transport" if child.mode == common_pb2.MODE_TRANSPORT else "tunnel",
        rekey_time=soft,
        life_time=hard,
        rekey_bytes=int(child.lifetimes.soft_bytes),
        life_bytes=int(child.lifetimes.hard_bytes),
        rekey_packets=int(child.lifetimes.soft_packets),
        life_packets=int(child.lifetimes.hard_packets),
        **kwargs,  # type: ignore[arg-type]
    )


def _jitter(lifetimes: common_pb2.Lifetimes, soft: int) -> int | None:
    """The controller's jitter as the engine's rand_time, which must stay below the soft limit."""
    if not lifetimes.jitter_seconds:
        return None
    return min(int(lifetimes.jitter_seconds), max(soft - 1, 0))


def _ike_lifetimes(tunnel: agent_pb2.DesiredTunnel) -> dict[str, object]:
    """IKE SA rekey at the soft limit, given up (deleted) at the hard one; engine defaults when
    the controller sent none."""
    lt = tunnel.ike_lifetimes
    hard = int(lt.hard_seconds)
    soft = min(int(lt.soft_seconds) or hard, hard) if hard else int(lt.soft_seconds)
    if not soft:
        return {}
    out: dict[str, object] = {"rekey_time": soft, "rand_time": _jitter(lt, soft)}
    if hard > soft:
        out["over_time"] = hard - soft
    return out


def fingerprint(tunnel: agent_pb2.DesiredTunnel) -> bytes:
    copy = agent_pb2.DesiredTunnel()
    copy.CopyFrom(tunnel)
    copy.generation = 0
    return copy.SerializeToString(deterministic=True)


def _certificate_auth(
    tunnel: agent_pb2.DesiredTunnel, node: Credentials | None, local_id: str, where: str
) -> Credentials:
    if node is None:
        raise TunnelError(
            f"{where}: certificate authentication needs the node certificate (not enrolled yet)"
        )
    creds = node
    bundle = tunnel.auth.certificate.ca_bundle_pem
    if bundle:
        try:
            trusted = tuple(x509.load_pem_x509_certificates(bundle.encode()))
        except ValueError as exc:
            raise TunnelError(f"{where}.auth.certificate.ca_bundle_pem: not PEM certificates: {exc}") from exc
        creds = dataclasses.replace(node, trusted=trusted)
    try:
        ident = Identity.parse(local_id)
    except ValueError as exc:
        raise TunnelError(f"{where}.local_id: {exc}") from exc
    if not id_in_certificate(ident, node.chain[0]):
        raise IdentityNotInCertificate(
            f"{where}: local ID {local_id} is not in the node certificate "
            f"'{describe(node.chain[0])}' (subjectAltName); a renewed certificate should name it",
            local_id,
        )
    return creds


def plan(tunnel: agent_pb2.DesiredTunnel, node: Credentials | None = None) -> TunnelPlan:
    """`node`: the node's certificate credentials, needed by tunnels with certificate auth."""
    where = f"tunnel {tunnel.tunnel_id}"
    method = tunnel.auth.WhichOneof("method")
    if method == "psk" and not tunnel.auth.psk.key:
        raise TunnelError(f"{where}: PSK authentication without a key")
    if method not in ("psk", "certificate"):
        raise TunnelError(f"{where}: no authentication method")
    local_id = identity_text(tunnel.local_id, f"{where}.local_id")
    creds = _certificate_auth(tunnel, node, local_id, where) if method == "certificate" else None
    if not tunnel.remote_endpoints:
        raise TunnelError(f"{where}: no remote endpoints")
    try:
        children = tuple(_child(tunnel, c, i) for i, c in enumerate(tunnel.children))
        kwargs = _ike_lifetimes(tunnel)
        if tunnel.ike_proposals:
            kwargs["proposals"] = ",".join(tunnel.ike_proposals)
        ike = IkeConfig(
            name=tunnel.tunnel_id,
            local_id=local_id,
            remote_id=identity_text(tunnel.remote_id, f"{where}.remote_id"),
            psk=Secret(tunnel.auth.psk.key) if creds is None else None,
            credentials=creds,
            children=children,
            retransmit=RETRANSMIT,
            force_encap=tunnel.force_udp_encapsulation,
            # DPD in the engine; a dead peer's SA is cleared and the reconciler, which owns the
            # decision to (re)initiate, brings the tunnel back (the `restart` of the API).
            dpd_delay=float(tunnel.dpd.interval_seconds or 30),
            dpd_action="clear",
            # MOBIKE (RFC 4555): when this node's address changes, its SAs move to the new one
            # (the agent follows its addresses) instead of being torn down and made again.
            mobike=True,
            **kwargs,  # type: ignore[arg-type]
        )
    except ConfigError as exc:
        raise TunnelError(f"{where}: {exc}") from exc
    return TunnelPlan(
        tunnel_id=tunnel.tunnel_id,
        ike=ike,
        local=tunnel.local_endpoint.address or None,
        remotes=tuple(e.address for e in tunnel.remote_endpoints),
        initiator=tunnel.initiator,
        start=any(c.start_action != common_pb2.START_ACTION_NONE for c in tunnel.children)
        or tunnel.initiator,
        fingerprint=fingerprint(tunnel),
    )
