"""Per-node desired state: tunnels (IKE SAs with their CHILD_SAs) and deltas between versions.

A Tunnel is written from one node's point of view (``local_*`` is that node). Both ends of a
node-to-node tunnel share its ``id``, which is stable: a digest of the policy and the node pair,
so any controller replica computes the same id for the same pair.

AuthRef, ChildSA, Tunnel and NodeDelta are NamedTuples rather than frozen dataclasses: equally
immutable (and mypy-checked as such), but a full-mesh join builds two tunnels and a delta per
member, and a frozen dataclass's __init__ (one object.__setattr__ per field) was measured at 5x
the cost of a tuple's.
"""

from __future__ import annotations

import enum
from typing import NamedTuple

from meshsec.controller.resources.model import AuthMethod, Dpd, IpsecProtocol, Mode, StartAction


class PeerKind(enum.Enum):
    NODE = "node"
    EXTERNAL_GATEWAY = "external-gateway"


class AuthRef(NamedTuple):
    """How the IKE_AUTH exchange authenticates; never carries key material.

    certificate: both sides present certificates from the controller CA, named by their IKE IDs.
    psk: ``psk_id`` names the key. Mesh keys are derived per pair by the controller
    (`meshsec.controller.resources.psk.derive_pair_psk`); external ones are ``secret/<name>``.
    """

    method: AuthMethod
    psk_id: str = ""


class ChildSA(NamedTuple):
    name: str
    local_ts: tuple[str, ...]  # TSi when this side initiates: CIDR strings, sorted
    remote_ts: tuple[str, ...]
    proposals: tuple[str, ...]  # ESP or AH proposals, strongSwan style; a dh group means PFS
    mode: Mode
    protocol: IpsecProtocol
    lifetime_s: int


class Tunnel(NamedTuple):
    id: str
    source: str  # the resource that asked for it: "MeshPolicy/<name>" or "ExternalGateway/<name>"
    local_node: str
    peer: str  # a Node name or an ExternalGateway name, see peer_kind
    peer_kind: PeerKind
    local_endpoints: tuple[str, ...]  # candidate IKE source addresses, preferred first
    remote_endpoints: tuple[str, ...]  # candidate peer addresses, preferred first
    local_ike_id: str
    remote_ike_id: str
    auth: AuthRef
    ike_proposals: tuple[str, ...]
    ike_lifetime_s: int
    dpd: Dpd
    initiator: bool  # exactly one end of a node pair initiates
    start_action: StartAction
    children: tuple[ChildSA, ...]


class NodeDelta(NamedTuple):
    """What changed for one node: apply removals, then upserts (replace by id).

    ``base_version`` is the version the delta applies to; a receiver at another version must
    fetch the full list (`MeshIndex.desired_tunnels`) instead.
    """

    node: str
    base_version: int
    version: int
    upserts: tuple[Tunnel, ...]  # sorted by id
    removals: tuple[str, ...]  # tunnel ids, sorted

    def __bool__(self) -> bool:
        return bool(self.upserts or self.removals)
