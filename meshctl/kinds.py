"""Resource kinds meshctl knows and the names users type for them (``nodes``, ``node``, ``Node``)."""

from __future__ import annotations

from dataclasses import dataclass

from meshsec.meshctl.errors import UsageError

API_VERSION = "meshsec.io/v1alpha1"


@dataclass(frozen=True)
class Kind:
    name: str  # as in the API: "MeshPolicy"
    plural: str  # as typed and printed: "policies"
    aliases: tuple[str, ...]
    # What manifests say, where it differs from the API's name: the Kubernetes CRD's kind.
    manifest_name: str = ""
    # An older manifest name still read, with a deprecation notice.
    deprecated_name: str = ""

    @property
    def short(self) -> str:
        """``site/dc1`` style prefix used in apply/delete output."""
        return self.name.lower()

    @property
    def manifest(self) -> str:
        return self.manifest_name or self.name


SITE = Kind("Site", "sites", ("site", "sites"))
# MeshNode in manifests, as the CRD (a CRD kind "Node" shadowed Kubernetes' own); the API keeps "Node".
NODE = Kind(
    "Node",
    "nodes",
    ("node", "nodes", "no", "meshnode", "meshnodes", "msnode"),
    "MeshNode",
    deprecated_name="Node",
)
POLICY = Kind("MeshPolicy", "policies", ("policy", "policies", "meshpolicy", "meshpolicies", "mp"))
GATEWAY = Kind(
    "ExternalGateway", "gateways", ("gateway", "gateways", "externalgateway", "externalgateways", "eg")
)
POOL = Kind(
    "RemoteAccessPool", "pools", ("pool", "pools", "rapool", "remoteaccesspool", "remoteaccesspools")
)
USER = Kind(
    "RemoteAccessUser", "users", ("user", "users", "rauser", "remoteaccessuser", "remoteaccessusers")
)
RESOURCE_KINDS: tuple[Kind, ...] = (SITE, NODE, POLICY, GATEWAY, POOL, USER)
REMOTE_ACCESS_KINDS = (POOL, USER)
# Applied in this order and deleted in reverse, so references point at things that exist.
APPLY_ORDER = {kind.name: i for i, kind in enumerate(RESOURCE_KINDS)}

TUNNEL_ALIASES = ("tunnel", "tunnels", "tun")
LEASE_ALIASES = ("lease", "leases")


def resource_kind(typed: str) -> Kind:
    lowered = typed.lower()
    for kind in RESOURCE_KINDS:
        if lowered == kind.name.lower() or lowered in kind.aliases:
            return kind
    known = ", ".join(k.plural for k in RESOURCE_KINDS)
    raise UsageError(f"unknown resource kind {typed!r}", hint=f"known kinds: {known}, tunnels, leases")


def kind_by_api_name(name: str) -> Kind | None:
    return next((k for k in RESOURCE_KINDS if k.name == name), None)


def manifest_kind(api_name: str) -> str:
    """What a manifest calls the API's kind (unknown names pass through)."""
    kind = kind_by_api_name(api_name)
    return kind.manifest if kind is not None else api_name


def kind_by_manifest_name(name: object) -> Kind | None:
    """The kind a manifest's ``kind:`` names, its deprecated spelling included."""
    return next((k for k in RESOURCE_KINDS if name in (k.manifest, k.deprecated_name or k.manifest)), None)


def deprecation_notice(kind: Kind) -> str:
    return (
        f"kind {kind.deprecated_name} is deprecated in manifests: write kind {kind.manifest} "
        f"(the CRD's kind; {kind.deprecated_name} is Kubernetes' own); it is applied the same way"
    )


def is_tunnel(typed: str) -> bool:
    return typed.lower() in TUNNEL_ALIASES


def is_lease(typed: str) -> bool:
    return typed.lower() in LEASE_ALIASES
