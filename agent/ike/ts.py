"""Traffic selectors as address/port/protocol ranges and their narrowing (RFC 7296 2.9)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from meshsec.agent.ike.constants import TsType
from meshsec.agent.ike.payloads import TrafficSelector


@dataclass(frozen=True, slots=True)
class Ts:
    """An inclusive range of addresses, ports and one IP protocol (0 = any)."""

    start: ipaddress.IPv4Address | ipaddress.IPv6Address
    end: ipaddress.IPv4Address | ipaddress.IPv6Address
    protocol: int = 0
    start_port: int = 0
    end_port: int = 65535

    @classmethod
    def from_cidr(cls, cidr: str, protocol: int = 0, port: int | None = None) -> Ts:
        net = ipaddress.ip_network(cidr, strict=False)
        lo, hi = (0, 65535) if port is None else (port, port)
        return cls(net.network_address, net.broadcast_address, protocol, lo, hi)

    @classmethod
    def from_wire(cls, s: TrafficSelector) -> Ts:
        return cls(
            ipaddress.ip_address(s.start_addr),
            ipaddress.ip_address(s.end_addr),
            s.ip_protocol,
            s.start_port,
            s.end_port,
        )

    def to_wire(self) -> TrafficSelector:
        ts_type = TsType.IPV4_ADDR_RANGE if self.start.version == 4 else TsType.IPV6_ADDR_RANGE
        return TrafficSelector(
            ts_type,
            self.protocol,
            self.start_port,
            self.end_port,
            self.start.packed,
            self.end.packed,
        )

    def intersect(self, other: Ts) -> Ts | None:
        if self.start.version != other.start.version:
            return None
        if self.protocol and other.protocol and self.protocol != other.protocol:
            return None
        start = max(int(self.start), int(other.start))
        end = min(int(self.end), int(other.end))
        sp = max(self.start_port, other.start_port)
        ep = min(self.end_port, other.end_port)
        if start > end or sp > ep:
            return None
        make = type(self.start)
        return Ts(make(start), make(end), self.protocol or other.protocol, sp, ep)

    def contains(self, other: Ts) -> bool:
        return self.intersect(other) == other

    def __str__(self) -> str:
        ports = (
            "" if (self.start_port, self.end_port) == (0, 65535) else f"[{self.start_port}-{self.end_port}]"
        )
        proto = f"/{self.protocol}" if self.protocol else ""
        return f"{self.start}-{self.end}{proto}{ports}"


def narrow(proposed: list[Ts], configured: list[Ts]) -> list[Ts]:
    """Responder narrowing: every non-empty intersection of what the peer proposed with what we
    allow. The first proposed selector may be the packet that triggered the request; keeping all
    intersections in proposed order keeps it first."""
    out: list[Ts] = []
    for p in proposed:
        for c in configured:
            i = p.intersect(c)
            if i is not None and i not in out:
                out.append(i)
    return out


def is_subset(answer: list[Ts], offered: list[Ts]) -> bool:
    """Initiator check: the responder may only narrow, never widen (RFC 7296 2.9)."""
    return bool(answer) and all(any(o.contains(a) for o in offered) for a in answer)
