"""What the engine tells its user. Small immutable records, consumed via IkeSa.next_event()."""

from __future__ import annotations

from dataclasses import dataclass

from meshsec.agent.ike.address import Address
from meshsec.agent.ike.failures import FailureReason
from meshsec.agent.ike.keys import DirectionKeys
from meshsec.agent.ike.ts import Ts


@dataclass(frozen=True, slots=True)
class Algorithms:
    encr: int | None
    encr_key_bits: int | None
    integ: int | None
    prf: int | None = None
    dh: int | None = None
    esn: int | None = None
    additional_ke: tuple[int, ...] = ()  # RFC 9370 ADDKE1.. methods, in order


@dataclass(frozen=True, slots=True)
class IkeSaEstablished:
    spi_i: bytes
    spi_r: bytes
    initiator: bool
    local_id: str
    remote_id: str
    algorithms: Algorithms
    udp_encap: bool
    connection: str
    # The identity the peer proved with EAP (RFC 7296 2.16), when it did; remote_id is its IDi.
    eap_identity: str | None = None


@dataclass(frozen=True, slots=True)
class ChildSaEstablished:
    """Everything the data plane needs to install both directions of one CHILD_SA.

    `spi_in` is the SPI peers put on packets to us (we allocated it); `keys_in` decrypts them.

    A rekeyed CHILD_SA names the inbound SPI of the one it `replaces` (install it with the
    same reqid). With `outbound_active` False, the inbound SA must be live at once but
    outbound traffic keeps using the old SA until `ChildSaRekeyed` says to switch (the rekey
    responder waits for the initiator's DELETE of the old SA, so the initiator is known to
    have installed its new inbound SA)."""

    name: str
    spi_in: int
    spi_out: int
    protocol: int  # ProtocolId.ESP or ProtocolId.AH
    mode: str  # "tunnel" or "transport"
    keys_in: DirectionKeys
    keys_out: DirectionKeys
    ts_local: tuple[Ts, ...]
    ts_remote: tuple[Ts, ...]
    algorithms: Algorithms
    udp_encap: bool
    lifetime_soft: int
    lifetime_hard: int
    replaces: int | None = None
    outbound_active: bool = True
    lifetime_soft_bytes: int = 0
    lifetime_hard_bytes: int = 0
    lifetime_soft_packets: int = 0
    lifetime_hard_packets: int = 0
    # We answered the exchange that created it (the peer installs its SAs only on our answer).
    responder: bool = False


@dataclass(frozen=True, slots=True)
class ChildSaRekeyed:
    """Outbound traffic of CHILD_SA `name` moves from `old_spi_in`'s SA pair to `new_spi_in`'s;
    the old pair stays for inbound stragglers until its own ChildSaDeleted."""

    name: str
    old_spi_in: int
    new_spi_in: int
    protocol: int


@dataclass(frozen=True, slots=True)
class IkeSaRekeyed:
    """This IKE SA was replaced: the new one (our SPI `new_local_spi`, already in the table)
    carries every CHILD_SA from now on; this one closes with IkeSaDeleted after its DELETE."""

    new_spi_i: bytes
    new_spi_r: bytes
    new_local_spi: bytes


@dataclass(frozen=True, slots=True)
class PeerDead:
    """Dead peer detection gave up; `action` is the configured dpd_action."""

    action: str


@dataclass(frozen=True, slots=True)
class ChildSaFailed:
    """CHILD_SA `name` could not be set up (or replaced); `reason` is the text for logs."""

    name: str
    reason: str
    code: FailureReason


@dataclass(frozen=True, slots=True)
class RekeyFailed:
    """A rekey of ours was refused or timed out, or the peer's could not be accepted.
    `sa` is "ike" or "child"; `name` the CHILD_SA's name (the connection's for "ike"). The SA
    stays until its retries run out (then its hard lifetime or the timeout ends it)."""

    sa: str
    name: str
    reason: str
    code: FailureReason


@dataclass(frozen=True, slots=True)
class ChildSaDeleted:
    name: str
    spi_in: int
    spi_out: int
    protocol: int
    by_peer: bool


@dataclass(frozen=True, slots=True)
class IkeSaDeleted:
    by_peer: bool


@dataclass(frozen=True, slots=True)
class IkeSaFailed:
    """The IKE SA is closed: with it every CHILD_SA (each reported by ChildSaDeleted first).
    INTERNAL_ERROR means the engine failed it closed after a bug of ours."""

    reason: str
    code: FailureReason


@dataclass(frozen=True, slots=True)
class InitialContactReceived:
    """The peer forgot all earlier SAs with us: the agent should drop stale SAs for `remote_id`."""

    remote_id: str


@dataclass(frozen=True, slots=True)
class PortsChanged:
    """NAT detected: the adapter should now send from/to UDP 4500 with the non-ESP marker."""

    local_port: int
    remote_port: int


@dataclass(frozen=True, slots=True)
class VirtualAddressesAssigned:
    """Gateway: the address pool gave `remote_id` these virtual addresses (CFG_REPLY); they are
    the client's until this IKE SA (or its rekeyed successor) ends."""

    remote_id: str
    addresses: tuple[str, ...]
    common_name: str = ""  # of the client's certificate (virtual_ip.Client)


@dataclass(frozen=True, slots=True)
class VirtualAddressRefused:
    """Gateway: `remote_id` authenticated but gets no address (the pool's reason, or it asked for
    none). It is told with INTERNAL_ADDRESS_FAILURE or FAILED_CP_REQUIRED in place of its first
    CHILD_SA (RFC 7296 2.21.2), and the gateway deletes the IKE SA right after."""

    remote_id: str
    reason: str
    notify: str


@dataclass(frozen=True, slots=True)
class LivenessChecked:
    alive: bool


@dataclass(frozen=True, slots=True)
class AddressesUpdated:
    """MOBIKE (RFC 4555): the IKE SA moved to `local` <-> `remote` (UPDATE_SA_ADDRESSES sent and
    answered, or received and accepted); every CHILD_SA's tunnel endpoints must follow, with
    ESP-in-UDP on or off as `udp_encap` says (NAT detection ran again on the new path)."""

    local: Address
    remote: Address
    udp_encap: bool


@dataclass(frozen=True, slots=True)
class AddressUpdateFailed:
    """Our UPDATE_SA_ADDRESSES was refused or unanswered (`code`); the IKE SA stays on its
    old addresses (or, unanswered, fails by the retransmission rules like any request)."""

    reason: str
    code: FailureReason


Event = (
    IkeSaEstablished
    | ChildSaEstablished
    | ChildSaFailed
    | ChildSaDeleted
    | ChildSaRekeyed
    | RekeyFailed
    | IkeSaRekeyed
    | PeerDead
    | IkeSaDeleted
    | IkeSaFailed
    | InitialContactReceived
    | PortsChanged
    | LivenessChecked
    | VirtualAddressesAssigned
    | VirtualAddressRefused
    | AddressesUpdated
    | AddressUpdateFailed
)
