"""Typed resources back to manifest dicts (the canonical, fully defaulted form).

``parse_resource(to_manifest(r)) == r`` for every resource; stores and APIs can keep and return
this form, and ``meshctl get`` can print it.
"""

from __future__ import annotations

from typing import Any

from meshsec.controller.resources.model import (
    API_VERSION,
    Condition,
    CryptoProfile,
    ExternalGateway,
    MeshPolicy,
    Node,
    RemoteAccessPool,
    RemoteAccessUser,
    Resource,
    Site,
    Status,
)
from meshsec.controller.resources.selector import LabelSelector


def to_manifest(resource: Resource) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": resource.metadata.name}
    if resource.metadata.labels:
        meta["labels"] = dict(sorted(resource.metadata.labels.items()))
    out: dict[str, Any] = {"apiVersion": API_VERSION, "kind": resource.kind.value, "metadata": meta}
    if isinstance(resource, Site):
        out["spec"] = {
            "prefixes": [str(p) for p in resource.spec.prefixes],
            "gatewaySelector": _selector(resource.spec.gateway_selector),
        }
        status = _status(resource.status)
    elif isinstance(resource, Node):
        spec = resource.spec
        endpoints = {
            k: [str(a) for a in v]
            for k, v in (("public", spec.endpoints.public), ("private", spec.endpoints.private))
            if v
        }
        identity: dict[str, Any] = {"ikeId": spec.identity.ike_id}
        if spec.identity.certificate_id:
            identity["certificateId"] = spec.identity.certificate_id
        out["spec"] = {"site": spec.site, "endpoints": endpoints, "identity": identity}
        if spec.prefixes:
            out["spec"]["prefixes"] = [str(p) for p in spec.prefixes]
        status = _status(Status(resource.status.conditions))
        if resource.status.phase:
            status["phase"] = resource.status.phase
        if resource.status.observed_endpoints:
            status["observedEndpoints"] = [str(a) for a in resource.status.observed_endpoints]
    elif isinstance(resource, MeshPolicy):
        out["spec"] = _policy_spec(resource)
        status = _status(resource.status)
    elif isinstance(resource, RemoteAccessPool):
        out["spec"] = _pool_spec(resource)
        status = _status(resource.status)
    elif isinstance(resource, RemoteAccessUser):
        out["spec"] = _user_spec(resource)
        status = _status(resource.status)
    else:
        out["spec"] = _external_spec(resource)
        status = _status(resource.status)
    if status:
        out["status"] = status
    return out


def _selector(selector: LabelSelector) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if selector.match_labels:
        out["matchLabels"] = dict(selector.match_labels)
    if selector.match_expressions:
        out["matchExpressions"] = [
            {"key": r.key, "operator": r.operator.value, **({"values": list(r.values)} if r.values else {})}
            for r in selector.match_expressions
        ]
    return out


def _crypto(crypto: CryptoProfile) -> dict[str, Any]:
    return {
        "ikeProposals": list(crypto.ike_proposals),
        "espProposals": list(crypto.esp_proposals),
        "ikeLifetimeSeconds": crypto.ike_lifetime_s,
        "childLifetimeSeconds": crypto.child_lifetime_s,
        "pfs": crypto.pfs,
        "dpd": {
            "delaySeconds": crypto.dpd.delay_s,
            "timeoutSeconds": crypto.dpd.timeout_s,
            "action": crypto.dpd.action.value,
        },
    }


def _policy_spec(policy: MeshPolicy) -> dict[str, Any]:
    spec = policy.spec
    out: dict[str, Any] = {
        "topology": spec.topology.value,
        "scope": spec.scope.value,
        "members": _selector(spec.members),
        "crypto": _crypto(spec.crypto),
        "auth": {"method": spec.auth.method.value, "pskGeneration": spec.auth.psk_generation},
        "mode": spec.mode.value,
        "protocol": spec.protocol.value,
        "startAction": spec.start_action.value,
    }
    if spec.hubs is not None:
        hubs: dict[str, Any] = {
            "selector": _selector(spec.hubs.selector),
            "spokeToSpoke": spec.hubs.spoke_to_spoke,
        }
        if spec.hubs.transit_prefixes:
            hubs["transitPrefixes"] = [str(p) for p in spec.hubs.transit_prefixes]
        out["hubs"] = hubs
    if spec.partial is not None:
        out["partial"] = {
            "pairs": [list(p) for p in spec.partial.pairs],
            "rules": [{"from": _selector(r.from_), "to": _selector(r.to)} for r in spec.partial.rules],
        }
    return out


def _external_spec(eg: ExternalGateway) -> dict[str, Any]:
    spec = eg.spec
    return {
        "address": str(spec.address),
        "ikeId": spec.ike_id,
        "auth": {"pskSecretRef": spec.psk_secret_ref},
        "prefixes": [str(p) for p in spec.prefixes],
        "sites": list(spec.sites),
        "profile": spec.profile.value,
        "crypto": _crypto(spec.crypto),
        "startAction": spec.start_action.value,
    }


def _pool_spec(pool: RemoteAccessPool) -> dict[str, Any]:
    spec = pool.spec
    routes: dict[str, Any] = {"mode": spec.routes.mode.value}
    if spec.routes.prefixes:
        routes["prefixes"] = [str(p) for p in spec.routes.prefixes]
    out: dict[str, Any] = {
        "addresses": [str(p) for p in spec.addresses],
        "routes": routes,
        "gateways": _selector(spec.gateways),
        "auth": {"methods": [m.value for m in spec.auth_methods]},
        "crypto": _crypto(spec.crypto),
    }
    if spec.dns:
        out["dns"] = [str(a) for a in spec.dns]
    return out


def _user_spec(user: RemoteAccessUser) -> dict[str, Any]:
    spec = user.spec
    return {
        "identity": spec.identity,
        "pool": spec.pool,
        "auth": {"method": spec.auth_method.value},
        "devices": [{"name": d.name, "platform": d.platform.value} for d in spec.devices],
    }


def _status(status: Status) -> dict[str, Any]:
    if not status.conditions:
        return {}
    return {"conditions": [_condition(c) for c in status.conditions]}


def _condition(c: Condition) -> dict[str, Any]:
    out = {"type": c.type, "status": c.status}
    if c.reason:
        out["reason"] = c.reason
    if c.message:
        out["message"] = c.message
    return out
