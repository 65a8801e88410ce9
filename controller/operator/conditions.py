"""Status for a custom resource: the controller manifest it maps to and its Ready condition."""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from meshsec.controller.resources import FieldError, Kind

READY = "Ready"
# Kubernetes caps a condition message at 32768 bytes; a long error list is cut well before that.
MAX_MESSAGE = 4000


def manifest(kind: Kind, body: Mapping[str, Any]) -> dict[str, Any]:
    """What the controller gets: identity, labels and spec. Kubernetes' own metadata (uid,
    annotations, finalizers) and status stay in the cluster."""
    meta = body.get("metadata") or {}
    out: dict[str, Any] = {
        "apiVersion": body.get("apiVersion"),
        "kind": kind.value,
        "metadata": {"name": meta.get("name")},
        "spec": dict(body.get("spec") or {}),
    }
    if meta.get("labels"):
        out["metadata"]["labels"] = dict(meta["labels"])
    return out


def field_problems(errors: Iterable[FieldError], kind: Kind, name: str) -> tuple[str, ...]:
    """``field.path: reason``; a problem that belongs to another resource names it."""
    out = []
    for e in errors:
        text = f"{e.path}: {e.reason}" if e.path else e.reason
        out.append(text if (e.kind, e.name) in ((kind.value, name), (kind.value, "")) else f"{e}")
    return tuple(out)


def join_problems(problems: Sequence[str]) -> str:
    text = "; ".join(problems)
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 20] + f" ... ({len(problems)} problems)"


def with_ready(
    previous: object,
    status: str,
    reason: str,
    message: str,
    generation: int,
    now: datetime.datetime,
) -> list[dict[str, Any]]:
    """The conditions list with Ready replaced; its lastTransitionTime moves only when its status
    does, so a resync that finds nothing new leaves the object as it was."""
    conditions = [dict(c) for c in previous if isinstance(c, Mapping)] if isinstance(previous, list) else []
    old = next((c for c in conditions if c.get("type") == READY), None)
    since = old.get("lastTransitionTime") if old and old.get("status") == status else None
    ready = {
        "type": READY,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since or now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "observedGeneration": generation,
    }
    return [c for c in conditions if c.get("type") != READY] + [ready]


def node_phase(online: bool, last_seen: str) -> str:
    """Online: its agent reported within the heartbeat interval; Offline: it did before;
    Pending: no agent has reported for it yet (not enrolled, or enrolled and not connected)."""
    if online:
        return "Online"
    return "Offline" if last_seen else "Pending"
