"""Typed resources: Site, Node, MeshPolicy, ExternalGateway and the remote-access kinds
RemoteAccessPool and RemoteAccessUser (apiVersion meshsec.io/v1alpha1).

These dataclasses are the parsed, defaulted and field-checked form of the YAML that
``meshctl apply -f`` and the CRDs carry; `meshsec.controller.resources.parse` builds them and
`meshsec.controller.resources.validate` checks what spans several resources. They are frozen so
that the mesh index can hold and compare them without copies.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from meshsec.controller.resources.selector import LabelSelector

API_VERSION = "meshsec.io/v1alpha1"
# Set by AdminService.Apply to the request's field manager: who declared the resource last.
LAST_APPLIED_BY = "meshsec.io/last-applied-by"

Prefix = IPv4Network | IPv6Network
Address = IPv4Address | IPv6Address


class Kind(enum.Enum):
    SITE = "Site"
    NODE = "Node"
    MESH_POLICY = "MeshPolicy"
    EXTERNAL_GATEWAY = "ExternalGateway"
    REMOTE_ACCESS_POOL = "RemoteAccessPool"
    REMOTE_ACCESS_USER = "RemoteAccessUser"


# Kinds that never produce mesh tunnels: the mesh index keeps and validates them, nothing more.
REMOTE_ACCESS_KINDS = frozenset({Kind.REMOTE_ACCESS_POOL, Kind.REMOTE_ACCESS_USER})


@dataclass(frozen=True, slots=True)
class ObjectMeta:
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Condition:
    type: str
    status: str
    reason: str = ""
    message: str = ""


@dataclass(frozen=True, slots=True)
class Status:
    """Observed state written by the controller; never an input to the mesh computation."""

    conditions: tuple[Condition, ...] = ()


# --- Site --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SiteSpec:
    prefixes: tuple[Prefix, ...]
    # Nodes of this site whose labels match are its gateways in site-scope policies.
    gateway_selector: LabelSelector


@dataclass(frozen=True, slots=True)
class Site:
    metadata: ObjectMeta
    spec: SiteSpec
    status: Status = Status()
    kind = Kind.SITE


# --- Node --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Endpoints:
    """Underlay addresses. A node behind NAT has only private ones (or a public one it learned)."""

    public: tuple[Address, ...] = ()
    private: tuple[Address, ...] = ()


@dataclass(frozen=True, slots=True)
class NodeIdentity:
    ike_id: str
    # Serial/fingerprint of the certificate the controller CA issued; None until enrolled.
    certificate_id: str | None = None


@dataclass(frozen=True, slots=True)
class NodeSpec:
    site: str
    endpoints: Endpoints
    identity: NodeIdentity
    # What the node routes besides its own addresses (a Kubernetes node's podCIDRs): node-scope
    # tunnel-mode policies carry them as its traffic selectors.
    prefixes: tuple[Prefix, ...] = ()


@dataclass(frozen=True, slots=True)
class NodeStatus:
    phase: str = ""
    observed_endpoints: tuple[Address, ...] = ()
    conditions: tuple[Condition, ...] = ()


@dataclass(frozen=True, slots=True)
class Node:
    metadata: ObjectMeta
    spec: NodeSpec
    status: NodeStatus = NodeStatus()
    kind = Kind.NODE

    def traffic_addresses(self) -> tuple[Address, ...]:
        """The addresses a node-scope policy protects: private ones, else public ones."""
        return self.spec.endpoints.private or self.spec.endpoints.public


# --- crypto shared by policies and external gateways --------------------------------------------


class DpdAction(enum.Enum):
    RESTART = "restart"
    CLEAR = "clear"
    TRAP = "trap"


@dataclass(frozen=True, slots=True)
class Dpd:
    delay_s: int = 30
    timeout_s: int = 150
    action: DpdAction = DpdAction.RESTART


@dataclass(frozen=True, slots=True)
class CryptoProfile:
    """Proposals are canonical strongSwan-style strings (see `algorithms.parse_proposal`)."""

    ike_proposals: tuple[str, ...]
    esp_proposals: tuple[str, ...]
    ike_lifetime_s: int
    child_lifetime_s: int
    pfs: bool
    dpd: Dpd


# --- MeshPolicy --------------------------------------------------------------------------------


class Topology(enum.Enum):
    FULL_MESH = "full-mesh"
    HUB_AND_SPOKE = "hub-and-spoke"
    PARTIAL = "partial"


class Scope(enum.Enum):
    SITE = "site"  # gateway to gateway, site prefixes as traffic selectors
    NODE = "node"  # node to node, node addresses as /32 (/128) traffic selectors


class Mode(enum.Enum):
    TUNNEL = "tunnel"
    TRANSPORT = "transport"


class IpsecProtocol(enum.Enum):
    ESP = "esp"
    AH = "ah"


class AuthMethod(enum.Enum):
    CERTIFICATE = "certificate"
    PSK = "psk"


class StartAction(enum.Enum):
    START = "start"
    TRAP = "trap"
    NONE = "none"


@dataclass(frozen=True, slots=True)
class HubSpec:
    selector: LabelSelector
    spoke_to_spoke: bool = False
    # Supernets a spoke routes through its hubs to reach other spokes. Without them the controller
    # lists every other member's prefixes, which makes each membership change touch every spoke.
    transit_prefixes: tuple[Prefix, ...] = ()


@dataclass(frozen=True, slots=True)
class PairRule:
    from_: LabelSelector
    to: LabelSelector


@dataclass(frozen=True, slots=True)
class PartialSpec:
    pairs: tuple[tuple[str, str], ...] = ()
    rules: tuple[PairRule, ...] = ()


@dataclass(frozen=True, slots=True)
class PolicyAuth:
    method: AuthMethod = AuthMethod.CERTIFICATE
    # Bumping the generation derives fresh per-pair PSKs (rotation).
    psk_generation: int = 1


@dataclass(frozen=True, slots=True)
class MeshPolicySpec:
    topology: Topology
    scope: Scope
    # Selects Nodes in node scope and Sites in site scope.
    members: LabelSelector
    crypto: CryptoProfile
    auth: PolicyAuth = PolicyAuth()
    mode: Mode = Mode.TUNNEL
    protocol: IpsecProtocol = IpsecProtocol.ESP
    start_action: StartAction = StartAction.START
    hubs: HubSpec | None = None
    partial: PartialSpec | None = None


@dataclass(frozen=True, slots=True)
class MeshPolicy:
    metadata: ObjectMeta
    spec: MeshPolicySpec
    status: Status = Status()
    kind = Kind.MESH_POLICY


# --- ExternalGateway ---------------------------------------------------------------------------


class CloudProfileName(enum.Enum):
    GENERIC = "generic"
    AWS = "aws"
    AZURE = "azure"
    GCP = "gcp"


@dataclass(frozen=True, slots=True)
class ExternalGatewaySpec:
    address: Address
    ike_id: str
    # Name of a Secret holding the PSK; the value itself never enters a resource.
    psk_secret_ref: str
    prefixes: tuple[Prefix, ...]
    sites: tuple[str, ...]
    profile: CloudProfileName
    crypto: CryptoProfile
    start_action: StartAction = StartAction.START


@dataclass(frozen=True, slots=True)
class ExternalGateway:
    metadata: ObjectMeta
    spec: ExternalGatewaySpec
    status: Status = Status()
    kind = Kind.EXTERNAL_GATEWAY


# --- remote access (docs/remote-access.md) ------------------------------------------------------


class RouteMode(enum.Enum):
    SPLIT = "split"  # only spec.routes.prefixes go through the tunnel
    FULL = "full"  # everything (0.0.0.0/0 and ::/0)


class RemoteAuthMethod(enum.Enum):
    CERTIFICATE = "certificate"  # IKE certificate auth with a device certificate from the controller CA
    EAP_TLS = "eap-tls"  # the same device certificate, inside EAP (clients that only do EAP)
    EAP_MSCHAPV2 = "eap-mschapv2"  # username and password; the controller keeps the NT hash only


# The methods that authenticate with a device certificate from the controller CA.
CERTIFICATE_METHODS = frozenset({RemoteAuthMethod.CERTIFICATE, RemoteAuthMethod.EAP_TLS})


class Platform(enum.Enum):
    APPLE = "apple"  # .mobileconfig (iOS, macOS)
    ANDROID = "android"  # strongSwan app .sswan
    WINDOWS = "windows"  # PowerShell Add-VpnConnection script
    LINUX = "linux"  # swanctl.conf


@dataclass(frozen=True, slots=True)
class PoolRoutes:
    mode: RouteMode
    prefixes: tuple[Prefix, ...] = ()  # split mode only

    def selectors(self) -> tuple[Prefix, ...]:
        """What the client's remote traffic selectors (and INTERNAL_IP*_SUBNET) cover."""
        if self.mode is RouteMode.FULL:
            return (IPv4Network("0.0.0.0/0"), IPv6Network("::/0"))
        return self.prefixes


@dataclass(frozen=True, slots=True)
class RemoteAccessPoolSpec:
    # At most one range per address family; clients get one address of each range.
    addresses: tuple[Prefix, ...]
    dns: tuple[Address, ...]
    routes: PoolRoutes
    # Nodes (by label) that terminate this pool's clients.
    gateways: LabelSelector
    auth_methods: tuple[RemoteAuthMethod, ...]
    crypto: CryptoProfile


@dataclass(frozen=True, slots=True)
class RemoteAccessPool:
    metadata: ObjectMeta
    spec: RemoteAccessPoolSpec
    status: Status = Status()
    kind = Kind.REMOTE_ACCESS_POOL


@dataclass(frozen=True, slots=True)
class Device:
    name: str
    platform: Platform


@dataclass(frozen=True, slots=True)
class RemoteAccessUserSpec:
    # The EAP identity and the certificates' rfc822Name (e.g. alice@example.com).
    identity: str
    pool: str
    auth_method: RemoteAuthMethod
    devices: tuple[Device, ...]


@dataclass(frozen=True, slots=True)
class RemoteAccessUser:
    metadata: ObjectMeta
    spec: RemoteAccessUserSpec
    status: Status = Status()
    kind = Kind.REMOTE_ACCESS_USER


Resource = Site | Node | MeshPolicy | ExternalGateway | RemoteAccessPool | RemoteAccessUser


def resource_key(resource: Resource) -> tuple[Kind, str]:
    return resource.kind, resource.metadata.name
