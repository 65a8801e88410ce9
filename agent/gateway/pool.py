"""An address pool kept in the gateway's memory, for standalone mode (swanctl.conf's `pools`).

One range per address family; IPv4 ranges leave out the network and broadcast addresses, as the
controller's pools do. A client (its IKE identity) holds its addresses while any of its IKE SAs
lives: a second SA of the same client (a reconnect before the old one timed out) gets the same
addresses, and they are free again when the last one ends. Lowest free address first, so a
restarted gateway hands out the same addresses in the same order."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from meshsec.agent.ike import cp
from meshsec.agent.ike.virtual_ip import AddressRefused, Client, VirtualAddress

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(slots=True)
class LocalLease:
    client: Client
    addresses: tuple[VirtualAddress, ...]
    holders: int = 1  # IKE SAs of this client that use the addresses


@dataclass(slots=True)
class _Range:
    net: Network
    used: set[VirtualAddress] = field(default_factory=set)

    @property
    def size(self) -> int:
        return self.net.num_addresses - (2 if self.net.version == 4 else 0)

    def hosts(self) -> Iterator[VirtualAddress]:
        first = int(self.net.network_address) + (1 if self.net.version == 4 else 0)
        make = type(self.net.network_address)
        for value in range(first, first + self.size):
            yield make(value)

    def take(self) -> VirtualAddress | None:
        for address in self.hosts():
            if address not in self.used:
                self.used.add(address)
                return address
        return None


class LocalPool:
    """Satisfies `virtual_ip.AddressPool`; `release` is called once per ended IKE SA."""

    def __init__(
        self, name: str, ranges: Iterable[Network], dns: Iterable[str] = (), subnets: Iterable[str] = ()
    ) -> None:
        self.name = name
        self._ranges: dict[int, _Range] = {net.version: _Range(net) for net in ranges}
        self.dns = tuple(ipaddress.ip_address(a) for a in dns)
        self.subnets = tuple(ipaddress.ip_network(s) for s in subnets)  # empty: full tunnel
        self.leases: dict[str, LocalLease] = {}

    def assign(self, who: Client, request: cp.Request) -> cp.Reply | AddressRefused:
        client = who.key
        lease = self.leases.get(client)
        if lease is None:
            wanted = [v for v, asked in ((4, request.ip4), (6, request.ip6)) if asked is not None]
            taken: list[tuple[_Range, VirtualAddress]] = []
            for version in wanted:
                rng = self._ranges.get(version)
                if rng is None:
                    continue
                address = rng.take()
                if address is None:
                    for r, a in taken:
                        r.used.discard(a)
                    return AddressRefused(
                        f"pool {self.name}: all {rng.size} addresses of {rng.net} are leased; "
                        "release a lease or enlarge the pool"
                    )
                taken.append((rng, address))
            if not taken:
                asked = " and ".join(f"IPv{v}" for v in wanted)
                return AddressRefused(f"pool {self.name} has no {asked} range")
            lease = self.leases[client] = LocalLease(who, tuple(a for _, a in taken), holders=0)
        lease.holders += 1
        ip4 = next((a for a in lease.addresses if isinstance(a, ipaddress.IPv4Address)), None)
        ip6 = next((a for a in lease.addresses if isinstance(a, ipaddress.IPv6Address)), None)
        return cp.Reply(ip4, ip6, self.dns, self.subnets)

    def release(self, who: Client) -> bool:
        """One IKE SA of `who` ended; True when that freed its addresses."""
        client = who.key
        lease = self.leases.get(client)
        if lease is None:
            return False
        lease.holders -= 1
        if lease.holders > 0:
            return False
        del self.leases[client]
        for address in lease.addresses:
            self._ranges[address.version].used.discard(address)
        return True


class PoolSet:
    """A connection's pools in order (swanctl.conf's `pools = a, b`): a client gets the first
    that has room; `release` returns its addresses to the pool that gave them."""

    def __init__(self, pools: Iterable[LocalPool]) -> None:
        self.pools = tuple(pools)
        self._gave: dict[str, LocalPool] = {}

    def assign(self, who: Client, request: cp.Request) -> cp.Reply | AddressRefused:
        client = who.key
        holder = self._gave.get(client)
        candidates = (holder,) if holder is not None else self.pools
        refusals: list[str] = []
        for pool in candidates:
            answer = pool.assign(who, request)
            if isinstance(answer, cp.Reply):
                self._gave[client] = pool
                return answer
            refusals.append(answer.reason)
        return AddressRefused("; ".join(refusals))

    def release(self, who: Client) -> bool:
        client = who.key
        pool = self._gave.get(client)
        if pool is None:
            return False
        freed = pool.release(who)
        if freed:
            del self._gave[client]
        return freed

    def leases(self) -> list[tuple[str, LocalLease]]:
        return [(pool.name, lease) for pool in self.pools for lease in pool.leases.values()]
