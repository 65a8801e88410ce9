"""A data plane that only records: for `dataplane: none` in standalone mode, where IKE runs
without packet processing (events and status only). It keeps the SAs and policies it was
given so status and tests can see exactly what a real backend would have been asked to do."""

from __future__ import annotations

import asyncio
import secrets
import socket
from collections.abc import AsyncIterator

from meshsec.agent.dataplane.api import (
    Capabilities,
    DataPlaneError,
    DataPlaneEvent,
    Direction,
    IkeReceiver,
    IPAddress,
    IpsecProtocol,
    OwnedState,
    Policy,
    SaCounters,
    SaId,
    SecurityAssociation,
    TrafficSelector,
)

_MIN_SPI = 0x100


class RecordingDataPlane:
    def __init__(self) -> None:
        self.sas: dict[SaId, SecurityAssociation] = {}
        self.policies: dict[tuple[TrafficSelector, Direction], Policy] = {}
        self.reserved: set[SaId] = set()
        self.log: list[str] = []  # operation names in order, no key material
        self.counted: dict[SaId, SaCounters] = {}  # what `counters` reports (tests set it); else 0

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            backend="none",
            esp=False,
            ah=False,
            aead_gcm=False,
            udp_encapsulation=False,
            notes=("records SAs and policies; processes no packets",),
        )

    async def start(self) -> None:
        self.log.append("start")

    async def close(self) -> None:
        self.log.append("close")

    async def allocate_spi(self, protocol: IpsecProtocol, src: IPAddress, dst: IPAddress) -> int:
        while True:
            spi = _MIN_SPI + secrets.randbelow(0xFFFFFFFF - _MIN_SPI)
            sa_id = SaId(dst, spi, protocol)
            if sa_id not in self.sas and sa_id not in self.reserved:
                self.reserved.add(sa_id)
                self.log.append(f"allocate_spi {protocol.name} {spi:#010x}")
                return spi

    async def add_sa(self, sa: SecurityAssociation) -> None:
        if sa.id in self.sas:
            raise DataPlaneError(f"SA {sa.id} is already installed")
        self.reserved.discard(sa.id)
        self.sas[sa.id] = sa
        self.log.append(f"add_sa {sa.direction.value} {sa.id.spi:#010x}")

    async def update_sa(self, sa: SecurityAssociation) -> None:
        if sa.id not in self.sas:
            raise DataPlaneError(f"SA {sa.id} is not installed")
        self.sas[sa.id] = sa
        self.log.append(f"update_sa {sa.id.spi:#010x}")

    async def migrate_sa(self, old: SaId, sa: SecurityAssociation) -> None:
        if old not in self.sas:
            raise DataPlaneError(f"SA {old} is not installed")
        if sa.id != old:
            if sa.id in self.sas:
                raise DataPlaneError(f"SA {sa.id} is already installed")
            if old in self.counted:  # the counters carry over
                self.counted[sa.id] = self.counted[old]
        self.sas[sa.id] = sa
        self.log.append(f"migrate_sa {sa.direction.value} {sa.id.spi:#010x} {old.dst} -> {sa.id.dst}")

    async def delete_sa(self, sa_id: SaId) -> None:
        self.sas.pop(sa_id, None)
        self.counted.pop(sa_id, None)
        self.reserved.discard(sa_id)
        self.log.append(f"delete_sa {sa_id.spi:#010x}")

    async def ensure_policy(self, policy: Policy) -> None:
        self.policies[(policy.selector, policy.direction)] = policy
        sel = policy.selector
        self.log.append(f"ensure_policy {policy.direction.value} {sel.src}->{sel.dst}")

    async def delete_policy(self, selector: TrafficSelector, direction: Direction) -> None:
        self.policies.pop((selector, direction), None)
        self.log.append(f"delete_policy {direction.value} {selector.src}->{selector.dst}")

    async def counters(self, sa_id: SaId) -> SaCounters:
        if sa_id not in self.sas:
            raise DataPlaneError(f"SA {sa_id} is not installed")
        return self.counted.get(sa_id, SaCounters(bytes=0, packets=0))

    async def list_owned(self) -> OwnedState:
        return OwnedState(tuple(self.sas), tuple(self.policies))

    async def adopt(self) -> OwnedState:
        self.log.append("adopt")
        return await self.list_owned()

    async def flush_owned(self) -> None:
        self.sas.clear()
        self.policies.clear()
        self.reserved.clear()
        self.log.append("flush_owned")

    async def events(self) -> AsyncIterator[DataPlaneEvent]:
        # Nothing ever expires here; wait forever so consumers need no special case.
        await asyncio.Event().wait()
        if False:  # pragma: no cover - makes this an async generator
            yield

    async def bypass_socket(self, sock: socket.socket) -> None:
        return None  # it programs no policies that could catch IKE

    def held_encap_socket(self, host: str, port: int) -> socket.socket | None:
        return None  # nothing outlives the agent

    async def attach_encap_socket(self, sock: socket.socket, ike_receiver: IkeReceiver) -> None:
        raise DataPlaneError("the recording data plane does not read ESP-in-UDP; the IKE adapter keeps 4500")
