"""The cluster as a Site: what the core Kubernetes Nodes say, as meshsec Site and Node manifests.

Pure functions over Node objects as the API server returns them (dicts). The cluster is one
Site: its prefixes are every Node's ``spec.podCIDRs`` plus the configured service CIDRs, its
gateways the Nodes carrying the gateway label. A Node's underlay endpoints are its ExternalIP
addresses (public), else its InternalIP addresses (private), or what the ``meshsec.io/endpoints``
annotation lists; never an address from a CNI bridge or a virtual interface, which the agent
would otherwise find on the host. Its podCIDRs become the meshsec Node's ``spec.prefixes``, the
traffic selectors of node-scope tunnel-mode policies. Its labels are copied unchanged (they are
namespaced already: ``kubernetes.io/hostname``, ``topology.kubernetes.io/zone``), except keys
under ``kubernetes.meshsec.io/``, which the operator sets itself.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from meshsec.controller.resources.fields import valid_label_key
from meshsec.controller.resources.model import API_VERSION, Kind

# On a core Node: addresses (comma-separated) to use as its endpoints instead of its status.
ENDPOINTS_ANNOTATION = "meshsec.io/endpoints"
PUBLIC_ENDPOINTS_ANNOTATION = "meshsec.io/public-endpoints"
DEFAULT_GATEWAY_LABEL = "meshsec.io/gateway=true"
# Labels and annotations the operator sets on the meshsec Nodes it derives.
OWN_PREFIX = "kubernetes.meshsec.io/"
CLUSTER_LABEL = OWN_PREFIX + "cluster"
# The core Node's uid: a Node deleted and created again under its name is a new identity.
NODE_UID = OWN_PREFIX + "node-uid"
MAX_ENDPOINTS = 16
MAX_LABEL_VALUE = 63


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    site: str
    service_cidrs: tuple[str, ...] = ()
    gateway_label: str = DEFAULT_GATEWAY_LABEL  # key=value; key alone matches any value
    site_labels: Mapping[str, str] = field(default_factory=dict)  # for site-scope policy members

    def gateway_selector(self) -> dict[str, Any]:
        key, sep, value = self.gateway_label.partition("=")
        if sep:
            return {"matchLabels": {key: value}}
        return {"matchExpressions": [{"key": key, "operator": "Exists"}]}


@dataclass(frozen=True, slots=True)
class DerivedNode:
    name: str
    uid: str
    manifest: dict[str, Any] | None  # None: no usable endpoint (see problem)
    problem: str = ""


def parse_gateway_label(text: str) -> str:
    """`key=value` or `key`, the key a valid label key; raises ValueError naming the problem."""
    key, _, value = text.partition("=")
    if not valid_label_key(key):
        raise ValueError(f"gateway label {text!r}: {key!r} is not a label key")
    if len(value) > MAX_LABEL_VALUE:
        raise ValueError(f"gateway label {text!r}: the value is longer than {MAX_LABEL_VALUE}")
    return text


def parse_cidrs(texts: Iterable[str]) -> tuple[str, ...]:
    """Service CIDRs given on the command line: each a network (host bits zero)."""
    out = []
    for text in texts:
        for part in filter(None, (p.strip() for p in text.split(","))):
            try:
                out.append(str(ipaddress.ip_network(part)))
            except ValueError as exc:
                raise ValueError(f"service CIDR {part!r}: {exc}") from None
    return tuple(out)


def _addresses(text: str) -> list[str]:
    found = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            found.append(str(ipaddress.ip_address(part)))
        except ValueError:
            raise ValueError(f"{part!r} is not an IP address") from None
    return found


def endpoints_of(node: Mapping[str, Any]) -> dict[str, list[str]]:
    """The annotations if present, else ExternalIP (public), else InternalIP (private)."""
    meta = node.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    if ENDPOINTS_ANNOTATION in annotations or PUBLIC_ENDPOINTS_ANNOTATION in annotations:
        out: dict[str, list[str]] = {}
        for key, where in ((PUBLIC_ENDPOINTS_ANNOTATION, "public"), (ENDPOINTS_ANNOTATION, "private")):
            try:
                found = _addresses(str(annotations.get(key, "")))
            except ValueError as exc:
                raise ValueError(f"annotation {key}: {exc}") from None
            if found:
                out[where] = found
        return _bounded(out)
    addresses = ((node.get("status") or {}).get("addresses")) or []
    by_type: dict[str, list[str]] = {}
    for entry in addresses:
        if not isinstance(entry, Mapping):
            continue
        try:
            address = str(ipaddress.ip_address(str(entry.get("address", ""))))
        except ValueError:
            continue  # Hostname and InternalDNS entries carry names
        by_type.setdefault(str(entry.get("type")), []).append(address)
    if by_type.get("ExternalIP"):
        return _bounded({"public": by_type["ExternalIP"]})
    if by_type.get("InternalIP"):
        return _bounded({"private": by_type["InternalIP"]})
    return {}


def _bounded(endpoints: dict[str, list[str]]) -> dict[str, list[str]]:
    return {k: list(dict.fromkeys(v))[:MAX_ENDPOINTS] for k, v in endpoints.items()}


def pod_cidrs(node: Mapping[str, Any]) -> list[str]:
    """``spec.podCIDRs`` (dual stack), else the older single ``spec.podCIDR``; unparsable ones
    are skipped (the API server validates them)."""
    spec = node.get("spec") or {}
    raw = spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else [])
    out = []
    for text in raw:
        try:
            out.append(str(ipaddress.ip_network(str(text))))
        except ValueError:
            continue
    return out


def labels_of(node: Mapping[str, Any], config: ClusterConfig) -> dict[str, str]:
    raw = (node.get("metadata") or {}).get("labels") or {}
    labels = {
        str(k): str(v)
        for k, v in raw.items()
        if not str(k).startswith(OWN_PREFIX) and valid_label_key(str(k))
    }
    labels[CLUSTER_LABEL] = config.site
    return labels


def derive_node(node: Mapping[str, Any], config: ClusterConfig) -> DerivedNode:
    meta = node.get("metadata") or {}
    name, uid = str(meta.get("name", "")), str(meta.get("uid", ""))
    try:
        endpoints = endpoints_of(node)
    except ValueError as exc:
        return DerivedNode(name, uid, None, str(exc))
    if not endpoints:
        return DerivedNode(name, uid, None, "no ExternalIP or InternalIP address and no endpoints annotation")
    spec: dict[str, Any] = {"site": config.site, "endpoints": endpoints, "identity": {"ikeId": name}}
    prefixes = pod_cidrs(node)
    if prefixes:
        spec["prefixes"] = prefixes
    manifest = {
        "apiVersion": API_VERSION,
        "kind": Kind.NODE.value,
        "metadata": {"name": name, "labels": labels_of(node, config), "annotations": {NODE_UID: uid}},
        "spec": spec,
    }
    return DerivedNode(name, uid, manifest)


def site_manifest(nodes: Sequence[Mapping[str, Any]], config: ClusterConfig) -> dict[str, Any]:
    """Pod CIDRs of every Node plus the service CIDRs, each once, in a stable order."""
    prefixes: dict[str, None] = {}
    for node in nodes:
        prefixes.update(dict.fromkeys(pod_cidrs(node)))
    prefixes.update(dict.fromkeys(config.service_cidrs))
    ordered = sorted(prefixes, key=lambda p: (ipaddress.ip_network(p).version, ipaddress.ip_network(p)))
    return {
        "apiVersion": API_VERSION,
        "kind": Kind.SITE.value,
        "metadata": {"name": config.site, "labels": {**config.site_labels, CLUSTER_LABEL: config.site}},
        "spec": {"prefixes": ordered, "gatewaySelector": config.gateway_selector()},
    }
