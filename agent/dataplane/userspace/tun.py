"""The TUN device and the routes/rules that steer remote-subnet traffic into it.

Routes live in their own table (default 2730) with their own route protocol number (default 211),
so after a crash the next start can remove exactly the stale routes this backend created and
nothing else. One `ip rule` per address family sends traffic that does NOT carry the data plane's
firewall mark to that table; the data plane's own sockets (raw ESP/AH, the shared UDP 4500
socket) carry the mark, so their outer packets bypass the tunnel routes even when an outer
destination is also an inner one (transport mode).

Route and rule changes are rare control-plane work and use the `ip` tool, whose errors are
readable; the hot path never touches them.
"""

from __future__ import annotations

import asyncio
import fcntl
import ipaddress
import json
import os
import struct

from meshsec.agent.dataplane.api import DataPlaneError, IPNetwork

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000


def open_tun(name: str) -> tuple[int, str]:
    """Create (or attach to) TUN device `name`, non-blocking, without the packet-info prefix."""
    if not name or len(name.encode()) > 15:
        raise DataPlaneError(f"TUN name {name!r} must be 1-15 bytes")
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        res = fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    except OSError as exc:
        os.close(fd)
        raise DataPlaneError(f"TUNSETIFF {name!r} failed: {exc}") from exc
    return fd, res[:16].rstrip(b"\0").decode()


async def ip(*args: str, check: bool = True) -> str:
    proc = await asyncio.create_subprocess_exec(
        "ip", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    if check and proc.returncode:
        raise DataPlaneError(f"`ip {' '.join(args)}` failed: {err.decode().strip()}")
    return out.decode()


class TunRoutes:
    """Routes for remote subnets via the TUN device, reference-counted per prefix."""

    def __init__(self, device: str, table: int, protocol: int, mark: int, rule_priority: int) -> None:
        self.device = device
        self.table = str(table)
        self.protocol = str(protocol)
        self.mark = mark
        self.rule_priority = str(rule_priority)
        self._refs: dict[IPNetwork, int] = {}

    async def setup(self, mtu: int) -> None:
        await ip("link", "set", "dev", self.device, "mtu", str(mtu), "up")
        await self.remove_stale()
        for family in ("-4", "-6"):
            await self._delete_rules(family)
            await ip(family, "rule", "add", "not", "fwmark", f"{self.mark:#x}/{self.mark:#x}",
                     "table", self.table, "pref", self.rule_priority)

    async def teardown(self) -> None:
        for family in ("-4", "-6"):
            await self._delete_rules(family)
        self._refs.clear()

    async def _delete_rules(self, family: str) -> None:
        for _ in range(16):  # each call removes one duplicate left by an earlier run
            if not (await ip(family, "rule", "show", "pref", self.rule_priority, check=False)).strip():
                return
            await ip(family, "rule", "del", "pref", self.rule_priority, check=False)

    async def remove_stale(self) -> None:
        """Remove every route this backend ever created (by table and protocol), nothing else."""
        for family in ("-4", "-6"):
            await ip(family, "route", "flush", "table", self.table, "proto", self.protocol, check=False)
        self._refs.clear()

    async def add(self, prefix: IPNetwork, src_hint: IPNetwork | None) -> None:
        n = self._refs.get(prefix, 0)
        self._refs[prefix] = n + 1
        if n:
            return
        args = ["route", "replace", str(prefix), "dev", self.device,
                "table", self.table, "proto", self.protocol]
        src = await self._local_address_in(src_hint) if src_hint is not None else None
        if src is not None:
            args += ["src", src]
        await ip(f"-{prefix.version}", *args)

    async def remove(self, prefix: IPNetwork) -> None:
        n = self._refs.get(prefix, 0)
        if n > 1:
            self._refs[prefix] = n - 1
            return
        self._refs.pop(prefix, None)
        await ip(f"-{prefix.version}", "route", "del", str(prefix), "dev", self.device, "table", self.table,
                 "proto", self.protocol, check=False)

    def owned(self) -> tuple[IPNetwork, ...]:
        return tuple(self._refs)

    @staticmethod
    async def _local_address_in(net: IPNetwork) -> str | None:
        """A local address inside the local selector, so host-originated traffic gets a source the
        peer's inbound policy accepts (what libipsec does with `src` on its routes)."""
        out = await ip("-j", f"-{net.version}", "addr", "show", check=False)
        try:
            links = json.loads(out or "[]")
        except ValueError:
            return None
        for link in links:
            for info in link.get("addr_info", []):
                try:
                    addr = ipaddress.ip_address(info.get("local", ""))
                except ValueError:
                    continue
                if addr in net:
                    return str(addr)
        return None
