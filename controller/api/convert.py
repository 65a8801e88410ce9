"""Between the controller's model (resource documents, mesh tunnels) and the meshsec.v1 messages."""

from __future__ import annotations

import functools
import ipaddress
import math
from collections.abc import Callable, Mapping
from typing import Any

from google.protobuf import struct_pb2

from meshsec.common.secrets import Secret
from meshsec.controller.mesh import PeerKind as MeshPeerKind
from meshsec.controller.mesh import Tunnel
from meshsec.controller.mesh.routes import SiteRoute
from meshsec.controller.resources.model import (
    AuthMethod,
    Dpd,
    DpdAction,
    IpsecProtocol,
    Mode,
    Node,
    RemoteAccessPool,
    StartAction,
)
from meshsec.v1 import agent_pb2, common_pb2

PskLookup = Callable[[str], Secret | None]

_MODES = {Mode.TUNNEL: common_pb2.MODE_TUNNEL, Mode.TRANSPORT: common_pb2.MODE_TRANSPORT}
_PROTOCOLS = {
    IpsecProtocol.ESP: common_pb2.IPSEC_PROTOCOL_ESP,
    IpsecProtocol.AH: common_pb2.IPSEC_PROTOCOL_AH,
}
_START = {
    StartAction.START: common_pb2.START_ACTION_START,
    StartAction.TRAP: common_pb2.START_ACTION_TRAP,
    StartAction.NONE: common_pb2.START_ACTION_NONE,
}
_DPD = {
    DpdAction.RESTART: common_pb2.DPD_ACTION_RESTART,
    DpdAction.CLEAR: common_pb2.DPD_ACTION_CLEAR,
    DpdAction.TRAP: common_pb2.DPD_ACTION_HOLD,
}


# --- resource documents ----------------------------------------------------------------------------


class NonFiniteNumber(ValueError):
    """A Struct number that is inf or nan: JSON has no such value, so no manifest can hold one."""

    def __init__(self, value: float, path: str = "") -> None:
        super().__init__(f"{path or 'value'}: {value} is not a finite number")
        self.value = value
        self.path = path

    def under(self, key: str | int) -> NonFiniteNumber:
        """The same error one level up: `key` is where this value sits in its parent."""
        head = f"[{key}]" if isinstance(key, int) else key
        rest = self.path
        path = head if not rest else head + rest if rest.startswith("[") else f"{head}.{rest}"
        return NonFiniteNumber(self.value, path)


def _value(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        number = value.number_value
        if not math.isfinite(number):
            raise NonFiniteNumber(number)
        # Struct numbers are doubles; whole numbers go back to int so "1" validates as an integer.
        return int(number) if number.is_integer() else number
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return struct_to_dict(value.struct_value)
    if kind == "list_value":
        out = []
        for i, item in enumerate(value.list_value.values):
            try:
                out.append(_value(item))
            except NonFiniteNumber as exc:
                raise exc.under(i) from None
        return out
    return None


def struct_to_dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    """The Struct as plain JSON values; raises NonFiniteNumber (with its path) for inf and nan."""
    out: dict[str, Any] = {}
    for key, item in struct.fields.items():
        try:
            out[key] = _value(item)
        except NonFiniteNumber as exc:
            raise exc.under(key) from None
    return out


def resource_to_doc(resource: common_pb2.Resource) -> dict[str, Any]:
    """The manifest as a user wrote it (status dropped: it is controller-owned); NonFiniteNumber
    (path from the resource's root, "spec....") for an inf or nan in the spec."""
    meta = resource.metadata
    metadata: dict[str, Any] = {"name": meta.name}
    if meta.labels:
        metadata["labels"] = dict(meta.labels)
    if meta.annotations:
        metadata["annotations"] = dict(meta.annotations)
    return {
        "apiVersion": resource.api_version,
        "kind": resource.kind,
        "metadata": metadata,
        "spec": _spec(resource.spec),
    }


def _spec(spec: struct_pb2.Struct) -> dict[str, Any]:
    try:
        return struct_to_dict(spec)
    except NonFiniteNumber as exc:
        raise exc.under("spec") from None


def doc_to_resource(doc: Mapping[str, Any], resource_version: int) -> common_pb2.Resource:
    meta = doc.get("metadata", {})
    out = common_pb2.Resource(api_version=doc.get("apiVersion", ""), kind=doc.get("kind", ""))
    out.metadata.name = meta.get("name", "")
    out.metadata.labels.update(meta.get("labels", {}))
    out.metadata.annotations.update(meta.get("annotations", {}))
    out.metadata.resource_version = str(resource_version) if resource_version else ""
    out.metadata.generation = int(meta.get("generation", 0))
    out.metadata.uid = meta.get("uid", "")
    if "creationTimestamp" in meta:
        out.metadata.creation_time.FromJsonString(meta["creationTimestamp"])
    out.spec.update(doc.get("spec", {}))
    if doc.get("status"):
        out.status.update(doc["status"])
    return out


# --- identities and endpoints ----------------------------------------------------------------------


@functools.lru_cache(maxsize=1 << 16)
def _identity_type(value: str) -> common_pb2.Identity.Type:
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        if "@" in value:
            return common_pb2.Identity.TYPE_RFC822_ADDR
        if "=" in value:
            return common_pb2.Identity.TYPE_DER_ASN1_DN
        return common_pb2.Identity.TYPE_FQDN
    return common_pb2.Identity.TYPE_IPV4_ADDR if address.version == 4 else common_pb2.Identity.TYPE_IPV6_ADDR


def identity(value: str) -> common_pb2.Identity:
    """IKE identity with its IANA type guessed from the text (cached: every tunnel needs two)."""
    return common_pb2.Identity(type=_identity_type(value), value=value)


def node_endpoints(node: Node) -> list[common_pb2.Endpoint]:
    return [
        *(
            common_pb2.Endpoint(address=str(a), scope=common_pb2.ADDRESS_SCOPE_PRIVATE)
            for a in node.spec.endpoints.private
        ),
        *(
            common_pb2.Endpoint(address=str(a), scope=common_pb2.ADDRESS_SCOPE_PUBLIC)
            for a in node.spec.endpoints.public
        ),
    ]


def facts_to_endpoints(facts: agent_pb2.NodeFacts) -> dict[str, list[str]]:
    """Enrollment facts to Node.spec.endpoints: public and NAT-learned addresses are public."""
    public = [
        e.address
        for e in facts.addresses
        if e.scope in (common_pb2.ADDRESS_SCOPE_PUBLIC, common_pb2.ADDRESS_SCOPE_NAT)
    ]
    private = [e.address for e in facts.addresses if e.address not in public]
    out: dict[str, list[str]] = {}
    if public:
        out["public"] = public
    if private:
        out["private"] = private
    return out


def node_config(
    node: Node,
    uid: str,
    site_prefixes: tuple[str, ...],
    gateway: bool,
    status_interval_s: int,
    routes: tuple[SiteRoute, ...] = (),
    pools: tuple[RemoteAccessPool, ...] = (),
    revoked: tuple[str, ...] = (),
) -> agent_pb2.NodeConfig:
    """`revoked`: the revocation list, pushed to the nodes that serve a pool."""
    config = agent_pb2.NodeConfig(
        node_name=node.metadata.name,
        site=node.spec.site,
        node_uid=uid,
        local_endpoints=node_endpoints(node),
        site_prefixes=list(site_prefixes),
        site_gateway=gateway,
        local_id=identity(node.spec.identity.ike_id),
        status_interval_seconds=status_interval_s,
    )
    config.labels.update(node.metadata.labels)
    config.routes.extend(
        agent_pb2.SiteRoute(destination=r.destination, via=r.via, gateway=r.gateway) for r in routes
    )
    config.remote_access.extend(remote_access_service(p) for p in pools)
    if pools:
        config.revocation.SetInParent()  # set even when empty: "pushed, nothing revoked"
        config.revocation.serials.extend(revoked)
    return config


def remote_access_service(pool: RemoteAccessPool) -> agent_pb2.RemoteAccessService:
    spec = pool.spec
    return agent_pb2.RemoteAccessService(
        pool=pool.metadata.name,
        local_ts=[str(p) for p in spec.routes.selectors()],
        ike_proposals=list(spec.crypto.ike_proposals),
        esp_proposals=list(spec.crypto.esp_proposals),
        ike_lifetime_seconds=spec.crypto.ike_lifetime_s,
        child_lifetime_seconds=spec.crypto.child_lifetime_s,
        auth_methods=[m.value for m in spec.auth_methods],
    )


# --- tunnels ---------------------------------------------------------------------------------------


def _lifetimes(seconds: int) -> common_pb2.Lifetimes:
    # Rekey at 90 % of the hard limit, spread by up to 5 % so a mesh does not rekey in lockstep.
    return common_pb2.Lifetimes(
        soft_seconds=seconds - seconds // 10, hard_seconds=seconds, jitter_seconds=seconds // 20
    )


@functools.lru_cache(maxsize=4096)
def tunnel_template(
    source: str,
    peer_kind: MeshPeerKind,
    ike_proposals: tuple[str, ...],
    esp_proposals: tuple[str, ...],
    ike_lifetime_s: int,
    dpd: Dpd,
) -> agent_pb2.DesiredTunnel:
    """What every tunnel of one policy shares, serialized once: a full-mesh join sends N deltas
    that differ only in the pair, so each copies this and fills in the pair's fields."""
    return agent_pb2.DesiredTunnel(
        policy=source.partition("/")[2],
        peer_kind=(
            common_pb2.PEER_KIND_NODE
            if peer_kind is MeshPeerKind.NODE
            else common_pb2.PEER_KIND_EXTERNAL_GATEWAY
        ),
        ike_proposals=list(ike_proposals),
        esp_proposals=list(esp_proposals),
        ike_lifetimes=_lifetimes(ike_lifetime_s),
        dpd=common_pb2.Dpd(
            interval_seconds=dpd.delay_s, timeout_seconds=dpd.timeout_s, action=_DPD[dpd.action]
        ),
    )


@functools.lru_cache(maxsize=4096)
def child_template(
    name: str, mode: Mode, protocol: IpsecProtocol, lifetime_s: int, start: StartAction
) -> agent_pb2.ChildConfig:
    return agent_pb2.ChildConfig(
        name=name,
        mode=_MODES[mode],
        protocol=_PROTOCOLS[protocol],
        lifetimes=_lifetimes(lifetime_s),
        start_action=_START[start],
    )


def desired_tunnel(
    tunnel: Tunnel, peer_site: str, psk: PskLookup | None, generation: int
) -> agent_pb2.DesiredTunnel:
    """`psk` None: the admin view, which carries the auth method but never the key."""
    out = agent_pb2.DesiredTunnel()
    out.CopyFrom(
        tunnel_template(
            tunnel.source,
            tunnel.peer_kind,
            tunnel.ike_proposals,
            tunnel.children[0].proposals if tunnel.children else (),
            tunnel.ike_lifetime_s,
            tunnel.dpd,
        )
    )
    out.tunnel_id = tunnel.id
    out.peer_name = tunnel.peer
    out.peer_site = peer_site
    if tunnel.local_endpoints:
        out.local_endpoint.address = tunnel.local_endpoints[0]
    for address in tunnel.remote_endpoints:
        out.remote_endpoints.add(address=address)
    out.local_id.type = _identity_type(tunnel.local_ike_id)
    out.local_id.value = tunnel.local_ike_id
    out.remote_id.type = _identity_type(tunnel.remote_ike_id)
    out.remote_id.value = tunnel.remote_ike_id
    if tunnel.auth.method is AuthMethod.PSK:
        key = psk(tunnel.auth.psk_id) if psk is not None else None
        out.auth.psk.key = key.reveal() if key is not None else b""
    else:
        out.auth.certificate.SetInParent()
    for c in tunnel.children:
        child = out.children.add()
        child.CopyFrom(child_template(c.name, c.mode, c.protocol, c.lifetime_s, tunnel.start_action))
        for ts in c.local_ts:
            child.local_ts.add(cidr=ts)
        for ts in c.remote_ts:
            child.remote_ts.add(cidr=ts)
    out.initiator = tunnel.initiator
    out.generation = generation
    return out
