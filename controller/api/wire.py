"""DesiredTunnel messages assembled from cached serialized parts.

A full-mesh join sends each of N agents one DesiredTunnel that differs from the others' only in
which two nodes it joins, and building it field by field (with an IKE identity type guessed
twice per tunnel) cost more controller CPU than computing the tunnel. Serialized protobuf
messages of one type concatenate into their merge, so a tunnel's bytes are the concatenation of
parts serialized once per policy (proposals, lifetimes, DPD), per node as either end (endpoints,
IKE identity) and per traffic selector set; only the pair's own fields (id, initiator, PSK) are
encoded per tunnel. Every field is in exactly one part, so the result is byte for byte the size
of the field-by-field message. `convert.desired_tunnel` remains the reference that
tests/controller/test_api_wire.py compares against.
"""

from __future__ import annotations

import functools
from collections.abc import Hashable, Iterable

from meshsec.controller.api.convert import PskLookup, child_template, identity, tunnel_template
from meshsec.controller.mesh import AuthRef, ChildSA, Tunnel
from meshsec.controller.resources.model import AuthMethod, StartAction
from meshsec.v1 import agent_pb2, common_pb2

_TUNNEL = agent_pb2.DesiredTunnel.DESCRIPTOR.fields_by_name
_UPDATE = agent_pb2.DesiredStateUpdate.DESCRIPTOR.fields_by_name
_LEN, _VARINT = 2, 0


def varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def delimited(number: int, payload: bytes) -> bytes:
    """A length-delimited field (string, bytes or message) with its key."""
    return _key(number) + _length(payload) + payload


@functools.cache
def _key(number: int) -> bytes:
    return varint(number << 3 | _LEN)


def _length(payload: bytes) -> bytes:
    n = len(payload)
    return _SHORT[n] if n < 0x80 else varint(n)


_SHORT = [bytes((n,)) for n in range(0x80)]
_TUNNEL_ID = _key(_TUNNEL["tunnel_id"].number)
_CHILDREN = _key(_TUNNEL["children"].number)
_INITIATOR = varint(_TUNNEL["initiator"].number << 3 | _VARINT) + b"\x01"
_GENERATION = varint(_TUNNEL["generation"].number << 3 | _VARINT)
UPSERTED_TUNNELS = _UPDATE["upserted_tunnels"].number
MORE = varint(_UPDATE["more"].number << 3 | _VARINT) + b"\x01"
_CERTIFICATE = agent_pb2.DesiredTunnel(
    auth=agent_pb2.TunnelAuth(certificate=agent_pb2.CertificateAuth())
).SerializeToString()


class TunnelEncoder:
    """Serialized DesiredTunnels for one PSK source; `psk` None: the key is left empty."""

    # Parts are keyed by content, so a stale entry is merely unused; the bound keeps memory
    # linear in the nodes (a few parts per node) whatever the churn.
    MAX_PARTS = 1 << 17

    def __init__(self, psk: PskLookup | None) -> None:
        self._psk = psk
        self._parts: dict[Hashable, bytes] = {}
        # The policy-wide part of the last tunnel: consecutive tunnels nearly always share it.
        self._last_shared: tuple[object, ...] = ()
        self._last_shared_bytes = b""
        self._generation = (0, b"")

    def encode(self, tunnel: Tunnel, peer_site: str, generation: int) -> bytes:
        parts = [
            self._shared(tunnel),
            self._local(tunnel),
            self._remote(tunnel, peer_site),
            _TUNNEL_ID + _length(tid := tunnel.id.encode()) + tid,
            self._auth(tunnel.auth),
        ]
        for child in tunnel.children:
            payload = self._child(child, tunnel.start_action)
            parts += (_CHILDREN, _length(payload), payload)
        if tunnel.initiator:
            parts.append(_INITIATOR)
        if generation:
            if generation != self._generation[0]:
                self._generation = (generation, _GENERATION + varint(generation))
            parts.append(self._generation[1])
        return b"".join(parts)

    def _shared(self, t: Tunnel) -> bytes:
        esp = t.children[0].proposals if t.children else ()
        key = (t.source, t.peer_kind, t.ike_proposals, esp, t.ike_lifetime_s, t.dpd)
        # Tuple equality tries identity first, element by element, so for the tunnels of one
        # policy (which share these objects) this costs no hashing and no dataclass __eq__.
        if key != self._last_shared:
            self._last_shared = key
            self._last_shared_bytes = tunnel_template(*key).SerializeToString()
        return self._last_shared_bytes

    def _local(self, t: Tunnel) -> bytes:
        key = ("local", t.local_endpoints[:1], t.local_ike_id)
        hit = self._parts.get(key)
        if hit is None:
            message = agent_pb2.DesiredTunnel(local_id=identity(t.local_ike_id))
            if t.local_endpoints:
                message.local_endpoint.address = t.local_endpoints[0]
            hit = self._remember(key, message.SerializeToString())
        return hit

    def _remote(self, t: Tunnel, peer_site: str) -> bytes:
        key = ("remote", t.peer, peer_site, t.remote_endpoints, t.remote_ike_id)
        hit = self._parts.get(key)
        if hit is None:
            message = agent_pb2.DesiredTunnel(
                peer_name=t.peer, peer_site=peer_site, remote_id=identity(t.remote_ike_id)
            )
            for address in t.remote_endpoints:
                message.remote_endpoints.add(address=address)
            hit = self._remember(key, message.SerializeToString())
        return hit

    def _child(self, child: ChildSA, start: StartAction) -> bytes:
        key = ("child", child.name, child.mode, child.protocol, child.lifetime_s, start)
        shared = self._parts.get(key)
        if shared is None:
            message = child_template(child.name, child.mode, child.protocol, child.lifetime_s, start)
            shared = self._remember(key, message.SerializeToString())
        local = self._selectors("local_ts", child.local_ts)
        return shared + local + self._selectors("remote_ts", child.remote_ts)

    def _selectors(self, field: str, cidrs: tuple[str, ...]) -> bytes:
        key = (field, cidrs)
        hit = self._parts.get(key)
        if hit is None:
            message = agent_pb2.ChildConfig()
            getattr(message, field).extend(common_pb2.TrafficSelector(cidr=c) for c in cidrs)
            hit = self._remember(key, message.SerializeToString())
        return hit

    def _auth(self, auth: AuthRef) -> bytes:
        if auth.method is not AuthMethod.PSK:
            return _CERTIFICATE
        key = self._psk(auth.psk_id) if self._psk is not None else None
        message = agent_pb2.DesiredTunnel()
        message.auth.psk.key = key.reveal() if key is not None else b""
        return message.SerializeToString()

    def _remember(self, key: Hashable, value: bytes) -> bytes:
        if len(self._parts) >= self.MAX_PARTS:
            self._parts.clear()
        self._parts[key] = value
        return value


def split_update(head: bytes, first: bytes, tunnels: Iterable[bytes], limit: int) -> list[bytes]:
    """DesiredStateUpdate messages: `head` (version and kind) starts each, `first` (node config,
    removals) follows it in the first, then the serialized tunnels wrapped as upserted_tunnels,
    as many per message as fit in `limit` bytes (at least one); all but the last say `more`."""
    chunks = [[head, first]]
    size = len(head) + len(first)
    carries = False
    for tunnel in tunnels:
        field = delimited(UPSERTED_TUNNELS, tunnel)
        if carries and size + len(field) + len(MORE) > limit:
            chunks[-1].append(MORE)
            chunks.append([head])
            size = len(head)
        chunks[-1].append(field)
        size += len(field)
        carries = True
    return [b"".join(chunk) for chunk in chunks]
