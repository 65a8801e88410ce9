"""Security Policy Database lookup for the hot path.

Policies are compiled once into integer prefix/mask pairs and sorted by priority (lower wins, as
in XFRM). A lookup first finds the candidates that match the (src, dst) address pair, caching
them per pair; only when a candidate restricts protocol or ports are those checked per packet.
The table is immutable: the control plane builds a new one and swaps the reference, so the packet
thread never sees a half-updated SPD.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from meshsec.agent.dataplane.api import IPNetwork, Policy, TrafficSelector

_CACHE_LIMIT = 65536


def _prefix(net: IPNetwork) -> tuple[int, int, int]:
    return net.version, int(net.network_address), int(net.netmask)


@dataclass(frozen=True, slots=True)
class CompiledSelector:
    version: int
    src: int
    src_mask: int
    dst: int
    dst_mask: int
    protocol: int
    sport_lo: int
    sport_hi: int
    dport_lo: int
    dport_hi: int
    any_l4: bool

    @classmethod
    def compile(cls, ts: TrafficSelector) -> CompiledSelector:
        sv, s, sm = _prefix(ts.src)
        dv, d, dm = _prefix(ts.dst)
        if sv != dv:
            raise ValueError(f"traffic selector mixes IPv{sv} source and IPv{dv} destination: {ts}")
        any_l4 = ts.protocol == 0 and ts.src_ports == (0, 65535) and ts.dst_ports == (0, 65535)
        return cls(sv, s, sm, d, dm, ts.protocol, *ts.src_ports, *ts.dst_ports, any_l4)

    def matches_addresses(self, version: int, src: int, dst: int) -> bool:
        return version == self.version and src & self.src_mask == self.src and dst & self.dst_mask == self.dst

    def matches_l4(self, protocol: int, sport: int, dport: int) -> bool:
        if self.any_l4:
            return True
        if self.protocol and protocol != self.protocol:
            return False
        return self.sport_lo <= sport <= self.sport_hi and self.dport_lo <= dport <= self.dport_hi


@dataclass(frozen=True, slots=True)
class SpdEntry:
    selector: CompiledSelector
    policy: Policy


class Spd:
    __slots__ = ("_cache", "_entries")

    def __init__(self, policies: Iterable[Policy]) -> None:
        ordered = sorted(policies, key=lambda p: p.priority)
        self._entries = tuple(SpdEntry(CompiledSelector.compile(p.selector), p) for p in ordered)
        self._cache: dict[bytes, tuple[SpdEntry, ...]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def candidates(self, pair: bytes) -> tuple[SpdEntry, ...]:
        """Policies whose addresses match `pair` = source address || destination address (the
        contiguous bytes 12..20 of an IPv4 header, 8..40 of an IPv6 one), best first."""
        found = self._cache.get(pair)
        if found is None:
            half = len(pair) // 2
            version = 4 if half == 4 else 6
            s = int.from_bytes(pair[:half], "big")
            d = int.from_bytes(pair[half:], "big")
            found = tuple(e for e in self._entries if e.selector.matches_addresses(version, s, d))
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[pair] = found
        return found

    def lookup(self, src: bytes, dst: bytes, protocol: int, sport: int, dport: int) -> Policy | None:
        for entry in self.candidates(src + dst):
            if entry.selector.matches_l4(protocol, sport, dport):
                return entry.policy
        return None
