"""Manifest dicts (or YAML text) to typed resources, with every field problem reported by path."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from ipaddress import ip_network

import yaml

from meshsec.common import safeyaml
from meshsec.controller.resources.algorithms import ProposalKind
from meshsec.controller.resources.cloud import MESH_DEFAULTS, PROFILES
from meshsec.controller.resources.crypto import parse_crypto
from meshsec.controller.resources.errors import FieldError, ValidationError
from meshsec.controller.resources.fields import Fields, valid_name
from meshsec.controller.resources.model import (
    API_VERSION,
    AuthMethod,
    CloudProfileName,
    Condition,
    Endpoints,
    ExternalGateway,
    ExternalGatewaySpec,
    HubSpec,
    IpsecProtocol,
    Kind,
    MeshPolicy,
    MeshPolicySpec,
    Mode,
    Node,
    NodeIdentity,
    NodeSpec,
    NodeStatus,
    ObjectMeta,
    PairRule,
    PartialSpec,
    PolicyAuth,
    RemoteAccessPool,
    RemoteAccessUser,
    Resource,
    Scope,
    Site,
    SiteSpec,
    StartAction,
    Status,
    Topology,
)
from meshsec.controller.resources.overlap import nested_pairs
from meshsec.controller.resources.parse_remote import pool_spec, user_spec

_KINDS = {k.value: k for k in Kind}
# The CRD's name for a Node (a CRD of kind "Node" shadowed the core kind), so one manifest serves
# `kubectl apply` and `meshctl apply`. The API, the store and events keep "Node".
KIND_ALIASES = {"MeshNode": Kind.NODE}


def canonical_kind(text: str) -> str:
    """The API's name for a manifest's kind (unknown names unchanged, for the error)."""
    alias = KIND_ALIASES.get(text)
    return alias.value if alias is not None else text


def parse_resource(doc: object) -> Resource:
    """Raises ValidationError naming every bad field of this one manifest."""
    errors: list[FieldError] = []
    resource = _parse(doc, errors)
    if errors or resource is None:
        raise ValidationError(errors)
    return resource


def parse_resources(docs: Iterable[object]) -> list[Resource]:
    """Parses a batch; raises one ValidationError listing the problems of every manifest."""
    errors: list[FieldError] = []
    out: list[Resource] = []
    for doc in docs:
        before = len(errors)
        resource = _parse(doc, errors)
        if resource is not None and len(errors) == before:
            out.append(resource)
    if errors:
        raise ValidationError(errors)
    return out


def load_yaml(text: str) -> list[Resource]:
    """Parses a multi-document YAML stream (``meshctl apply -f``); empty documents are skipped.
    Size, nesting and alias expansion are bounded (common/safeyaml.py), so hostile YAML is a
    validation error, not a RecursionError or a hang."""
    try:
        docs = [d for d in safeyaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise ValidationError([FieldError("YAML", "", "", str(exc).replace("\n", " "))]) from exc
    return parse_resources(docs)


def _parse(doc: object, errors: list[FieldError]) -> Resource | None:
    if not isinstance(doc, Mapping):
        errors.append(FieldError("Resource", "", "", f"must be a mapping, got {type(doc).__name__}"))
        return None
    kind_text = doc.get("kind")
    kind = (_KINDS.get(kind_text) or KIND_ALIASES.get(kind_text)) if isinstance(kind_text, str) else None
    meta = doc.get("metadata")
    name = meta.get("name") if isinstance(meta, Mapping) else None
    name_text = name if isinstance(name, str) else ""
    top = Fields(doc, "", errors, str(kind_text or "Resource"), name_text)
    if kind is None:
        top.error("kind", f"must be one of {', '.join(_KINDS)}")
        return None
    top.only("apiVersion", "kind", "metadata", "spec", "status")
    if doc.get("apiVersion") != API_VERSION:
        top.error("apiVersion", f"must be {API_VERSION}")
    metadata = _metadata(top.sub("metadata"))
    spec = top.sub("spec")
    status = top.sub("status")
    if kind is Kind.SITE:
        return Site(metadata, _site_spec(spec), _status(status))
    if kind is Kind.NODE:
        return Node(metadata, _node_spec(spec, metadata.name), _node_status(status))
    if kind is Kind.MESH_POLICY:
        return MeshPolicy(metadata, _policy_spec(spec), _status(status))
    if kind is Kind.REMOTE_ACCESS_POOL:
        return RemoteAccessPool(metadata, pool_spec(spec), _status(status))
    if kind is Kind.REMOTE_ACCESS_USER:
        return RemoteAccessUser(metadata, user_spec(spec, metadata.name), _status(status))
    return ExternalGateway(metadata, _external_spec(spec), _status(status))


def _metadata(f: Fields) -> ObjectMeta:
    # Kubernetes adds these; accepting them lets CRD objects flow through unchanged.
    f.only(
        "name",
        "labels",
        "annotations",
        "namespace",
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "managedFields",
        "finalizers",
    )
    name = f.string("name")
    if name and not valid_name(name):
        f.error("name", "must be a lowercase DNS subdomain name")
    return ObjectMeta(name, f.labels("labels"))


def _status(f: Fields) -> Status:
    # Status is observed state: accepted as written, never used for the mesh.
    return Status(_conditions(f))


def _conditions(f: Fields) -> tuple[Condition, ...]:
    out: list[Condition] = []
    for path, item in f.items("conditions"):
        c = Fields(item, path, f.errors, f.kind, f.name)
        out.append(
            Condition(c.string("type"), c.string("status"), c.string("reason", ""), c.string("message", ""))
        )
    return tuple(out)


def _node_status(f: Fields) -> NodeStatus:
    return NodeStatus(f.string("phase", ""), f.addresses("observedEndpoints"), _conditions(f))


def _site_spec(f: Fields) -> SiteSpec:
    f.only("prefixes", "gatewaySelector")
    prefixes = f.prefixes("prefixes", required=True)
    for a, b in nested_pairs(prefixes):
        f.error("prefixes", f"{a} overlaps {b}")
    return SiteSpec(prefixes, f.selector("gatewaySelector"))


def _node_spec(f: Fields, name: str) -> NodeSpec:
    f.only("site", "endpoints", "identity", "prefixes")
    site = f.string("site")
    prefixes = f.prefixes("prefixes")
    for a, b in nested_pairs(prefixes):
        f.error("prefixes", f"{a} overlaps {b}")
    ep = f.sub("endpoints")
    ep.only("public", "private")
    endpoints = Endpoints(ep.addresses("public"), ep.addresses("private"))
    if not ep.raw("public") and not ep.raw("private"):
        f.error("endpoints", "needs at least one public or private address")
    ident = f.sub("identity")
    ident.only("ikeId", "certificateId")
    cert = ident.string("certificateId", "") or None
    return NodeSpec(site, endpoints, NodeIdentity(ident.string("ikeId", name or "-"), cert), prefixes)


def _policy_spec(f: Fields) -> MeshPolicySpec:
    f.only(
        "topology", "scope", "members", "hubs", "partial", "crypto", "auth", "mode", "protocol", "startAction"
    )
    topology = f.enum("topology", Topology)
    protocol = f.enum("protocol", IpsecProtocol, IpsecProtocol.ESP)
    child_kind = ProposalKind.AH if protocol is IpsecProtocol.AH else ProposalKind.ESP
    hubs: HubSpec | None = None
    partial: PartialSpec | None = None
    if topology is Topology.HUB_AND_SPOKE:
        hubs = _hubs(f.sub("hubs")) if f.has("hubs") else None
        if hubs is None:
            f.error("hubs", "required for topology hub-and-spoke")
    elif f.has("hubs"):
        f.error("hubs", f"only valid for topology hub-and-spoke, not {topology.value}")
    if topology is Topology.PARTIAL:
        partial = _partial(f.sub("partial")) if f.has("partial") else None
        if partial is None or not (partial.pairs or partial.rules):
            f.error("partial", "topology partial needs pairs or rules")
    elif f.has("partial"):
        f.error("partial", f"only valid for topology partial, not {topology.value}")
    auth = f.sub("auth")
    auth.only("method", "pskGeneration")
    scope = f.enum("scope", Scope)
    mode = f.enum("mode", Mode, Mode.TUNNEL)
    if scope is Scope.SITE and mode is Mode.TRANSPORT:
        f.error("mode", "transport mode protects node addresses only; use scope node")
    return MeshPolicySpec(
        topology=topology,
        scope=scope,
        members=f.selector("members"),
        crypto=parse_crypto(f.sub("crypto"), PROFILES[CloudProfileName.GENERIC], child_kind, MESH_DEFAULTS),
        auth=PolicyAuth(
            auth.enum("method", AuthMethod, AuthMethod.CERTIFICATE),
            auth.integer("pskGeneration", 1, 1, 2**31 - 1),
        ),
        mode=mode,
        protocol=protocol,
        start_action=f.enum("startAction", StartAction, StartAction.START),
        hubs=hubs,
        partial=partial,
    )


def _hubs(f: Fields) -> HubSpec:
    f.only("selector", "spokeToSpoke", "transitPrefixes")
    spoke_to_spoke = f.boolean("spokeToSpoke", False)
    transit = f.prefixes("transitPrefixes")
    if transit and not spoke_to_spoke:
        f.error("transitPrefixes", "only meaningful with spokeToSpoke: true")
    return HubSpec(f.selector("selector"), spoke_to_spoke, transit)


def _partial(f: Fields) -> PartialSpec:
    f.only("pairs", "rules")
    pairs: set[tuple[str, str]] = set()
    for path, item in f.items("pairs"):
        if not (isinstance(item, list) and len(item) == 2 and all(isinstance(x, str) and x for x in item)):
            f.errors.append(FieldError(f.kind, f.name, path, "must be a list of two member names"))
        elif item[0] == item[1]:
            f.errors.append(FieldError(f.kind, f.name, path, f"pairs {item[0]!r} with itself"))
        else:
            a, b = sorted(item)
            pairs.add((a, b))
    rules: list[PairRule] = []
    for path, item in f.items("rules"):
        r = Fields(item, path, f.errors, f.kind, f.name)
        r.only("from", "to")
        rules.append(PairRule(r.selector("from"), r.selector("to")))
    return PartialSpec(tuple(sorted(pairs)), tuple(rules))


def _external_spec(f: Fields) -> ExternalGatewaySpec:
    f.only("address", "ikeId", "auth", "prefixes", "sites", "profile", "crypto", "startAction")
    address = f.address("address")
    auth = f.sub("auth")
    for key in sorted(str(k) for k in auth.data if k != "pskSecretRef"):
        # Never echo the value: it may be the very secret that must not be inlined.
        auth.error(
            key,
            "inline secrets are not accepted; reference a Secret with pskSecretRef"
            if "psk" in key.lower() or "secret" in key.lower()
            else "unknown field",
        )
    secret_ref = auth.string("pskSecretRef")
    if secret_ref and not valid_name(secret_ref):
        auth.error("pskSecretRef", "must be a lowercase DNS subdomain name")
    profile_name = f.enum("profile", CloudProfileName, CloudProfileName.GENERIC)
    sites = f.strings("sites", required=True)
    if len(set(sites)) != len(sites):
        f.error("sites", "lists a site twice")
    return ExternalGatewaySpec(
        address=address or ip_network("0.0.0.0/32").network_address,
        ike_id=f.string("ikeId", str(address) if address else "-"),
        psk_secret_ref=secret_ref,
        prefixes=f.prefixes("prefixes", required=True),
        sites=tuple(sorted(set(sites))),
        profile=profile_name,
        crypto=parse_crypto(f.sub("crypto"), PROFILES[profile_name], ProposalKind.ESP),
        start_action=f.enum("startAction", StartAction, StartAction.START),
    )
