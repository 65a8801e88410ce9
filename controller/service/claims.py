"""Which tunnels a node may report status for: the ones in its desired state, checked cheaply.

A node's status report names tunnel ids; one it makes up would be stored, counted as established
and turned into events. `desired_tunnels` would settle it but builds every tunnel of the node (10k
in a 10k full mesh, for each of 10k reports per interval), so instead:

- `owns` recomputes the one reported id from the reported peer (`MeshIndex.has_tunnel`): exact,
  because an id is a hash of its source and the pair, and O(policies), not O(tunnels);
- `removed_since` lets the status book skip ids it already checked: a node's slice version changes
  with every change to its desired state, and the slice's history says which ids went away since
  an earlier version, so only new ids and removed ones need `owns` again.
"""

from __future__ import annotations

from collections.abc import Collection

from meshsec.controller.service.state import MeshState


class MeshClaims:
    def __init__(self, state: MeshState) -> None:
        self._state = state

    def version(self, node: str) -> int:
        return self._state.version(node)

    def removed_since(self, node: str, version: int) -> Collection[str] | None:
        """Ids removed from ``node``'s desired state after ``version``; None when the history no
        longer reaches back that far (after a rebase, or more changes than it keeps)."""
        updates = self._state.catch_up(node, version)
        if updates is None:
            return None
        return {tid for update in updates for tid in update.removals}

    def owns(self, node: str, tunnel_id: str, peer: str) -> bool:
        return self._state.index.has_tunnel(node, tunnel_id, peer)
