"""Configuration Payload attributes (RFC 7296 3.15): requests and replies as strongSwan sends them,
through the payload chain codec, with strict lengths and unknown attributes ignored."""

from __future__ import annotations

import ipaddress

import pytest

from meshsec.agent.ike import cp
from meshsec.agent.ike.build import build_chain
from meshsec.agent.ike.constants import PayloadType
from meshsec.agent.ike.parse import parse_chain
from meshsec.agent.ike.payloads import CpPayload


def _wire(payload: CpPayload) -> CpPayload:
    (parsed,) = parse_chain(PayloadType.CP, memoryview(build_chain([payload])))
    assert isinstance(parsed, CpPayload)
    return parsed


def test_request_as_strongswan_vips_any_sends_it() -> None:
    # strongSwan with vips = 0.0.0.0: CPRQ(ADDR DNS), both attributes empty.
    wire = build_chain([cp.build_request()])
    assert wire[4:] == bytes.fromhex("010000000001000000030000")
    request = cp.parse_request(_wire(cp.build_request(ip6=True)))
    assert request == cp.Request(ipaddress.IPv4Address(0), ipaddress.IPv6Address(0), True, True, False)


def test_reply_answers_what_was_asked_and_parses_back() -> None:
    request = cp.parse_request(cp.build_request(ip4=True, ip6=False))
    reply = cp.Reply(
        ipaddress.IPv4Address("198.19.171.1"),
        ipaddress.IPv6Address("2001:db8:171::1"),
        (ipaddress.IPv4Address("198.19.170.53"), ipaddress.IPv6Address("2001:db8::53")),
        (ipaddress.ip_network("198.19.170.0/24"), ipaddress.ip_network("2001:db8:170::/64")),
    )
    built = _wire(cp.build_reply(request, reply))
    assert built.cfg_type == cp.CfgType.REPLY
    assert [a for a, _ in built.attributes] == [
        cp.Attr.INTERNAL_IP4_ADDRESS,
        cp.Attr.INTERNAL_IP4_DNS,  # the IPv6 address and DNS server were not asked for
        cp.Attr.INTERNAL_IP4_SUBNET,
        cp.Attr.INTERNAL_IP6_SUBNET,
    ]
    assert dict(built.attributes)[cp.Attr.INTERNAL_IP4_SUBNET] == bytes([198, 19, 170, 0, 255, 255, 255, 0])
    parsed = cp.parse_reply(built)
    assert parsed == cp.Reply(reply.ip4, None, reply.dns[:1], reply.subnets)


def test_strict_lengths_and_unknown_attributes() -> None:
    with pytest.raises(cp.CpError, match="INTERNAL_IP4_ADDRESS must be 4 bytes, not 5"):
        cp.parse_reply(CpPayload(cp.CfgType.REPLY, ((cp.Attr.INTERNAL_IP4_ADDRESS, b"\x01" * 5),)))
    with pytest.raises(cp.CpError, match="INTERNAL_IP6_ADDRESS must be 17 bytes, not 16"):
        cp.parse_request(CpPayload(cp.CfgType.REQUEST, ((cp.Attr.INTERNAL_IP6_ADDRESS, b"\x00" * 16),)))
    with pytest.raises(cp.CpError, match="expected CFG_REPLY, got CFG type 1"):
        cp.parse_reply(cp.build_request())
    with pytest.raises(cp.CpError, match="INTERNAL_IP4_SUBNET"):
        cp.parse_reply(
            CpPayload(cp.CfgType.REPLY, ((cp.Attr.INTERNAL_IP4_SUBNET, bytes(4) + bytes([255, 0, 255, 0])),))
        )
    # A vendor attribute (strongSwan's 25000 range) and APPLICATION_VERSION are skipped.
    odd = CpPayload(
        cp.CfgType.REQUEST,
        ((25017, b"x"), (cp.Attr.APPLICATION_VERSION, b"v1"), (cp.Attr.INTERNAL_IP4_ADDRESS, b"")),
    )
    assert cp.parse_request(odd) == cp.Request(ipaddress.IPv4Address(0))
