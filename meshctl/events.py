"""Controller events as table rows and JSON lines."""

from __future__ import annotations

import json
from typing import Any

from meshsec.meshctl.convert import iso, message_to_dict
from meshsec.meshctl.printable import printable
from meshsec.meshctl.table import Cell, Column, Styled
from meshsec.v1 import admin_pb2

EVENT_COLUMNS = [
    Column("TIME", False),
    Column("TYPE", False),
    Column("REASON", False),
    Column("OBJECT"),
    Column("MESSAGE"),
]


def event_type(event: admin_pb2.Event) -> str:
    return {admin_pb2.EVENT_TYPE_WARNING: "Warning", admin_pb2.EVENT_TYPE_NORMAL: "Normal"}.get(
        event.type, "-"
    )


def event_row(event: admin_pb2.Event) -> list[Cell]:
    kind = event_type(event)
    involved = f"{event.involved.kind.lower()}/{event.involved.name}" if event.involved.name else "-"
    return [
        iso(event.time) or "-",
        Styled(kind, "yellow" if kind == "Warning" else ""),
        event.reason,
        involved,
        event.message,
    ]


def event_line(event: admin_pb2.Event) -> str:
    """One event as a single line (``events --watch`` prints as they come, no table to align)."""
    cells = [str(c) for c in event_row(event)]
    return printable("  ".join(cells))


def event_json(event: admin_pb2.Event) -> str:
    document: dict[str, Any] = message_to_dict(event)
    return json.dumps(document, sort_keys=True)
