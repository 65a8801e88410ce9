"""The agent's copy of its desired state: applies the watch stream's snapshots and deltas
(docs/api.md, "Desired-state watch") and persists every applied version in the state dir, so a
restarted or headless agent keeps its last known mesh."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError

from meshsec.agent.node.statedir import DESIRED, StateDir
from meshsec.v1 import agent_pb2

log = logging.getLogger(__name__)


class VersionGap(Exception):
    """A delta does not apply to the version we hold: reconnect with resume_from_version."""


@dataclass
class DesiredState:
    version: int = 0
    node: agent_pb2.NodeConfig | None = None
    tunnels: dict[str, agent_pb2.DesiredTunnel] = field(default_factory=dict)

    def to_message(self) -> agent_pb2.DesiredStateUpdate:
        msg = agent_pb2.DesiredStateUpdate(version=self.version, kind=agent_pb2.UPDATE_KIND_SNAPSHOT)
        if self.node is not None:
            msg.node.CopyFrom(self.node)
        msg.upserted_tunnels.extend(self.tunnels[t] for t in sorted(self.tunnels))
        return msg

    @classmethod
    def from_message(cls, msg: agent_pb2.DesiredStateUpdate) -> DesiredState:
        return cls(
            msg.version,
            msg.node if msg.HasField("node") else None,
            {t.tunnel_id: t for t in msg.upserted_tunnels},
        )

    def apply(self, parts: list[agent_pb2.DesiredStateUpdate]) -> None:
        """Applies one complete version (its messages up to the one with more = false)."""
        first = parts[0]
        if any(p.version != first.version or p.kind != first.kind for p in parts):
            raise VersionGap("the messages of one update disagree on version or kind")
        if first.kind == agent_pb2.UPDATE_KIND_SNAPSHOT:
            tunnels: dict[str, agent_pb2.DesiredTunnel] = {}
        elif first.kind == agent_pb2.UPDATE_KIND_DELTA:
            if first.base_version != self.version:
                raise VersionGap(f"delta on version {first.base_version}, but we are at {self.version}")
            tunnels = dict(self.tunnels)
        else:
            raise VersionGap(f"update of unknown kind {first.kind}")
        for part in parts:
            for tid in part.removed_tunnel_ids:
                tunnels.pop(tid, None)
            for tunnel in part.upserted_tunnels:
                tunnels[tunnel.tunnel_id] = tunnel
        if first.HasField("node"):
            self.node = first.node
        self.tunnels = tunnels
        self.version = first.version


class DesiredStore:
    """Persistence of `DesiredState` (a SNAPSHOT message; the file is 0600: it holds PSKs)."""

    def __init__(self, state: StateDir) -> None:
        self.state = state

    def load(self) -> DesiredState:
        data = self.state.read(DESIRED)
        if data is None:
            return DesiredState()
        try:
            return DesiredState.from_message(agent_pb2.DesiredStateUpdate.FromString(data))
        except DecodeError as exc:
            log.warning("ignoring unreadable %s (%s); waiting for a snapshot", DESIRED, exc)
            return DesiredState()

    def save(self, desired: DesiredState) -> None:
        self.state.write(DESIRED, desired.to_message().SerializeToString(deterministic=True))
