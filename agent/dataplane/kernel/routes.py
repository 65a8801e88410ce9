"""Routes for tunnelled remote traffic selectors (policy-based mode), like strongSwan's table 220.

An outbound tunnel policy only encrypts packets that already match its selector, and a packet the
host itself sends gets its source address from the route it takes. So for each remote prefix the
agent installs a route in a table of its own (default 220, looked up by `from all lookup 220` at
priority 220, strongSwan's `charon.routing_table`/`routing_table_prio` defaults) that leads towards
the peer (the next hop to the template's outer destination) with `src` = an address the host owns
inside the policy's source selector, and the MTU left of the path MTU (the smaller of the
interface's MTU and an MTU on the route to the peer: one an administrator set, or a learned PMTU)
after the ESP overhead of the tunnel's outbound SA (its transforms, UDP encapsulation or not), or
the worst case of every negotiable suite in ESP-in-UDP while that SA is unknown.

The routes carry the agent's route protocol number (default 211, as the userspace backend's), so
`flush` removes exactly them by (table, protocol) and nothing an administrator or strongSwan put
into the same table. The rule is shaped like strongSwan's and left in place: it is idempotent and
harmless over an empty table.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import socket
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute

from meshsec.agent.dataplane.api import DataPlaneError, IPAddress, IPNetwork
from meshsec.agent.dataplane.kernel.mtu import tunnel_mtu
from meshsec.agent.dataplane.userspace.mtu import WORST_CASE_SUITES, Suite

log = logging.getLogger(__name__)

_FAMILIES = {4: socket.AF_INET, 6: socket.AF_INET6}
_RTN_UNICAST = 1


@dataclass(frozen=True, slots=True)
class RouteTable:
    """Where the agent's routes live and how they are recognised."""

    table: int = 220
    rule_priority: int = 220
    protocol: int = 211


DEFAULT_ROUTE_TABLE = RouteTable()


@dataclass(frozen=True, slots=True)
class TunnelRoute:
    """A route to `dst` (a remote selector) for traffic from `src_selector` tunnelled to `peer`;
    its MTU leaves room for `suite` (None: every negotiable suite) and, if `udp_encap`, UDP."""

    dst: IPNetwork
    src_selector: IPNetwork
    peer: IPAddress
    suite: Suite | None = None
    udp_encap: bool = True

    @property
    def suites(self) -> tuple[Suite, ...]:
        return WORST_CASE_SUITES if self.suite is None else (self.suite,)


class _Hops:
    """Next hop, interface MTU and local addresses, each looked up once per batch."""

    def __init__(self, ipr: Any) -> None:
        self.ipr = ipr
        self._hops: dict[IPAddress, tuple[str, str | None, int] | None] = {}
        self._addrs: dict[int, list[IPAddress]] = {}

    def hop(self, peer: IPAddress) -> tuple[str, str | None, int] | None:
        """(interface, gateway or None when the peer is on-link, path MTU); None: unreachable."""
        if peer not in self._hops:
            self._hops[peer] = self._lookup(peer)
        return self._hops[peer]

    def _lookup(self, peer: IPAddress) -> tuple[str, str | None, int] | None:
        try:
            found = self.ipr.route("get", dst=str(peer))
        except Exception:  # ENETUNREACH and friends
            return None
        if not found or found[0]["type"] != _RTN_UNICAST or found[0].get_attr("RTA_OIF") is None:
            return None
        oif = int(found[0].get_attr("RTA_OIF"))
        link = self.ipr.link("get", index=oif)[0]
        path_mtu = int(link.get_attr("IFLA_MTU"))
        metrics = found[0].get_attr("RTA_METRICS")
        route_mtu = metrics.get_attr("RTAX_MTU") if metrics is not None else None
        if route_mtu:  # `ip route ... mtu N` towards the peer, or a PMTU the kernel learned
            path_mtu = min(path_mtu, int(route_mtu))
        return str(link.get_attr("IFLA_IFNAME")), found[0].get_attr("RTA_GATEWAY"), path_mtu

    def local_in(self, net: IPNetwork) -> IPAddress | None:
        if net.version not in self._addrs:
            self._addrs[net.version] = [ipaddress.ip_address(a.get_attr("IFA_ADDRESS"))
                                        for a in self.ipr.get_addr(family=_FAMILIES[net.version])]
        return next((a for a in self._addrs[net.version] if a in net), None)


async def install(netns: str | None, where: RouteTable, routes: list[TunnelRoute]) -> dict[IPNetwork, str]:
    """Install (replace) the routes; returns what failed and why. Next hops and sources come from
    one netlink session; the routes go in one `ip -batch` (pyroute2 costs ~1 ms per route here,
    `ip -batch` a tenth of that, see docs/benchmarks.md)."""
    lines, failures = await asyncio.to_thread(_plan, netns, where, routes)
    if not lines:
        return failures
    argv = ["ip", *(["-n", netns] if netns else []), "-force", "-batch", "-"]
    proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.PIPE,
                                                stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate("".join(f"{line}\n" for _, line in lines).encode())
    why = "unknown error"
    for text in err.decode(errors="replace").splitlines():
        failed = re.match(r"Command failed -:(\d+)", text)
        if failed is None:
            why = text.removeprefix("Error: ").strip() or why
        elif 0 < (n := int(failed.group(1))) <= len(lines):
            prefix = lines[n - 1][0]
            failures[prefix] = f"route to {prefix}: {why}"
    if proc.returncode and not failures:
        raise DataPlaneError(f"`{' '.join(argv)}` failed: {err.decode(errors='replace').strip()}")
    return failures


def _plan(netns: str | None, where: RouteTable,
          routes: list[TunnelRoute]) -> tuple[list[tuple[IPNetwork, str]], dict[IPNetwork, str]]:
    """The `ip -batch` lines for the routes that can be made, and why the others cannot."""
    failures: dict[IPNetwork, str] = {}
    lines: list[tuple[IPNetwork, str]] = []
    with IPRoute(netns=netns) as ipr:
        hops = _Hops(ipr)
        for version in sorted({r.dst.version for r in routes}):
            _ensure_rule(ipr, where, _FAMILIES[version])
        for route in routes:
            hop = hops.hop(route.peer)
            if hop is None:
                failures[route.dst] = f"route to {route.dst}: no route to the peer {route.peer}"
                continue
            ifname, gateway, path_mtu = hop
            try:
                mtu = tunnel_mtu(path_mtu, ipv6_outer=route.peer.version == 6, udp_encap=route.udp_encap,
                                 suites=route.suites)
            except DataPlaneError as exc:
                failures[route.dst] = f"route to {route.dst}: {exc}"
                continue
            line = f"route replace {route.dst} table {where.table} proto {where.protocol} dev {ifname}"
            if route.dst.version == route.peer.version:
                line += f" via {gateway or route.peer}"
            src = hops.local_in(route.src_selector)
            if src is not None:
                line += f" src {src}"
            lines.append((route.dst, f"{line} mtu {mtu}"))
    return lines, failures


def delete(netns: str | None, where: RouteTable, prefixes: list[IPNetwork]) -> None:
    with IPRoute(netns=netns) as ipr:
        for prefix in prefixes:
            _delete(ipr, where, str(prefix), _FAMILIES[prefix.version])


def prefixes(netns: str | None, where: RouteTable) -> list[IPNetwork]:
    """The destinations of every route with our table and protocol."""
    with IPRoute(netns=netns) as ipr:
        return [ipaddress.ip_network(dst) for dst, _ in _ours(ipr, where)]


def flush(netns: str | None, where: RouteTable) -> int:
    """Remove every route with our table and protocol, nothing else; returns how many."""
    removed = 0
    with IPRoute(netns=netns) as ipr:
        for dst, family in _ours(ipr, where):
            _delete(ipr, where, dst, family)
            removed += 1
    return removed


def _ours(ipr: Any, where: RouteTable) -> list[tuple[str, int]]:
    found: list[tuple[str, int]] = []
    for family in _FAMILIES.values():
        for route in ipr.get_routes(family=family, table=where.table):
            if route["proto"] != where.protocol or route.get_attr("RTA_TABLE") != where.table:
                continue
            dst = route.get_attr("RTA_DST") or ("::" if family == socket.AF_INET6 else "0.0.0.0")
            found.append((f"{dst}/{route['dst_len']}", family))
    return found


def _delete(ipr: Any, where: RouteTable, dst: str, family: int) -> None:
    try:
        ipr.route("del", dst=dst, table=where.table, proto=where.protocol, family=family)
    except Exception as exc:
        if getattr(exc, "code", None) != 3:  # ESRCH: already gone
            raise


def _ensure_rule(ipr: Any, where: RouteTable, family: int) -> None:
    for rule in ipr.get_rules(family=family):
        if rule.get_attr("FRA_PRIORITY") == where.rule_priority and rule.get_attr("FRA_TABLE") == where.table:
            return
    ipr.rule("add", table=where.table, priority=where.rule_priority, family=family)
    log.info("routing rule: from all lookup %d, priority %d (%s)", where.table, where.rule_priority,
             "IPv6" if family == socket.AF_INET6 else "IPv4")
