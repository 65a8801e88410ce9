"""The one data-plane interface the agent drives.

Two backends implement it: `kernel` (Linux XFRM over netlink) and `userspace` (ESP over a TUN
device, for kernels without ESP). The agent's reconciler and the IKE adapter only ever see
`DataPlane`, so nothing above this module knows which backend it is talking to.

The contract mirrors the kernel's XFRM model (SAs keyed by (dst, spi, protocol), policies keyed by
(selector, direction), templates bound to SAs by reqid) because that model is what the kernel
backend must speak anyway, and it is general enough for a userspace implementation.

Ownership: every SA and policy the agent installs carries the agent's `owner_mark`; `list_owned`
and `flush_owned` only ever see or remove state with that mark, so restarting the agent never
touches state it did not create (a lesson from daemons that flush the whole table on restart).

Make-before-break: callers install an inbound SA before announcing its SPI to the peer and delete
the old SAs only after the rekey exchange completes; backends must allow two SAs for the same
selector pair at once (the outbound policy template picks the newest by `reqid` + `update_sa`).
"""

from __future__ import annotations

import enum
import ipaddress
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from meshsec.common.secrets import Secret

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class DataPlaneError(Exception):
    """A request the backend could not carry out; the message says what and why."""


class Unsupported(DataPlaneError):
    """The backend (or the kernel under it) lacks a feature, e.g. ESP or an algorithm."""


class Direction(enum.Enum):
    IN = "in"
    OUT = "out"
    FWD = "fwd"


class IpsecProtocol(enum.IntEnum):
    ESP = 50
    AH = 51


class Mode(enum.Enum):
    TUNNEL = "tunnel"
    TRANSPORT = "transport"


class PolicyAction(enum.Enum):
    PROTECT = "protect"
    BLOCK = "block"
    BYPASS = "bypass"


@dataclass(frozen=True, slots=True)
class Encryption:
    """`name` is one of: aes-gcm-16 (RFC 4106, key includes the 4-byte salt), chacha20-poly1305
    (RFC 7634, 32-byte key and the 4-byte salt), aes-cbc, null."""

    name: str
    key: Secret
    icv_bits: int = 0  # for AEAD only (128 for GCM-16 and ChaCha20-Poly1305)


@dataclass(frozen=True, slots=True)
class Integrity:
    """`name` is one of: hmac-sha256, hmac-sha384, hmac-sha512; truncation per RFC 4868."""

    name: str
    key: Secret
    truncation_bits: int


@dataclass(frozen=True, slots=True)
class UdpEncapsulation:
    """RFC 3948 ESP-in-UDP: ports as seen on the wire for this SA's outer header."""

    src_port: int
    dst_port: int


@dataclass(frozen=True, slots=True)
class Lifetime:
    """Limits after which the backend raises `SaExpired`; 0 means unlimited."""

    soft_seconds: int = 0
    hard_seconds: int = 0
    soft_bytes: int = 0
    hard_bytes: int = 0
    soft_packets: int = 0
    hard_packets: int = 0


@dataclass(frozen=True, slots=True)
class TrafficSelector:
    """Inner traffic, as in RFC 7296 TSi/TSr: prefixes, IP protocol (0 = any) and port ranges."""

    src: IPNetwork
    dst: IPNetwork
    protocol: int = 0
    src_ports: tuple[int, int] = (0, 65535)
    dst_ports: tuple[int, int] = (0, 65535)


@dataclass(frozen=True, slots=True)
class SaId:
    """How the kernel names an SA: destination, SPI, protocol."""

    dst: IPAddress
    spi: int
    protocol: IpsecProtocol


@dataclass(frozen=True, slots=True)
class SecurityAssociation:
    id: SaId
    src: IPAddress
    direction: Direction  # IN or OUT; the kernel does not need it, the userspace backend does
    mode: Mode
    reqid: int
    encryption: Encryption | None = None  # None for AH
    integrity: Integrity | None = None  # None for AEAD
    encap: UdpEncapsulation | None = None
    replay_window: int = 1024
    esn: bool = True
    lifetime: Lifetime = field(default_factory=Lifetime)
    # Transport mode: the selector that this SA may carry (the kernel's xfrm_selector).
    selector: TrafficSelector | None = None
    if_id: int = 0  # XFRM interface id for route-based setups; 0 = policy-based


@dataclass(frozen=True, slots=True)
class Template:
    """Which SA protects traffic matching a policy: the tunnel endpoints and the reqid."""

    protocol: IpsecProtocol
    mode: Mode
    src: IPAddress | None  # outer addresses; None in transport mode
    dst: IPAddress | None
    reqid: int


@dataclass(frozen=True, slots=True)
class Policy:
    selector: TrafficSelector
    direction: Direction
    action: PolicyAction = PolicyAction.PROTECT
    template: Template | None = None
    priority: int = 0  # lower wins, as in XFRM
    if_id: int = 0


@dataclass(frozen=True, slots=True)
class SaCounters:
    bytes: int
    packets: int
    replay_dropped: int = 0
    integrity_failed: int = 0
    last_used: float | None = None  # seconds since the epoch


@dataclass(frozen=True, slots=True)
class SaExpired:
    sa: SaId
    hard: bool  # soft: rekey now; hard: the SA is gone


@dataclass(frozen=True, slots=True)
class Acquire:
    """Outbound traffic matched a policy whose template has no SA yet."""

    selector: TrafficSelector
    reqid: int


DataPlaneEvent = SaExpired | Acquire


@dataclass(frozen=True, slots=True)
class Capabilities:
    backend: str  # "kernel" or "userspace"
    esp: bool
    ah: bool
    aead_gcm: bool
    udp_encapsulation: bool
    aead_chacha20poly1305: bool = False
    xfrm_interfaces: bool = False
    notes: tuple[str, ...] = ()
    # The underlay MTU tunnelled packets are sized for; 0: each route's interface MTU (kernel).
    path_mtu: int = 0
    # Its SAs and policies keep forwarding while no agent runs (the kernel's; a data-plane
    # process of its own): a restarted agent resumes its IKE SAs on them instead of replacing them.
    outlives_agent: bool = False


@dataclass(frozen=True, slots=True)
class OwnedState:
    sas: tuple[SaId, ...]
    policies: tuple[tuple[TrafficSelector, Direction], ...]
    max_reqid: int = 0  # the highest reqid of those SAs (a restarted agent allocates above it)
    # The reqid each policy's template names: a new CHILD_SA with the same policies takes it, so
    # the adopted SAs it replaces still pass the inbound policy check until they are removed.
    policy_reqids: tuple[tuple[TrafficSelector, Direction, int], ...] = ()


IkeReceiver = Callable[[bytes, tuple[str, int], tuple[str, int]], None]
"""Called with (IKE message without the non-ESP marker, local addr, remote addr)."""


@runtime_checkable
class DataPlane(Protocol):
    """What the agent needs from a data plane. All methods are idempotent where the name says
    `ensure`/`delete` (deleting what is not there is not an error)."""

    @property
    def capabilities(self) -> Capabilities: ...

    async def start(self) -> None: ...

    async def close(self) -> None:
        """Stop processing; leaves installed state in place (a restart adopts it)."""

    async def allocate_spi(self, protocol: IpsecProtocol, src: IPAddress, dst: IPAddress) -> int:
        """Reserve an inbound SPI (XFRM_MSG_ALLOCSPI): unique for (dst, protocol)."""

    async def add_sa(self, sa: SecurityAssociation) -> None:
        """Install an SA; replaces a reserved SPI. Fails if an SA with this id is installed."""

    async def update_sa(self, sa: SecurityAssociation) -> None: ...

    async def migrate_sa(self, old: SaId, sa: SecurityAssociation) -> None:
        """The SA `old` moves to other outer addresses (MOBIKE, RFC 4555): `sa` is installed
        carrying on `old`'s sequence numbers, replay window and counters, so the peer's replay
        check and lifetime limits see one SA. With another id, `old` stays installed (a
        make-before-break caller moves its policies, then deletes it); with the same id (only
        the source changed) it is replaced."""

    async def delete_sa(self, sa_id: SaId) -> None: ...

    async def ensure_policy(self, policy: Policy) -> None:
        """Install or replace the policy for (selector, direction)."""

    async def delete_policy(self, selector: TrafficSelector, direction: Direction) -> None: ...

    async def counters(self, sa_id: SaId) -> SaCounters: ...

    async def list_owned(self) -> OwnedState: ...

    async def flush_owned(self) -> None:
        """Remove every SA and policy this agent owns, and nothing else."""

    async def adopt(self) -> OwnedState:
        """A restarted agent takes over what its earlier run left installed (a restart stop leaves
        the data plane forwarding): the backend rebuilds its own bookkeeping for it (routes of the
        outbound tunnel policies, MSS clamping), removes what is stale beside it (routes no owned
        policy needs) and returns what it holds. Nothing is removed that a policy or SA uses."""

    def events(self) -> AsyncIterator[DataPlaneEvent]:
        """Lifetime expiry and acquire events; one consumer."""

    async def bypass_socket(self, sock: socket.socket) -> None:
        """Exempt one of the agent's own IKE sockets (UDP 500 and 4500) from this data plane's
        policies, as strongSwan's kernel interface does (`bypass_socket`): where a tunnel's
        selectors hold the peer's own address (node-to-node meshes: address + podCIDR), IKE with
        that peer must still travel in clear, or the first CHILD_SA installed swallows the
        IKE_AUTH response. Kernel: a per-socket XFRM policy that allows, in and out
        (IP_XFRM_POLICY / IPV6_XFRM_POLICY). Userspace: the data plane's firewall mark on the socket
        (SO_MARK), which its routing rule sends past the TUN table. Raises DataPlaneError where the
        bypass cannot be set: IKE must not be sent unprotected by a guess (fail closed)."""

    def held_encap_socket(self, host: str, port: int) -> socket.socket | None:
        """The UDP socket bound to (host, port) that the backend kept reading while no agent ran
        (the userspace data-plane daemon keeps 4500, so ESP-in-UDP flows on across an agent's
        restart); the IKE adapter uses it instead of binding a second one. None: bind anew."""

    async def attach_encap_socket(self, sock: socket.socket, ike_receiver: IkeReceiver) -> None:
        """Hand over the IKE socket on UDP 4500 (RFC 3948): ESP-in-UDP datagrams arriving there are
        the data plane's; non-ESP-marker datagrams go to `ike_receiver` with the marker removed.
        Kernel: sets UDP_ENCAP_ESPINUDP on the socket and reads it for IKE. Userspace: reads the
        socket itself in batches and decrypts ESP in place."""
