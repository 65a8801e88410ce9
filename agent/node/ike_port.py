"""The reconciler's narrow view of the IKE side: frozen snapshots of the live IKE SAs and the
handful of commands it issues. The adapter implements `IkeRuntime` (agent/adapters/runtime.py);
the reconciler tests use a fake one. Nothing here exposes an engine object, so the reconciler
never reads engine internals nor writes their fields."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import NewType, Protocol

from meshsec.agent.ike import Address, ChildConfig, ChildSaEstablished, IkeConfig, IkeSaEstablished

SaHandle = NewType("SaHandle", int)  # names one IKE SA (and its successors after IKE rekeys)


class SaPhase(Enum):
    CONNECTING = "connecting"  # IKE_SA_INIT / IKE_AUTH under way
    ESTABLISHED = "established"
    DELETING = "deleting"  # our DELETE is queued or in flight


class ChildPhase(Enum):
    ACTIVE = "active"  # carries traffic (or will once installed)
    REKEYING = "rekeying"  # our rekey of it is under way
    RETIRING = "retiring"  # replaced by a rekey, or our DELETE of it is under way


@dataclass(frozen=True, slots=True)
class ChildView:
    spi_in: int
    spi_out: int
    name: str
    config: ChildConfig | None  # what it was negotiated with
    phase: ChildPhase
    # Installed in the data plane with outbound traffic on it.
    ready: bool
    event: ChildSaEstablished | None = None  # its negotiated parameters, for status


@dataclass(frozen=True, slots=True)
class SaView:
    handle: SaHandle
    tunnel: str  # the config's name; for an unauthenticated responder SA only a first guess
    authenticated: bool  # we initiated it, or IKE_AUTH chose its config
    initiator: bool
    spi_i: bytes
    spi_r: bytes
    local: Address
    remote: Address
    phase: SaPhase
    config: IkeConfig
    created: float  # wall clock
    established: IkeSaEstablished | None = None
    established_at: float | None = None  # wall clock
    nat_detected: bool = False
    rekeying: bool = False  # an IKE or CHILD_SA rekey is under way
    rekeying_ike: bool = False
    child_exchange_in_flight: bool = False  # our CREATE_CHILD_SA, or a CHILD_SA mid-rekey
    replacing: frozenset[str] = frozenset()  # CHILD_SA names we asked to replace, still on the way
    children: tuple[ChildView, ...] = ()

    @property
    def local_spi(self) -> bytes:
        return self.spi_i if self.initiator else self.spi_r

    @property
    def is_established(self) -> bool:
        return self.phase is SaPhase.ESTABLISHED


@dataclass(frozen=True, slots=True)
class ChildTraffic:
    bytes_in: int
    packets_in: int
    bytes_out: int
    packets_out: int


class IkeRuntime(Protocol):
    """What the reconciler (and the status report) may ask of the IKE side. Commands are
    idempotent intents checked against the live state: one that no longer applies (the SA
    gone or already deleting, the CHILD_SA no longer active, a replacement already on its way)
    does nothing, so a command from a slightly old view is safe."""

    @property
    def ike_port(self) -> int: ...

    def sas(self) -> list[SaView]:
        """Every live IKE SA once (an SA being replaced by an IKE rekey counts once)."""
        ...

    async def initiate(self, config: IkeConfig, remote: Address, local: Address | None) -> None:
        """Starts an IKE SA; raises OSError when the peer cannot be reached from here."""
        ...

    def delete(self, sa: SaHandle) -> None:
        """INFORMATIONAL DELETE of the IKE SA and its CHILD_SAs."""
        ...

    def drop(self, sa: SaHandle) -> None:
        """Forgets the IKE SA without an exchange (the peer already forgot it)."""
        ...

    def delete_child(self, sa: SaHandle, spi_in: int) -> None: ...

    def replace_child(self, sa: SaHandle, spi_in: int, config: ChildConfig) -> None:
        """CHILD_SA `spi_in` replaced by one negotiated with `config`, make-before-break (the
        engine moves traffic over and deletes the old pair)."""
        ...

    def reconfigure(self, sa: SaHandle, config: IkeConfig) -> None:
        """Accepts a config that differs from the SA's only in CHILD_SA settings; later
        CHILD_SAs (replacements, rekeys) use it."""
        ...

    async def child_traffic(self, sa: SaHandle, spi_in: int) -> ChildTraffic | None: ...
