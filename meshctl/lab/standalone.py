"""Interim agents: standalone ``meshsec-agent --config`` files derived from the controller's tunnels.

Used while ``meshsec-agent`` has no controller-connected mode. The controller computes every
tunnel (ends, endpoints, identities, proposals, traffic selectors, who initiates); ListTunnels
returns each from its first end's point of view, and this module writes that end's connection
and the mirror image for the other end. Admin responses never carry keys, so the lab picks the
PSKs itself: a random one per node pair (standing in for certificate auth too: these agents
never enroll, so they have no node certificates) and the external gateway's PSK, which it also
gives charon.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from meshsec.common.secrets import Secret
from meshsec.v1 import admin_pb2, agent_pb2, common_pb2

DEFAULT_ESP = ["aes256gcm16", "aes128-sha256"]


@dataclass(frozen=True)
class NodeAddresses:
    name: str
    bind: str  # where its agent binds IKE (the private address)
    public: tuple[str, ...]  # where peers reach it; empty behind NAT


class PlanError(ValueError):
    pass


def _child(child: agent_pb2.ChildConfig, esp: Sequence[str], *, mirror: bool) -> dict[str, Any]:
    local = [ts.cidr for ts in (child.remote_ts if mirror else child.local_ts)]
    remote = [ts.cidr for ts in (child.local_ts if mirror else child.remote_ts)]
    body: dict[str, Any] = {"local_ts": local, "remote_ts": remote, "esp_proposals": list(esp) or DEFAULT_ESP}
    if child.mode == common_pb2.MODE_TRANSPORT:
        body["mode"] = "transport"
    if child.lifetimes.soft_seconds:
        body["rekey_time"] = int(child.lifetimes.soft_seconds)
        body["life_time"] = int(child.lifetimes.hard_seconds or child.lifetimes.soft_seconds * 1.1)
    return body


def _connection(
    desired: agent_pb2.DesiredTunnel, *, mirror: bool, local: str, remote: Sequence[str], psk: Secret
) -> dict[str, Any]:
    initiate = desired.initiator != mirror
    if initiate and not remote:
        raise PlanError(f"tunnel {desired.tunnel_id}: the initiating end has no address to reach its peer at")
    ids = (
        (desired.remote_id.value, desired.local_id.value)
        if mirror
        else (desired.local_id.value, desired.remote_id.value)
    )
    return {
        "local_addrs": [local],
        "remote_addrs": list(remote),
        "local": {"id": ids[0]},
        "remote": {"id": ids[1]},
        "psk": "0x" + psk.reveal().hex(),
        "proposals": list(desired.ike_proposals),
        "start_action": "initiate" if initiate else "wait",
        "encap": bool(desired.force_udp_encapsulation),
        "children": {
            c.name or "net": _child(c, desired.esp_proposals, mirror=mirror) for c in desired.children
        },
    }


def agent_configs(
    tunnels: Sequence[admin_pb2.TunnelInfo],
    nodes: Mapping[str, NodeAddresses],
    psks: Mapping[str, Secret],
    status_dir: Path,
    dataplane: str = "auto",
) -> dict[str, dict[str, Any]]:
    """One standalone config document per node; ``psks`` is keyed by tunnel id."""
    configs: dict[str, dict[str, Any]] = {
        name: {
            "agent": {
                "status_socket": str(status_dir / f"{name}.sock"),
                "bind": [node.bind],
                "dataplane": dataplane,
                "log_level": "info",
            },
            "connections": {},
        }
        for name, node in nodes.items()
    }
    for info in tunnels:
        desired = info.desired
        first = info.ends[0].name
        if first not in nodes:
            raise PlanError(f"tunnel {info.tunnel_id}: node {first} is not part of the lab")
        psk = psks[info.tunnel_id]
        if desired.peer_kind == common_pb2.PEER_KIND_EXTERNAL_GATEWAY:
            remote = [e.address for e in desired.remote_endpoints]
            configs[first]["connections"][info.tunnel_id] = _connection(
                desired, mirror=False, local=nodes[first].bind, remote=remote, psk=psk
            )
            continue
        second = desired.peer_name
        if second not in nodes:
            raise PlanError(f"tunnel {info.tunnel_id}: node {second} is not part of the lab")
        configs[first]["connections"][info.tunnel_id] = _connection(
            desired, mirror=False, local=nodes[first].bind, remote=nodes[second].public, psk=psk
        )
        configs[second]["connections"][info.tunnel_id] = _connection(
            desired, mirror=True, local=nodes[second].bind, remote=nodes[first].public, psk=psk
        )
    return {name: doc for name, doc in configs.items() if doc["connections"]}


def write_secret(path: Path, text: str) -> None:
    """Mode 0600 from the moment the file exists (PSKs, bootstrap tokens)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


def write_config(path: Path, document: Mapping[str, Any]) -> None:
    write_secret(path, yaml.safe_dump(dict(document), sort_keys=False))


def tunnel_states(status: Mapping[str, Any]) -> dict[str, str]:
    """``meshsec-agent`` status document -> {connection name (tunnel id): IKE SA state}.

    ESTABLISHED only when a CHILD_SA is installed as well, since that is what carries traffic.
    """
    states: dict[str, str] = {}
    for sa in status.get("ike_sas", []):
        if not isinstance(sa, Mapping):
            continue
        name, state = str(sa.get("name", "")), str(sa.get("state", "")).upper()
        if state == "ESTABLISHED" and not sa.get("child_sas"):
            state = "CONNECTING"
        if states.get(name) != "ESTABLISHED":
            states[name] = state
    return states
