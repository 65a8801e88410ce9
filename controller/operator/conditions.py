"""Status for a custom resource: the controller manifest it maps to and its conditions.

``Applied``: the controller holds the resource as written (or why not). ``Ready``: applied and
every tunnel it should have is established (a Node: its agent is online, too); ``Degraded``:
applied, and some tunnel failed or the Node's agent went offline. A resource that is not
applied carries the reason of ``Applied`` in ``Ready`` as well, so ``kubectl get`` shows it.
The counts come from the controller's tunnel status (what the agents reported)."""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from meshsec.controller.resources import FieldError, Kind

APPLIED = "Applied"
# ExternalGateway spec.auth.secretKeyRef: Kubernetes-only, where the PSK lives (operator/psk.py).
SECRET_KEY_REF = "secretKeyRef"
READY = "Ready"
DEGRADED = "Degraded"
# Kubernetes caps a condition message at 32768 bytes; a long error list is cut well before that.
MAX_MESSAGE = 4000


def manifest(kind: Kind, body: Mapping[str, Any]) -> dict[str, Any]:
    """What the controller gets: identity, labels and spec. Kubernetes' own metadata (uid,
    annotations, finalizers) and status stay in the cluster."""
    meta = body.get("metadata") or {}
    spec = dict(body.get("spec") or {})
    if kind is Kind.EXTERNAL_GATEWAY:
        auth = spec.get("auth")
        if isinstance(auth, Mapping) and SECRET_KEY_REF in auth:
            spec["auth"] = {k: v for k, v in auth.items() if k != SECRET_KEY_REF}
    out: dict[str, Any] = {
        "apiVersion": body.get("apiVersion"),
        "kind": kind.value,
        "metadata": {"name": meta.get("name")},
        "spec": spec,
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


@dataclass(frozen=True, slots=True)
class Condition:
    type: str
    status: str  # True, False, Unknown
    reason: str
    message: str


def tunnel_conditions(desired: int, established: int, failed: int, phase: str = "") -> tuple[Condition, ...]:
    """Ready and Degraded of an applied resource from its tunnel counts (and, for a Node, its
    `node_phase`): established/desired in both messages."""
    pending = desired - established - failed
    counts = f"{established}/{desired} tunnels established"
    if failed:
        counts += f", {failed} failed"
    if pending > 0:
        counts += f", {pending} not up yet"
    if phase and phase != "Online":
        why = "its agent has not reported yet" if phase == "Pending" else "its agent stopped reporting"
        reason = "AgentPending" if phase == "Pending" else "AgentOffline"
        ready = Condition(READY, "False", reason, f"{why}; {counts}")
    elif established >= desired:
        ready = Condition(READY, "True", "TunnelsEstablished" if desired else "NoTunnels", counts)
    else:
        ready = Condition(READY, "False", "TunnelsNotEstablished", counts)
    if failed:
        degraded = Condition(DEGRADED, "True", "TunnelsFailed", counts)
    elif phase == "Offline":
        degraded = Condition(DEGRADED, "True", "AgentOffline", f"its agent stopped reporting; {counts}")
    else:
        degraded = Condition(DEGRADED, "False", "NoFailures", counts)
    return ready, degraded


def with_condition(
    previous: object,
    condition: Condition,
    generation: int,
    now: datetime.datetime,
) -> list[dict[str, Any]]:
    """The conditions list with one of that type replaced; its lastTransitionTime moves only when
    its status does, so a resync that finds nothing new leaves the object as it was."""
    conditions = [dict(c) for c in previous if isinstance(c, Mapping)] if isinstance(previous, list) else []
    status, reason, message = condition.status, condition.reason, condition.message
    old = next((c for c in conditions if c.get("type") == condition.type), None)
    since = old.get("lastTransitionTime") if old and old.get("status") == status else None
    ready = {
        "type": condition.type,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since or now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "observedGeneration": generation,
    }
    if old is not None:
        return [ready if c is old else c for c in conditions]
    return [*conditions, ready]


def node_phase(online: bool, last_seen: str) -> str:
    """Online: its agent reported within the heartbeat interval; Offline: it did before;
    Pending: no agent has reported for it yet (not enrolled, or enrolled and not connected)."""
    if online:
        return "Online"
    return "Offline" if last_seen else "Pending"
