"""Building the two ends of one tunnel from the resources it depends on (pure functions).

The index decides *which* pairs exist; these functions decide what a pair's tunnel looks like.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from ipaddress import collapse_addresses, ip_network

from meshsec.controller.mesh.model import AuthRef, ChildSA, PeerKind, Tunnel
from meshsec.controller.resources.model import (
    Address,
    AuthMethod,
    ExternalGateway,
    IpsecProtocol,
    MeshPolicy,
    Mode,
    Node,
    Prefix,
    StartAction,
)


def policy_source(policy: str) -> str:
    """`Tunnel.source` (and the first input of `tunnel_id`) for a MeshPolicy's tunnels."""
    return f"MeshPolicy/{policy}"


def gateway_source(gateway: str) -> str:
    """`Tunnel.source` (and the first input of `tunnel_id`) for an ExternalGateway's tunnels."""
    return f"ExternalGateway/{gateway}"


def tunnel_id(source: str, a: str, b: str) -> str:
    """Stable across replicas and restarts: depends only on the source resource and the pair."""
    lo, hi = (a, b) if a <= b else (b, a)
    return "t-" + hashlib.blake2b(f"{source}\x00{lo}\x00{hi}".encode(), digest_size=10).hexdigest()


def host_selectors(addresses: tuple[Address, ...]) -> tuple[str, ...]:
    return prefix_selectors([ip_network(a) for a in addresses])


def prefix_selectors(prefixes: tuple[Prefix, ...] | list[Prefix]) -> tuple[str, ...]:
    """Collapsed and sorted, so equal sets of prefixes always give equal selectors."""
    v4 = collapse_addresses([p for p in prefixes if p.version == 4])
    v6 = collapse_addresses([p for p in prefixes if p.version == 6])
    return tuple(str(p) for p in [*v4, *v6])


def selectors_to_prefixes(selectors: tuple[str, ...]) -> list[Prefix]:
    return [ip_network(s) for s in selectors]


@functools.lru_cache(maxsize=1 << 16)
def _strs(addresses: tuple[Address, ...]) -> tuple[str, ...]:
    # Formatting addresses dominated the cost of a pair; every node's endpoints repeat per peer.
    return tuple(str(a) for a in addresses)


@dataclass(frozen=True, slots=True)
class _Reach:
    """What every tunnel of a node needs from its Node resource, formatted once."""

    name: str
    ike_id: str
    site: str
    inside: tuple[str, ...]  # private, else public: its source addresses; how its own site reaches it
    outside: tuple[str, ...]  # public, else private: how other sites reach it
    nat: bool  # no public address: behind NAT


# Keyed by id() and checked by identity (the entry holds the Node, so the id cannot be reused
# while cached): hashing a Node would hash every field, which costs more than building _Reach.
# Bounded, so memory stays linear in the nodes; an edited node gets a new entry.
_REACH: dict[int, tuple[Node, _Reach]] = {}
_REACH_MAX = 1 << 17


def _reach(node: Node) -> _Reach:
    hit = _REACH.get(id(node))
    if hit is not None and hit[0] is node:
        return hit[1]
    ep = node.spec.endpoints
    reach = _Reach(
        node.metadata.name,
        node.spec.identity.ike_id,
        node.spec.site,
        _strs(ep.private or ep.public),
        _strs(ep.public or ep.private),
        not ep.public,
    )
    if len(_REACH) >= _REACH_MAX:
        _REACH.clear()
    _REACH[id(node)] = (node, reach)
    return reach


def _underlay(a: _Reach, b: _Reach) -> tuple[tuple[str, ...], tuple[str, ...], bool]:
    """(a's source addresses, b's addresses as seen by a, whether a initiates).

    Inside one site nodes talk over private addresses. Across sites a node is reached at its
    public address; one that has none sits behind NAT and must be the initiator (it opens the
    NAT mapping), otherwise the lower node name initiates so exactly one side does.
    """
    if a.site == b.site:
        return a.inside, b.inside, a.name < b.name
    initiates = a.name < b.name if a.nat == b.nat else a.nat
    return a.inside, b.outside, initiates


def node_pair(
    policy: MeshPolicy, a: Node, b: Node, a_ts: tuple[str, ...], b_ts: tuple[str, ...]
) -> tuple[Tunnel, Tunnel]:
    """Both ends of the tunnel between ``a`` and ``b``; ``*_ts`` is what each end protects.

    The parts the ends share (id, auth, policy settings) are computed once for the pair.
    """
    ra, rb = _reach(a), _reach(b)
    source = policy_source(policy.metadata.name)
    tid = tunnel_id(source, ra.name, rb.name)
    auth = _auth(policy, tid)
    return (
        _end(policy, source, tid, auth, ra, rb, a_ts, b_ts),
        _end(policy, source, tid, auth, rb, ra, b_ts, a_ts),
    )


def node_end(
    policy: MeshPolicy, local: Node, peer: Node, local_ts: tuple[str, ...], remote_ts: tuple[str, ...]
) -> Tunnel:
    """``local``'s end of its tunnel with ``peer``; the two ends always agree (same id and auth,
    exactly one initiator) because each is derived from the unordered pair alone."""
    rl, rp = _reach(local), _reach(peer)
    source = policy_source(policy.metadata.name)
    tid = tunnel_id(source, rl.name, rp.name)
    return _end(policy, source, tid, _auth(policy, tid), rl, rp, local_ts, remote_ts)


def _auth(policy: MeshPolicy, tid: str) -> AuthRef:
    auth = policy.spec.auth
    if auth.method is AuthMethod.PSK:
        return AuthRef(AuthMethod.PSK, f"{tid}.g{auth.psk_generation}")
    return _CERTIFICATE


def _end(
    policy: MeshPolicy,
    source: str,
    tid: str,
    auth: AuthRef,
    local: _Reach,
    peer: _Reach,
    local_ts: tuple[str, ...],
    remote_ts: tuple[str, ...],
) -> Tunnel:
    spec = policy.spec
    crypto = spec.crypto
    lep, rep, initiator = _underlay(local, peer)
    if spec.mode is Mode.TRANSPORT:
        # Transport mode protects exactly the IKE endpoints, as each end sees them (NAT may
        # make the two views differ, so each end uses its own).
        local_ts, remote_ts = _host_strs(lep), _host_strs(rep)
    child = ChildSA(
        policy.metadata.name,
        local_ts,
        remote_ts,
        crypto.esp_proposals,
        spec.mode,
        spec.protocol,
        crypto.child_lifetime_s,
    )
    return Tunnel(
        tid,
        source,
        local.name,
        peer.name,
        PeerKind.NODE,
        lep,
        rep,
        local.ike_id,
        peer.ike_id,
        auth,
        crypto.ike_proposals,
        crypto.ike_lifetime_s,
        crypto.dpd,
        initiator,
        spec.start_action if initiator else StartAction.NONE,
        (child,),
    )


_CERTIFICATE = AuthRef(AuthMethod.CERTIFICATE)


@functools.lru_cache(maxsize=1 << 16)
def _host_strs(addresses: tuple[str, ...]) -> tuple[str, ...]:
    return prefix_selectors([ip_network(a) for a in addresses])


def external_tunnel(eg: ExternalGateway, node: Node, local_ts: tuple[str, ...]) -> Tunnel:
    """A site gateway's tunnel to a third-party gateway; the gateway side always initiates
    because cloud gateways typically only respond until the first exchange."""
    spec = eg.spec
    source = gateway_source(eg.metadata.name)
    ep = node.spec.endpoints
    child = ChildSA(
        eg.metadata.name,
        local_ts,
        prefix_selectors(spec.prefixes),
        spec.crypto.esp_proposals,
        Mode.TUNNEL,
        IpsecProtocol.ESP,
        spec.crypto.child_lifetime_s,
    )
    return Tunnel(
        id=tunnel_id(source, node.metadata.name, eg.metadata.name),
        source=source,
        local_node=node.metadata.name,
        peer=eg.metadata.name,
        peer_kind=PeerKind.EXTERNAL_GATEWAY,
        local_endpoints=_strs(ep.private or ep.public),
        remote_endpoints=(str(spec.address),),
        local_ike_id=node.spec.identity.ike_id,
        remote_ike_id=spec.ike_id,
        auth=AuthRef(AuthMethod.PSK, f"secret/{spec.psk_secret_ref}"),
        ike_proposals=spec.crypto.ike_proposals,
        ike_lifetime_s=spec.crypto.ike_lifetime_s,
        dpd=spec.crypto.dpd,
        initiator=True,
        start_action=spec.start_action,
        children=(child,),
    )
