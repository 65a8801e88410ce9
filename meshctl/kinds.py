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

    @property
    def short(self) -> str:
        """``site/dc1`` style prefix used in apply/delete output."""
        return self.name.lower()


SITE = Kind("Site", "sites", ("site", "sites"))
NODE = Kind("Node", "nodes", ("node", "nodes", "no"))
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


def is_tunnel(typed: str) -> bool:
    return typed.lower() in TUNNEL_ALIASES


def is_lease(typed: str) -> bool:
    return typed.lower() in LEASE_ALIASES
