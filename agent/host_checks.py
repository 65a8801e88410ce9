"""Host settings a tunnel needs but the agent does not own: forwarding on a site gateway, and
reverse-path filtering that would drop decapsulated packets. The agent never changes sysctls
behind the administrator's back; it says what is wrong, which sysctl, and the command to fix it.

A node is a site gateway for a local traffic selector that is more than one address it owns
(a /24 of a site behind it, not its own /32): the kernel must forward that site's packets into
the tunnel and the decapsulated ones out to the site, so `net.ipv4.ip_forward` (IPv6:
`net.ipv6.conf.all.forwarding`) must be 1.

Strict reverse-path filtering (`rp_filter` = 1; the effective value of an interface is the larger
of `conf.all` and `conf.<interface>`) drops a packet whose source is not routed back out of the
interface it arrived on. Decapsulated packets keep the interface their ESP arrived on: the one
holding the local tunnel address. The agent routes the remote selectors towards the peer, so
when the peer is reached through another interface (a multi-homed or asymmetric underlay) strict
mode drops every decapsulated packet. Loose mode (2) keeps the anti-spoofing check and works.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from meshsec.agent.ike.config import ChildConfig
from meshsec.agent.ike.ts import Ts

log = logging.getLogger(__name__)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class TunnelNeeds:
    """What one tunnel asks of the host: its selectors and its outer addresses."""

    local_prefixes: tuple[IPNetwork, ...]
    remote_prefixes: tuple[IPNetwork, ...]
    local_address: str | None  # None: any of ours
    peer: str | None  # None: not known yet (a responder-only connection)


def tunnel_needs(children: Iterable[ChildConfig], local_address: str | None, peer: str | None) -> TunnelNeeds:
    """The needs of one IKE connection from its children's traffic selectors."""
    def nets(selectors: Iterable[Ts]) -> tuple[IPNetwork, ...]:
        return tuple(n for ts in selectors for n in ipaddress.summarize_address_range(ts.start, ts.end))

    children = list(children)
    return TunnelNeeds(nets(ts for c in children for ts in c.local_ts),
                       nets(ts for c in children for ts in c.remote_ts), local_address, peer)


def read_sysctl(name: str) -> str | None:
    try:
        return Path("/proc/sys", *name.split(".")).read_text().strip()
    except OSError:
        return None


def _ip_json(*args: str) -> list[dict[str, object]]:
    out = subprocess.run(["ip", "-j", *args], capture_output=True, text=True, check=False).stdout
    try:
        found = json.loads(out or "[]")
    except ValueError:
        return []
    return found if isinstance(found, list) else []


def owned_addresses() -> dict[str, str]:
    """Address -> interface, for every address on this host."""
    owned: dict[str, str] = {}
    for link in _ip_json("addr", "show"):
        for info in link.get("addr_info", []) or []:  # type: ignore[attr-defined]
            owned[str(info["local"])] = str(link["ifname"])
    return owned


def route_interface(dst: str) -> str | None:
    routes = _ip_json("route", "get", dst)
    return str(routes[0]["dev"]) if routes and "dev" in routes[0] else None


def host_problems(tunnels: Iterable[TunnelNeeds], *, sysctl: Callable[[str], str | None] = read_sysctl,
                  addresses: Callable[[], dict[str, str]] = owned_addresses,
                  route_dev: Callable[[str], str | None] = route_interface) -> list[str]:
    """One line per problem: the sysctl, why it matters here, and the command that fixes it."""
    tunnels = list(tunnels)
    owned = addresses()
    problems: list[str] = []
    sites: dict[int, set[IPNetwork]] = {4: set(), 6: set()}
    for t in tunnels:
        for prefix in t.local_prefixes:
            if prefix.num_addresses > 1 or str(prefix.network_address) not in owned:
                sites[prefix.version].add(prefix)
    for version, key in ((4, "net.ipv4.ip_forward"), (6, "net.ipv6.conf.all.forwarding")):
        if sites[version] and sysctl(key) not in (None, "1"):
            names = ", ".join(sorted(map(str, sites[version]))[:3])
            problems.append(f"{key} is {sysctl(key)} but this node is the gateway for {names}: the "
                            f"kernel will not forward that traffic through the tunnel; fix: "
                            f"sysctl -w {key}=1 (and persist it in /etc/sysctl.d/)")
    seen: set[str] = set()
    for t in tunnels:
        if t.local_address is None or t.peer is None or ":" in t.local_address:
            continue  # rp_filter is IPv4 only
        arrival = owned.get(t.local_address)
        towards_peer = route_dev(t.peer)
        if arrival is None or towards_peer is None or arrival == towards_peer or arrival in seen:
            continue
        values = [sysctl(f"net.ipv4.conf.{n}.rp_filter") for n in ("all", arrival)]
        if max((int(v) for v in values if v is not None and v.isdigit()), default=0) != 1:
            continue
        seen.add(arrival)
        remote = ", ".join(str(p) for p in t.remote_prefixes if p.version == 4) or "the peer's sites"
        problems.append(
            f"net.ipv4.conf.{arrival}.rp_filter is strict (1, from conf.all or conf.{arrival}): ESP "
            f"from {t.peer} arrives on {arrival} but the route back to {remote} leaves through "
            f"{towards_peer}, so every decapsulated packet is dropped; fix: sysctl -w "
            f"net.ipv4.conf.all.rp_filter=2 net.ipv4.conf.{arrival}.rp_filter=2 (loose)")
    return problems


def warn_about_host(tunnels: Iterable[TunnelNeeds], already: set[str] | None = None) -> list[str]:
    """Logs each problem once as a WARNING (`already`: what was said before); never raises."""
    try:
        problems = host_problems(tunnels)
    except Exception:  # a check must not stop the agent
        log.exception("checking forwarding and rp_filter sysctls failed")
        return []
    for problem in problems:
        if already is None or problem not in already:
            log.warning("host: %s", problem)
            if already is not None:
                already.add(problem)
    return problems
