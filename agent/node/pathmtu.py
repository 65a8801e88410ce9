"""The MTU toward each peer endpoint as this host's routing sees it, for status reports.

A route's learned path MTU (an ICMP "fragmentation needed" or a route's `mtu` metric) wins over
the egress interface's MTU. Lookups go over one netlink session per report, in a thread, and are
kept for `TTL_S`: a report every few seconds must not cost a route lookup per tunnel each time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)

TTL_S = 10.0
_RTN_UNICAST = 1


class PathMtu:
    def __init__(self, ttl_s: float = TTL_S) -> None:
        self.ttl_s = ttl_s
        self._known: dict[str, tuple[float, int]] = {}  # address -> (monotonic time, mtu)
        self._failed = False

    async def lookup(self, addresses: Iterable[str]) -> dict[str, int]:
        """address -> MTU (0: unknown); addresses not looked up within TTL_S are looked up now."""
        now = time.monotonic()
        wanted = set(addresses)
        due = sorted(a for a in wanted if now - self._known.get(a, (-self.ttl_s - 1, 0))[0] > self.ttl_s)
        if due and not self._failed:
            try:
                found = await asyncio.to_thread(route_mtus, due)
            except ImportError:  # no pyroute2 on this host: path MTU stays unknown
                log.info("pyroute2 is not installed; path MTU is not reported")
                self._failed = True
                found = {}
            for address in due:
                self._known[address] = (now, found.get(address, 0))
        for gone in set(self._known) - wanted:
            del self._known[gone]
        return {a: self._known.get(a, (0.0, 0))[1] for a in wanted}


def route_mtus(addresses: list[str]) -> dict[str, int]:
    """address -> MTU from the routing table now (0: unknown); needs pyroute2."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        return {a: _lookup(ipr, a) for a in addresses}


def _lookup(ipr: Any, address: str) -> int:
    try:
        found = ipr.route("get", dst=address)
    except Exception:  # ENETUNREACH, a malformed address: unknown, not an agent failure
        return 0
    if not found or found[0]["type"] != _RTN_UNICAST:
        return 0
    route = found[0]
    metrics = route.get_attr("RTA_METRICS")
    learned = metrics.get_attr("RTAX_MTU") if metrics is not None else None
    if learned:
        return int(learned)
    oif = route.get_attr("RTA_OIF")
    if oif is None:
        return 0
    link = ipr.link("get", index=int(oif))[0]
    return int(link.get_attr("IFLA_MTU") or 0)
