"""What each kind looks like as a table row, and the json/yaml documents scripts read.

Tables are for people and may change; ``-o json`` / ``-o yaml`` are the stable interface: resources
in the same Kubernetes shape ``apply`` reads, tunnels as the API's TunnelInfo in JSON mapping
(camelCase, enum names), lists wrapped as ``{"kind": "List", "items": [...]}``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import yaml

from meshsec.meshctl.convert import message_to_dict, resource_to_dict, struct_to_dict, timestamp
from meshsec.meshctl.kinds import GATEWAY, NODE, POLICY, POOL, SITE, USER, Kind
from meshsec.meshctl.table import Cell, Column, Styled
from meshsec.v1 import admin_pb2, agent_pb2, common_pb2

STATE_COLOURS = {
    "ESTABLISHED": "green",
    "REKEYING": "green",
    "CONNECTING": "yellow",
    "FAILED": "red",
    "DOWN": "grey",
    "DELETING": "grey",
}


def state_name(state: int) -> str:
    name = common_pb2.TunnelState.Name(state) if state in common_pb2.TunnelState.values() else ""
    short = name.removeprefix("TUNNEL_STATE_")
    return "DOWN" if short in ("", "UNSPECIFIED") else short


def styled_state(state: int) -> Styled:
    name = state_name(state)
    return Styled(name, STATE_COLOURS.get(name, ""))


def backend_name(backend: int) -> str:
    name = agent_pb2.DataplaneBackend.Name(backend) if backend in agent_pb2.DataplaneBackend.values() else ""
    return {"DATAPLANE_BACKEND_KERNEL_XFRM": "kernel", "DATAPLANE_BACKEND_USERSPACE": "userspace"}.get(
        name, "-"
    )


def age(ts: Any, now: datetime | None = None) -> str:
    when = timestamp(ts) if ts is not None else None
    if when is None:
        return "-"
    seconds = int(((now or datetime.now(UTC)) - when).total_seconds())
    return duration(seconds)


def duration(seconds: int) -> str:
    """kubectl-style ages: 45s, 12m, 5h, 3d (two units while short enough to matter)."""
    seconds = max(seconds, 0)
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes}m{seconds % 60}s" if minutes < 10 and seconds % 60 else f"{minutes}m"
    hours = minutes // 60
    if hours < 48:
        return f"{hours}h{minutes % 60}m" if hours < 10 and minutes % 60 else f"{hours}h"
    return f"{hours // 24}d"


def selector_text(selector: Any) -> str:
    """``{matchLabels: {a: b}, matchExpressions: [...]}`` in kubectl's ``a=b,k in (x,y)`` form."""
    if not isinstance(selector, Mapping):
        return "-" if selector in (None, {}) else str(selector)
    parts = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for expr in selector.get("matchExpressions") or []:
        if not isinstance(expr, Mapping):
            continue
        key, op = expr.get("key", "?"), str(expr.get("operator", ""))
        values = ",".join(str(v) for v in expr.get("values") or [])
        parts.append(
            {
                "In": f"{key} in ({values})",
                "NotIn": f"{key} notin ({values})",
                "Exists": key,
                "DoesNotExist": f"!{key}",
            }.get(op, f"{key} {op} ({values})")
        )
    return ",".join(parts) or "(all)"


def joined(values: Any) -> str:
    if isinstance(values, list):
        return ",".join(str(v) for v in values) or "-"
    return "-" if values in (None, "") else str(values)


def labels_text(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "-"


# -- resources --------------------------------------------------------------------------------


def _pool_row(spec: Mapping[str, Any], name: str, created: str, ike: str, wide: bool) -> list[Cell]:
    routes = spec.get("routes") if isinstance(spec.get("routes"), Mapping) else {}
    auth = spec.get("auth") if isinstance(spec.get("auth"), Mapping) else {}
    assert isinstance(routes, Mapping) and isinstance(auth, Mapping)
    mode = str(routes.get("mode", "-"))
    routed = f"split:{joined(routes.get('prefixes'))}" if mode == "split" else mode
    gateways = selector_text(spec.get("gateways"))
    row: list[Cell] = [name, joined(spec.get("addresses")), routed, gateways, created]
    return row + ([joined(spec.get("dns")), joined(auth.get("methods")), ike] if wide else [])


def resource_columns(kind: Kind, wide: bool) -> list[Column]:
    base: dict[str, list[Column]] = {
        SITE.name: [Column("NAME", False), Column("PREFIXES"), Column("GATEWAYS"), Column("AGE", False)],
        NODE.name: [
            Column("NAME", False),
            Column("SITE", False),
            Column("ENDPOINTS"),
            Column("ONLINE", False),
            Column("BACKEND", False),
            Column("AGE", False),
        ],
        POLICY.name: [
            Column("NAME", False),
            Column("TOPOLOGY", False),
            Column("SCOPE", False),
            Column("MEMBERS"),
            Column("AUTH", False),
            Column("AGE", False),
        ],
        GATEWAY.name: [
            Column("NAME", False),
            Column("ADDRESS", False),
            Column("PREFIXES"),
            Column("SITES"),
            Column("AGE", False),
        ],
        POOL.name: [
            Column("NAME", False),
            Column("ADDRESSES"),
            Column("ROUTES"),
            Column("GATEWAYS"),
            Column("AGE", False),
        ],
        USER.name: [
            Column("NAME", False),
            Column("IDENTITY"),
            Column("POOL", False),
            Column("AUTH", False),
            Column("DEVICES"),
            Column("AGE", False),
        ],
    }
    extra: dict[str, list[Column]] = {
        SITE.name: [Column("SELECTOR"), Column("LABELS")],
        NODE.name: [Column("AGENT"), Column("LABELS")],
        POLICY.name: [Column("HUBS"), Column("IKE")],
        GATEWAY.name: [Column("PROFILE", False), Column("IKE")],
        POOL.name: [Column("DNS"), Column("AUTH"), Column("IKE")],
        USER.name: [Column("LABELS")],
    }
    return base[kind.name] + (extra[kind.name] if wide else [])


def resource_row(
    kind: Kind,
    resource: common_pb2.Resource,
    *,
    wide: bool,
    topology: admin_pb2.Topology | None = None,
    now: datetime | None = None,
) -> list[Cell]:
    spec = struct_to_dict(resource.spec)
    name = resource.metadata.name
    created = (
        age(resource.metadata.creation_time, now) if resource.metadata.HasField("creation_time") else "-"
    )
    labels = labels_text(resource.metadata.labels)
    crypto = spec.get("crypto") if isinstance(spec.get("crypto"), Mapping) else {}
    assert isinstance(crypto, Mapping)
    ike = joined(crypto.get("ikeProposals"))
    if kind == SITE:
        site = next((s for s in topology.sites if s.name == name), None) if topology else None
        gateways = ",".join(site.gateways) if site is not None and site.gateways else "-"
        row: list[Cell] = [name, joined(spec.get("prefixes")), gateways, created]
        return row + ([selector_text(spec.get("gatewaySelector")), labels] if wide else [])
    if kind == NODE:
        node = next((n for n in topology.nodes if n.name == name), None) if topology else None
        endpoints = spec.get("endpoints") if isinstance(spec.get("endpoints"), Mapping) else {}
        assert isinstance(endpoints, Mapping)
        addresses = [str(a) for scope in ("public", "private") for a in endpoints.get(scope) or []]
        if node is None:
            online: Cell = "-"
        else:
            online = Styled("yes", "green") if node.online else Styled("no", "red")
        backend = backend_name(node.dataplane_backend) if node is not None else "-"
        row = [name, str(spec.get("site", "-")), ",".join(addresses) or "-", online, backend, created]
        agent = node.agent_version if node is not None and node.agent_version else "-"
        return row + ([agent, labels] if wide else [])
    if kind == POLICY:
        auth = spec.get("auth") if isinstance(spec.get("auth"), Mapping) else {}
        assert isinstance(auth, Mapping)
        hubs = spec.get("hubs") if isinstance(spec.get("hubs"), Mapping) else {}
        assert isinstance(hubs, Mapping)
        row = [
            name,
            str(spec.get("topology", "-")),
            str(spec.get("scope", "-")),
            selector_text(spec.get("members")),
            str(auth.get("method", "-")),
            created,
        ]
        return row + ([selector_text(hubs.get("selector")) if hubs else "-", ike] if wide else [])
    if kind == POOL:
        return _pool_row(spec, name, created, ike, wide)
    if kind == USER:
        auth = spec.get("auth") if isinstance(spec.get("auth"), Mapping) else {}
        assert isinstance(auth, Mapping)
        listed = [d for d in spec.get("devices") or [] if isinstance(d, Mapping)]
        devices = [f"{d.get('name')}({d.get('platform')})" for d in listed]
        row = [
            name,
            str(spec.get("identity", "-")),
            str(spec.get("pool", "-")),
            str(auth.get("method", "-")),
            ",".join(devices) or "-",
            created,
        ]
        return row + ([labels] if wide else [])
    row = [
        name,
        str(spec.get("address", "-")),
        joined(spec.get("prefixes")),
        joined(spec.get("sites")),
        created,
    ]
    return row + ([str(spec.get("profile", "-")), ike] if wide else [])


# -- tunnels ----------------------------------------------------------------------------------


def tunnel_columns(wide: bool) -> list[Column]:
    base = [
        Column("TUNNEL"),
        Column("POLICY"),
        Column("STATE", False),
        Column("UP", False),
        Column("NAT", False),
    ]
    extra = [Column("ID"), Column("ENDPOINTS"), Column("ESP"), Column("IN/OUT"), Column("LAST ERROR")]
    return base + (extra if wide else [])


def tunnel_ends(info: admin_pb2.TunnelInfo) -> str:
    names = [e.name for e in info.ends]
    return " <-> ".join(names) if names else info.tunnel_id


def established_since(info: admin_pb2.TunnelInfo) -> Any:
    """The earliest IKE SA establishment any end reported (protobuf Timestamp), or None."""
    stamps = [
        e.status.ike_sa.established_at
        for e in info.ends
        if e.HasField("status") and e.status.ike_sa.HasField("established_at")
    ]
    return min(stamps, key=lambda t: (t.seconds, t.nanos)) if stamps else None


def last_error(info: admin_pb2.TunnelInfo) -> str:
    errors = [
        (e.name, e.status.last_error)
        for e in info.ends
        if e.HasField("status") and e.status.HasField("last_error") and e.status.last_error.reason
    ]
    return "; ".join(f"{name}: {err.reason} {err.message}".strip() for name, err in errors) or "-"


def human_bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{count}B"


def tunnel_row(info: admin_pb2.TunnelInfo, *, wide: bool, now: datetime | None = None) -> list[Cell]:
    since = established_since(info)
    up = (
        age(since, now)
        if since is not None and state_name(info.state) in ("ESTABLISHED", "REKEYING")
        else "-"
    )
    nat = any(e.HasField("status") and e.status.ike_sa.nat_detected for e in info.ends)
    row: list[Cell] = [
        tunnel_ends(info),
        info.policy or "-",
        styled_state(info.state),
        up,
        "yes" if nat else "-",
    ]
    if not wide:
        return row
    endpoints = " <-> ".join(e.endpoint.address or "?" for e in info.ends) or "-"
    first = next((e.status for e in info.ends if e.HasField("status") and e.status.child_sas), None)
    esp = "-"
    traffic = "-"
    if first is not None:
        child = first.child_sas[0]
        esp = f"{child.spi_in:08x}/{child.spi_out:08x} {child.encryption_algorithm}".strip()
        traffic = f"{human_bytes(sum(c.bytes_in for c in first.child_sas))}/" + human_bytes(
            sum(c.bytes_out for c in first.child_sas)
        )
    err = last_error(info)
    return [*row, info.tunnel_id, endpoints, esp, traffic, Styled(err, "red") if err != "-" else err]


# -- machine-readable output ------------------------------------------------------------------


def as_list(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return {"kind": "List", "items": list(items)}


def dump(document: Any, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(document, indent=2, sort_keys=False) + "\n"
    return yaml.safe_dump(document, sort_keys=False, default_flow_style=False)


def resource_document(resources: Sequence[common_pb2.Resource], single: bool) -> Any:
    items = [resource_to_dict(r) for r in resources]
    return items[0] if single and len(items) == 1 else as_list(items)


def tunnel_document(tunnels: Sequence[admin_pb2.TunnelInfo], single: bool) -> Any:
    items = [message_to_dict(t) for t in tunnels]
    return items[0] if single and len(items) == 1 else as_list(items)
