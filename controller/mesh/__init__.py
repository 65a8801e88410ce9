"""Mesh computation: resources to per-node desired tunnels, incrementally (see index.py)."""

from meshsec.controller.mesh.index import Change, Delete, MeshIndex, Upsert, desired_state
from meshsec.controller.mesh.model import AuthRef, ChildSA, NodeDelta, PeerKind, Tunnel
from meshsec.controller.mesh.tunnels import tunnel_id

__all__ = [
    "AuthRef",
    "Change",
    "ChildSA",
    "Delete",
    "MeshIndex",
    "NodeDelta",
    "PeerKind",
    "Tunnel",
    "Upsert",
    "desired_state",
    "tunnel_id",
]
