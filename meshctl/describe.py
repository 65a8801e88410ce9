"""``meshctl describe``: one object in full, with its tunnels, recent events and last errors."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import yaml

from meshsec.meshctl.convert import iso, struct_to_dict
from meshsec.meshctl.events import event_type
from meshsec.meshctl.printable import printable
from meshsec.meshctl.table import Column, render
from meshsec.meshctl.views import (
    backend_name,
    established_since,
    human_bytes,
    labels_text,
    state_name,
    tunnel_ends,
    tunnel_row,
)
from meshsec.v1 import admin_pb2, common_pb2


def _block(title: str, body: Any) -> list[str]:
    if not body:
        return [f"{title}:  <none>"]
    text = yaml.safe_dump(body, sort_keys=False, default_flow_style=False).rstrip("\n")
    return [f"{title}:"] + ["  " + line for line in text.splitlines()]


def describe_resource(
    resource: common_pb2.Resource,
    *,
    tunnels: Sequence[admin_pb2.TunnelInfo],
    events: Sequence[admin_pb2.Event],
    node: admin_pb2.TopologyNode | None = None,
    now: datetime | None = None,
    warnings: Sequence[str] = (),
    extra: Sequence[str] = (),
) -> str:
    meta = resource.metadata
    lines = [
        f"Name:         {meta.name}",
        f"Kind:         {resource.kind}",
        f"Labels:       {labels_text(meta.labels)}",
        f"Annotations:  {labels_text(meta.annotations)}",
        f"Created:      {iso(meta.creation_time) or '-'}",
        f"Generation:   {meta.generation}",
        f"Version:      {meta.resource_version or '-'}",
    ]
    if node is not None:
        lines += [
            f"Online:       {'yes' if node.online else 'no'}",
            f"Last seen:    {iso(node.last_seen) or 'never'}",
            f"Data plane:   {backend_name(node.dataplane_backend)}",
            f"Agent:        {node.agent_version or '-'}",
        ]
    lines += [f"Warning:      {w}" for w in warnings]
    lines += _block("Spec", struct_to_dict(resource.spec))
    lines += _block("Status", struct_to_dict(resource.status) if resource.HasField("status") else {})
    lines += list(extra)
    if resource.kind not in ("RemoteAccessPool", "RemoteAccessUser"):  # these have no tunnels
        lines += _tunnels_section(tunnels, now)
        lines += _errors_section(tunnels)
    lines += _events_section(events)
    return _text(lines)


def _text(lines: list[str]) -> str:
    """Every line holds controller-supplied text; a newline inside one is escaped too."""
    return "".join(printable(line) + "\n" for line in lines)


def describe_tunnel(info: admin_pb2.TunnelInfo, *, events: Sequence[admin_pb2.Event]) -> str:
    since = established_since(info)
    lines = [
        f"Tunnel:       {info.tunnel_id}",
        f"Ends:         {tunnel_ends(info)}",
        f"Policy:       {info.policy}",
        f"State:        {state_name(info.state)}",
        f"Established:  {iso(since) if since is not None else '-'}",
    ]
    desired = info.desired
    lines += [
        f"IKE:          {', '.join(desired.ike_proposals) or '-'}",
        f"ESP:          {', '.join(desired.esp_proposals) or '-'}",
        f"Auth:         {desired.auth.WhichOneof('method') or '-'}",
    ]
    for child in desired.children:
        local = ",".join(ts.cidr for ts in child.local_ts)
        remote = ",".join(ts.cidr for ts in child.remote_ts)
        lines.append(f"Child {child.name}:  {local} <=> {remote}")
    for end in info.ends:
        lines.append(f"End {end.name} ({end.site or '-'}, {end.endpoint.address or '?'}):")
        if not end.HasField("status"):
            lines.append("  not reported")
            continue
        status = end.status
        ike = status.ike_sa
        lines.append(
            f"  state {state_name(status.state)}{'  (stale)' if end.stale else ''}, "
            f"reported {iso(end.reported_at) or '-'}"
        )
        if ike.spi_initiator:
            lines.append(
                f"  IKE SA {ike.spi_initiator:016x}_i {ike.spi_responder:016x}_r "
                f"{'initiator' if ike.initiator else 'responder'}, {ike.encryption_algorithm} "
                f"{ike.prf_algorithm} {ike.dh_group}{', NAT' if ike.nat_detected else ''}"
            )
        for child_sa in status.child_sas:
            lines.append(
                f"  CHILD_SA {child_sa.name} {child_sa.spi_in:08x}_i {child_sa.spi_out:08x}_o "
                f"{child_sa.encryption_algorithm} in {human_bytes(child_sa.bytes_in)} "
                f"({child_sa.packets_in} pkts) out {human_bytes(child_sa.bytes_out)} "
                f"({child_sa.packets_out} pkts)"
            )
        if status.last_error.reason:
            lines.append(
                f"  last error: {status.last_error.reason} {status.last_error.message} "
                f"at {iso(status.last_error.at) or '-'}"
            )
    lines += _events_section(events)
    return _text(lines)


def _tunnels_section(tunnels: Sequence[admin_pb2.TunnelInfo], now: datetime | None) -> list[str]:
    if not tunnels:
        return ["Tunnels:      <none>"]
    columns = [Column("TUNNEL"), Column("POLICY"), Column("STATE"), Column("UP"), Column("NAT")]
    table = render(columns, [tunnel_row(t, wide=False, now=now) for t in tunnels])
    return ["Tunnels:"] + ["  " + line for line in table.rstrip("\n").splitlines()]


def _errors_section(tunnels: Sequence[admin_pb2.TunnelInfo]) -> list[str]:
    found = []
    for info in tunnels:
        for end in info.ends:
            err = end.status.last_error if end.HasField("status") else None
            if err is not None and err.reason:
                found.append(
                    f"  {iso(err.at) or '-'}  {end.name} ({tunnel_ends(info)}): {err.reason} {err.message}"
                )
    return ["Last errors:", *found] if found else ["Last errors:  <none>"]


def _events_section(events: Sequence[admin_pb2.Event]) -> list[str]:
    if not events:
        return ["Events:       <none>"]
    lines = ["Events:"]
    for event in events[-15:]:
        lines.append(f"  {iso(event.time) or '-'}  {event_type(event):7}  {event.reason:18}  {event.message}")
    return lines
