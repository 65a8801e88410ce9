"""What the adapter remembers per IKE SA and CHILD_SA beyond the engine objects: the events
that set them up, their data-plane state and what status shows about them."""

from __future__ import annotations

from dataclasses import dataclass, field

from meshsec.agent.adapters.install import ChildKey
from meshsec.agent.adapters.spi import SpiStock
from meshsec.agent.ike import Address, ChildSaEstablished, IkeSa, IkeSaEstablished


@dataclass(slots=True)
class ChildRecord:
    event: ChildSaEstablished
    local: Address
    remote: Address
    installed: bool = False
    install_error: str | None = None
    # Its outbound SA carries traffic: at once, or (the successor of a rekey or replacement
    # we answered) from the engine's ChildSaRekeyed on.
    outbound_live: bool = False
    packets_in: int = 0  # inbound packet counter at the last traffic check

    @property
    def key(self) -> ChildKey:
        """Its key in the installer (the local address, protocol and inbound SPI)."""
        return (self.local.host, self.event.protocol, self.event.spi_in)


@dataclass(slots=True)
class SaRecord:
    """What the adapter knows about one IKE SA beyond the engine object: for status and logs.
    `handle` stays when an IKE rekey moves the record to the successor SA."""

    sa: IkeSa
    stock: SpiStock | None
    created: float  # wall clock, for display
    handle: int = 0
    established: IkeSaEstablished | None = None
    established_at: float | None = None
    children: dict[int, ChildRecord] = field(default_factory=dict)  # by inbound SPI
    outcome: str | None = None  # set when closed: "deleted", "deleted by peer", "failed: ..."
    replacing: set[str] = field(default_factory=set)  # children we asked to replace (`replace_child`)
    traffic_checked_at: float = float("-inf")  # loop time of the last read of inbound counters

    @property
    def name(self) -> str:
        return self.sa.config.name

    @property
    def traffic_name(self) -> str:
        """What the installer counts this SA's CHILD_SAs toward: its tunnel, or for one of the
        many road-warrior SAs of a shared `%any` config, the SA itself (a total per client)."""
        return f"{self.name}#{self.handle}" if self.sa.config.address_pool is not None else self.name
