"""Configuration Payload attributes (RFC 7296 section 3.15): what a road warrior asks for in its
CFG_REQUEST and what a gateway answers in its CFG_REPLY.

The wire form (`payloads.CpPayload`: a CFG type and raw attributes) is parsed and built by
`parse.py`/`build.py`; this module gives the attributes their meaning. Decoding is strict about
lengths (a 5-byte INTERNAL_IP4_ADDRESS is an error, not a guess) and ignores attribute types it
does not know, as section 3.15.1 requires.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass

from meshsec.agent.ike.payloads import CpPayload

IPv4 = ipaddress.IPv4Address
IPv6 = ipaddress.IPv6Address


class CfgType(enum.IntEnum):
    REQUEST = 1
    REPLY = 2
    SET = 3
    ACK = 4


class Attr(enum.IntEnum):
    INTERNAL_IP4_ADDRESS = 1
    INTERNAL_IP4_NETMASK = 2
    INTERNAL_IP4_DNS = 3
    INTERNAL_IP4_NBNS = 4
    INTERNAL_IP4_DHCP = 6
    APPLICATION_VERSION = 7
    INTERNAL_IP6_ADDRESS = 8
    INTERNAL_IP6_DNS = 10
    INTERNAL_IP6_DHCP = 12
    INTERNAL_IP4_SUBNET = 13
    SUPPORTED_ATTRIBUTES = 14
    INTERNAL_IP6_SUBNET = 15


class CpError(ValueError):
    """A malformed attribute; the message names it and its length."""


@dataclass(frozen=True, slots=True)
class Request:
    """What a client asked for. `ip4`/`ip6` are hints (a previous address) or 0.0.0.0 / ::."""

    ip4: IPv4 | None = None
    ip6: IPv6 | None = None
    dns4: bool = False
    dns6: bool = False
    subnets: bool = False


@dataclass(frozen=True, slots=True)
class Reply:
    """What a gateway assigned: the addresses, DNS servers and split routes."""

    ip4: IPv4 | None = None
    ip6: IPv6 | None = None  # always announced with prefix length 128
    dns: tuple[IPv4 | IPv6, ...] = ()
    subnets: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()


def build_request(*, ip4: bool = True, ip6: bool = False, dns: bool = True) -> CpPayload:
    """Empty attributes ask for "any" (section 3.15.1), as strongSwan's `vips = 0.0.0.0` does."""
    attrs: list[tuple[int, bytes]] = []
    if ip4:
        attrs.append((Attr.INTERNAL_IP4_ADDRESS, b""))
        if dns:
            attrs.append((Attr.INTERNAL_IP4_DNS, b""))
    if ip6:
        attrs.append((Attr.INTERNAL_IP6_ADDRESS, b""))
        if dns:
            attrs.append((Attr.INTERNAL_IP6_DNS, b""))
    return CpPayload(CfgType.REQUEST, tuple(attrs))


def parse_request(cp: CpPayload) -> Request:
    if cp.cfg_type != CfgType.REQUEST:
        raise CpError(f"expected CFG_REQUEST, got CFG type {cp.cfg_type}")
    ip4: IPv4 | None = None
    ip6: IPv6 | None = None
    dns4 = dns6 = subnets = False
    for atype, value in cp.attributes:
        if atype == Attr.INTERNAL_IP4_ADDRESS:
            ip4 = IPv4(_fixed(atype, value, 4)) if value else IPv4(0)
        elif atype == Attr.INTERNAL_IP6_ADDRESS:
            ip6 = IPv6(_fixed(atype, value, 17)[:16]) if value else IPv6(0)
        elif atype == Attr.INTERNAL_IP4_DNS:
            dns4 = True
        elif atype == Attr.INTERNAL_IP6_DNS:
            dns6 = True
        elif atype in (Attr.INTERNAL_IP4_SUBNET, Attr.INTERNAL_IP6_SUBNET):
            subnets = True
    return Request(ip4, ip6, dns4, dns6, subnets)


def build_reply(request: Request, reply: Reply) -> CpPayload:
    """Answers only the families the client asked for; DNS servers of an asked-for family;
    split routes as INTERNAL_IP4/6_SUBNET whenever there are any (RFC 7296 3.15.2)."""
    attrs: list[tuple[int, bytes]] = []
    if request.ip4 is not None and reply.ip4 is not None:
        attrs.append((Attr.INTERNAL_IP4_ADDRESS, reply.ip4.packed))
    if request.ip6 is not None and reply.ip6 is not None:
        attrs.append((Attr.INTERNAL_IP6_ADDRESS, reply.ip6.packed + bytes([128])))
    for server in reply.dns:
        if isinstance(server, IPv4) and request.ip4 is not None:
            attrs.append((Attr.INTERNAL_IP4_DNS, server.packed))
        elif isinstance(server, IPv6) and request.ip6 is not None:
            attrs.append((Attr.INTERNAL_IP6_DNS, server.packed))
    for net in reply.subnets:
        if isinstance(net, ipaddress.IPv4Network):
            attrs.append((Attr.INTERNAL_IP4_SUBNET, net.network_address.packed + net.netmask.packed))
        else:
            attrs.append((Attr.INTERNAL_IP6_SUBNET, net.network_address.packed + bytes([net.prefixlen])))
    return CpPayload(CfgType.REPLY, tuple(attrs))


def parse_reply(cp: CpPayload) -> Reply:
    if cp.cfg_type != CfgType.REPLY:
        raise CpError(f"expected CFG_REPLY, got CFG type {cp.cfg_type}")
    ip4: IPv4 | None = None
    ip6: IPv6 | None = None
    dns: list[IPv4 | IPv6] = []
    subnets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for atype, value in cp.attributes:
        if atype == Attr.INTERNAL_IP4_ADDRESS:
            ip4 = IPv4(_fixed(atype, value, 4))
        elif atype == Attr.INTERNAL_IP6_ADDRESS:
            ip6 = IPv6(_fixed(atype, value, 17)[:16])
        elif atype == Attr.INTERNAL_IP4_DNS:
            dns.append(IPv4(_fixed(atype, value, 4)))
        elif atype == Attr.INTERNAL_IP6_DNS:
            dns.append(IPv6(_fixed(atype, value, 16)))
        elif atype == Attr.INTERNAL_IP4_SUBNET:
            raw = _fixed(atype, value, 8)
            subnets.append(_network(atype, f"{IPv4(raw[:4])}/{IPv4(raw[4:])}"))
        elif atype == Attr.INTERNAL_IP6_SUBNET:
            raw = _fixed(atype, value, 17)
            subnets.append(_network(atype, f"{IPv6(raw[:16])}/{raw[16]}"))
    return Reply(ip4, ip6, tuple(dns), tuple(subnets))


def _fixed(atype: int, value: bytes, length: int) -> bytes:
    if len(value) != length:
        raise CpError(f"{Attr(atype).name} must be {length} bytes, not {len(value)}")
    return value


def _network(atype: int, text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError as exc:
        raise CpError(f"{Attr(atype).name}: {exc}") from None
