"""The adapter as the reconciler sees it (agent/node/ike_port.py's `IkeRuntime`): frozen views
of the live IKE SAs, commands by handle. The one place that reads engine state for the
reconciler, so engine internals stay behind this module."""

from __future__ import annotations

from meshsec.agent.adapters.ike import IkeAdapter
from meshsec.agent.adapters.records import SaRecord
from meshsec.agent.ike import Address, ChildConfig, IkeConfig, State
from meshsec.agent.ike.child import ChildSa
from meshsec.agent.ike.states import ChildState
from meshsec.agent.node.ike_port import ChildPhase, ChildTraffic, ChildView, SaHandle, SaPhase, SaView

_SA_PHASE = {
    State.CREATED: SaPhase.CONNECTING,
    State.CONNECTING: SaPhase.CONNECTING,
    State.AUTHENTICATING: SaPhase.CONNECTING,
    State.ESTABLISHED: SaPhase.ESTABLISHED,
    State.DELETING: SaPhase.DELETING,
    State.CLOSED: SaPhase.DELETING,  # not listed by `sas`; an event may still show one
}
_CHILD_PHASE = {
    ChildState.INSTALLED: ChildPhase.ACTIVE,
    ChildState.REKEYING: ChildPhase.REKEYING,
    ChildState.REKEYED: ChildPhase.RETIRING,
    ChildState.DELETING: ChildPhase.RETIRING,
}


def view_of(record: SaRecord) -> SaView:
    sa = record.sa
    children = tuple(_child_view(record, c) for c in sa.children.values())
    return SaView(
        handle=SaHandle(record.handle),
        tunnel=record.name,
        authenticated=sa.initiator or sa.remote_identity is not None,
        initiator=sa.initiator,
        spi_i=sa.spi_i,
        spi_r=sa.spi_r,
        local=sa.local,
        remote=sa.remote,
        phase=_SA_PHASE[sa.state],
        config=sa.config,
        created=record.created,
        established=record.established,
        established_at=record.established_at,
        nat_detected=sa.nat_local or sa.nat_remote,
        rekeying=sa.rekeying_ike() or any(c.phase is ChildPhase.REKEYING for c in children),
        rekeying_ike=sa.rekeying_ike(),
        child_exchange_in_flight=sa.child_exchange_in_flight(),
        replacing=frozenset(record.replacing),
        children=children,
    )


def _child_view(record: SaRecord, child: ChildSa) -> ChildView:
    known = record.children.get(child.spi_in)
    return ChildView(
        spi_in=child.spi_in,
        spi_out=child.spi_out,
        name=child.name,
        config=child.config,
        phase=_CHILD_PHASE[child.state],
        ready=known is not None and known.installed and known.outbound_live,
        event=known.event if known is not None else None,
    )


class AdapterRuntime:
    """`IkeRuntime` over an IkeAdapter (its event callback passes `view_of(record)` on)."""

    def __init__(self, adapter: IkeAdapter) -> None:
        self.adapter = adapter

    @property
    def ike_port(self) -> int:
        return self.adapter.settings.ike_port

    def sas(self) -> list[SaView]:
        # During an IKE rekey a record is listed under both SAs until the old one closes.
        # Road warriors' SAs are no tunnels (agent/node/remote_access.py owns them).
        records = {r.handle: r for r in self.adapter.active() if r.sa.config.address_pool is None}
        return [view_of(r) for r in records.values()]

    async def initiate(self, config: IkeConfig, remote: Address, local: Address | None) -> None:
        await self.adapter.initiate(config, remote, local)

    def delete(self, sa: SaHandle) -> None:
        record = self._live(sa)
        if record is not None and record.sa.state is not State.DELETING:
            self.adapter.delete(record)

    def drop(self, sa: SaHandle) -> None:
        if (record := self._live(sa)) is not None:
            self.adapter.drop(record)

    def delete_child(self, sa: SaHandle, spi_in: int) -> None:
        record = self._live(sa)
        child = record.sa.children.get(spi_in) if record is not None else None
        if record is not None and child is not None and child.state is ChildState.INSTALLED:
            self.adapter.delete_child(record, spi_in)

    def replace_child(self, sa: SaHandle, spi_in: int, config: ChildConfig) -> None:
        record = self._live(sa)
        child = record.sa.children.get(spi_in) if record is not None else None
        if record is None or child is None or child.state is not ChildState.INSTALLED:
            return
        if config.name not in record.replacing:
            self.adapter.replace_child(record, spi_in, config)

    def reconfigure(self, sa: SaHandle, config: IkeConfig) -> None:
        if (record := self._live(sa)) is not None:
            self.adapter.reconfigure(record, config)

    async def child_traffic(self, sa: SaHandle, spi_in: int) -> ChildTraffic | None:
        record = self.adapter.by_handle.get(sa)
        installer = self.adapter.installer
        child = record.children.get(spi_in) if record is not None else None
        if child is None or installer is None:
            return None
        t = await installer.counters(child.key)
        return ChildTraffic(t.bytes_in, t.packets_in, t.bytes_out, t.packets_out) if t is not None else None

    def _live(self, sa: SaHandle) -> SaRecord | None:
        """The record of a handle, if its SA is still live (a stale handle does nothing: the
        next reconcile sees the SA gone)."""
        record = self.adapter.by_handle.get(sa)
        return record if record is not None and not record.sa.closed else None
