"""Path MTU and TCP MSS for kernel-tunnelled traffic, so users do not meet MTU black holes.

Routes to tunnelled prefixes carry an MTU of the path MTU minus the ESP overhead of the tunnel's
negotiated transforms (the worst case of every negotiable suite until its outbound SA is known;
the formula is shared with the userspace data plane). Forwarded and locally sent TCP SYNs get
their MSS clamped to that route MTU by an nftables table the agent owns (`inet meshsec`): `rt mtu`
reads the MTU of the route each SYN takes (for tunnelled packets the XFRM bundle's, which is at
most the route's), so one rule per hook covers every tunnel and follows route changes.
"""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Any

from pyroute2 import IPRoute

from meshsec.agent.dataplane.api import (
    DataPlaneError,
    IPAddress,
    IPNetwork,
    IpsecProtocol,
    SecurityAssociation,
)
from meshsec.agent.dataplane.userspace.mtu import WORST_CASE_SUITES, Suite, tun_mtu

NFT_TABLE = "meshsec"

MSS_CLAMP_RULESET = f"""\
add table inet {NFT_TABLE}
delete table inet {NFT_TABLE}
table inet {NFT_TABLE} {{
  chain forward {{
    type filter hook forward priority mangle; policy accept;
    tcp flags syn / syn,rst tcp option maxseg size set rt mtu
  }}
  chain output {{
    type filter hook output priority mangle; policy accept;
    tcp flags syn / syn,rst tcp option maxseg size set rt mtu
  }}
}}
"""


def tunnel_mtu(underlay_mtu: int, *, ipv6_outer: bool, udp_encap: bool,
               suites: tuple[Suite, ...] = WORST_CASE_SUITES) -> int:
    """The largest inner packet that fits the underlay for every negotiable suite."""
    mtu = tun_mtu(underlay_mtu, suites, ipv6_outer=ipv6_outer, udp_encap=udp_encap)
    if mtu < 576:
        raise DataPlaneError(f"underlay MTU {underlay_mtu} leaves only {mtu} bytes for tunnelled packets")
    return mtu


def sa_suite(sa: SecurityAssociation) -> Suite | None:
    """The overhead-relevant transforms of an SA; None when the MTU formula does not know them
    (the caller then keeps the worst case)."""
    protocol = "ah" if sa.id.protocol is IpsecProtocol.AH else "esp"
    suite = Suite(protocol, sa.encryption.name if sa.encryption else None,
                  sa.integrity.name if sa.integrity else None)
    try:
        tun_mtu(1500, (suite,), ipv6_outer=False, udp_encap=False)
    except ValueError:
        return None
    return suite


def _ip(netns: str | None) -> Any:
    return IPRoute(netns=netns)


def _ensure_route(netns: str | None, prefix: IPNetwork, mtu: int, dev: str | None,
                  via: IPAddress | None, table: int) -> None:
    spec: dict[str, Any] = {"dst": str(prefix), "table": table, "metrics": {"mtu": mtu}}
    with _ip(netns) as ipr:
        if dev is not None:
            links = ipr.link_lookup(ifname=dev)
            if not links:
                raise DataPlaneError(f"route to {prefix}: no interface {dev!r}")
            spec["oif"] = links[0]
        if via is not None:
            spec["gateway"] = str(via)
        if dev is None and via is None:
            raise DataPlaneError(f"route to {prefix} needs a device or a gateway")
        ipr.route("replace", **spec)


def _delete_route(netns: str | None, prefix: IPNetwork, table: int) -> None:
    with _ip(netns) as ipr:
        try:
            ipr.route("del", dst=str(prefix), table=table)
        except Exception as exc:  # already gone is fine
            if getattr(exc, "code", None) != 3:  # ESRCH
                raise


async def ensure_tunnel_route(netns: str | None, prefix: IPNetwork, mtu: int, *, dev: str | None = None,
                              via: IPAddress | None = None, table: int = 254) -> None:
    ipaddress.ip_network(prefix)  # type check at the boundary
    await asyncio.to_thread(_ensure_route, netns, prefix, mtu, dev, via, table)


async def delete_tunnel_route(netns: str | None, prefix: IPNetwork, table: int = 254) -> None:
    await asyncio.to_thread(_delete_route, netns, prefix, table)


async def _nft(netns: str | None, ruleset: str) -> None:
    argv = ["nft", "-f", "-"]
    if netns is not None:
        argv = ["ip", "netns", "exec", netns, *argv]
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate(ruleset.encode())
    if proc.returncode != 0:
        raise DataPlaneError(f"nft (table inet {NFT_TABLE}) failed: {err.decode().strip()}")


async def ensure_mss_clamping(netns: str | None) -> None:
    """Install (or re-install, atomically) the agent's MSS clamping table."""
    await _nft(netns, MSS_CLAMP_RULESET)


async def remove_mss_clamping(netns: str | None) -> None:
    await _nft(netns, f"add table inet {NFT_TABLE}\ndelete table inet {NFT_TABLE}\n")
