"""Removes data-plane state this agent owns but no live CHILD_SA accounts for (a removal that
failed, an install that raced a delete). Owned state only: `list_owned` never shows anything
another program created. An object must be unaccounted for in two passes in a row, so an install
in progress is never mistaken for a leak."""

from __future__ import annotations

import asyncio
import logging

from meshsec.agent.adapters.ike import IkeAdapter
from meshsec.agent.dataplane.api import DataPlane, DataPlaneError, Direction, SaId, TrafficSelector

log = logging.getLogger(__name__)

PolicyKey = tuple[TrafficSelector, Direction]


class Sweeper:
    def __init__(self, adapter: IkeAdapter, dataplane: DataPlane, period: float = 10.0) -> None:
        self.adapter = adapter
        self.dataplane = dataplane
        self.period = period
        self.removed = 0
        self._suspect_sas: set[SaId] = set()
        self._suspect_policies: set[PolicyKey] = set()

    def expected(self) -> tuple[set[SaId], set[PolicyKey]]:
        sas: set[SaId] = set()
        policies: set[PolicyKey] = set()
        installer = self.adapter.installer
        if installer is not None:
            for plan in installer.installed.values():
                sas.update((plan.inbound.id, plan.outbound.id))
                policies.update((p.selector, p.direction) for p in plan.policies)
        return sas, policies

    async def sweep(self) -> int:
        await self.adapter.settle(1.0)
        owned = await self.dataplane.list_owned()
        sas, policies = self.expected()
        extra_sas = {s for s in owned.sas if s not in sas}
        extra_policies = {p for p in owned.policies if p not in policies}
        removed = 0
        for sa_id in extra_sas & self._suspect_sas:
            log.warning("removing stale SA %s spi %08x (no CHILD_SA owns it)", sa_id.dst, sa_id.spi)
            await self.dataplane.delete_sa(sa_id)
            removed += 1
        for sel, direction in extra_policies & self._suspect_policies:
            log.warning("removing stale %s policy %s -> %s", direction.value, sel.src, sel.dst)
            await self.dataplane.delete_policy(sel, direction)
            removed += 1
        self._suspect_sas = extra_sas - self._suspect_sas
        self._suspect_policies = extra_policies - self._suspect_policies
        self.removed += removed
        return removed

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.period)
            try:
                await self.sweep()
            except DataPlaneError as exc:
                log.warning("data-plane sweep failed: %s", exc)
