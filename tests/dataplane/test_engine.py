"""The packet engine between two in-memory peers: SPD lookup, tunnel and transport mode, inbound
policy check, counters, lifetimes, and hostile input that is dropped and counted without
disturbing another SA."""

from __future__ import annotations

import ipaddress
import os

import pytest

from meshsec.agent.dataplane.api import (
    Acquire,
    DataPlaneEvent,
    Direction,
    Encryption,
    Integrity,
    IpsecProtocol,
    Lifetime,
    Mode,
    Policy,
    PolicyAction,
    SaExpired,
    SaId,
    SecurityAssociation,
    Template,
    TrafficSelector,
    UdpEncapsulation,
)
from meshsec.agent.dataplane.userspace.engine import Engine
from meshsec.agent.dataplane.userspace.esp import Drop
from meshsec.agent.dataplane.userspace.packet import build_ipv4, build_ipv6, checksum
from meshsec.agent.dataplane.userspace.sa_state import InboundSa, OutboundSa
from meshsec.agent.dataplane.userspace.spd import Spd
from meshsec.common.secrets import Secret

A, B = ipaddress.ip_address("198.18.0.1"), ipaddress.ip_address("198.18.0.2")
NET_A, NET_B = ipaddress.ip_network("198.19.1.0/24"), ipaddress.ip_network("198.19.2.0/24")


class Wire:
    """Collects what an engine sends; `deliver` feeds it to the peer engine."""

    def __init__(self) -> None:
        self.ipv4: list[bytes] = []
        self.ipv6: list[tuple[bytes, int]] = []
        self.udp: list[bytes] = []
        self.tun: list[bytes] = []

    def send_ipv4(self, packet: bytes, dst: str) -> None:
        self.ipv4.append(packet)

    def send_ipv6(self, payload: bytes, protocol: int, src: bytes, dst: str) -> None:
        self.ipv6.append((payload, protocol))

    def send_udp(self, datagram: bytes, dst: tuple[str, int], src: str) -> None:
        self.udp.append(datagram)

    def write_tun(self, packet: bytes | bytearray) -> None:
        self.tun.append(bytes(packet))


def icmp_packet(src: str, dst: str, marker: bytes = b"ping") -> bytes:
    icmp = bytearray(b"\x08\x00\x00\x00\x00\x01\x00\x01" + marker)
    icmp[2:4] = checksum(icmp).to_bytes(2, "big")
    s, d = ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed
    return build_ipv4(s, d, 1, len(icmp), 7) + bytes(icmp)


def sa(
    spi: int, src: object, dst: object, direction: Direction, proto: str = "gcm", **kw: object
) -> SecurityAssociation:
    key = bytes([spi & 0xFF]) * 20
    ipsec = IpsecProtocol.AH if proto == "ah" else IpsecProtocol.ESP
    common = dict(id=SaId(dst, spi, ipsec), src=src, direction=direction,  # type: ignore[arg-type]
                  mode=kw.pop("mode", Mode.TUNNEL), reqid=int(kw.pop("reqid", 1)))  # type: ignore[call-overload]
    if proto in ("gcm", "chacha"):
        enc = (Encryption("aes-gcm-16", Secret(key), 128) if proto == "gcm"
               else Encryption("chacha20-poly1305", Secret(key + key[:16]), 128))
        return SecurityAssociation(**common, encryption=enc, **kw)  # type: ignore[arg-type]
    integ = Integrity("hmac-sha256", Secret(key + key[:12]), 128)
    if proto == "ah":
        return SecurityAssociation(**common, integrity=integ, **kw)  # type: ignore[arg-type]
    return SecurityAssociation(**common, encryption=Encryption("aes-cbc", Secret(key[:16])), integrity=integ,
                               **kw)  # type: ignore[arg-type]


def policies(local: object, remote: object, lnet: object, rnet: object, reqid: int = 1,
             proto: IpsecProtocol = IpsecProtocol.ESP) -> tuple[Spd, Spd]:
    tmpl = Template(proto, Mode.TUNNEL, local, remote, reqid)  # type: ignore[arg-type]
    out = Spd([Policy(TrafficSelector(lnet, rnet), Direction.OUT, template=tmpl)])  # type: ignore[arg-type]
    inbound = Spd([Policy(TrafficSelector(rnet, lnet), Direction.IN, template=tmpl)])  # type: ignore[arg-type]
    return out, inbound


class Pair:
    def __init__(self, proto: str = "gcm", **kw: object) -> None:
        self.wa, self.wb = Wire(), Wire()
        self.events: list[DataPlaneEvent] = []
        self.a = Engine(self.wa, self.events.append, 1300, 1280)
        self.b = Engine(self.wb, self.events.append, 1300, 1280)
        self.out_ab = OutboundSa(sa(0x1001, A, B, Direction.OUT, proto, **kw), self.events.append, os.urandom)
        self.in_ab = InboundSa(sa(0x1001, A, B, Direction.IN, proto, **kw), self.events.append, os.urandom)
        self.a.add_outbound(self.out_ab)
        self.b.add_inbound(self.in_ab)
        ip = IpsecProtocol.AH if proto == "ah" else IpsecProtocol.ESP
        self.a.set_policies(*policies(A, B, NET_A, NET_B, proto=ip))
        self.b.set_policies(*policies(B, A, NET_B, NET_A, proto=ip))

    def send(self, pkt: bytes) -> None:
        self.a.from_tun(pkt)
        for raw in self.wa.ipv4:
            self.b.from_ipv4_raw(raw)
        for esp in self.wa.udp:
            self.b.from_esp(esp)
        self.wa.ipv4.clear()
        self.wa.udp.clear()


@pytest.mark.parametrize("proto", ["gcm", "chacha", "cbc", "ah"])
def test_tunnel_roundtrip_and_counters(proto: str) -> None:
    p = Pair(proto)
    pkt = icmp_packet("198.19.1.1", "198.19.2.1")
    p.send(pkt)
    assert p.wb.tun == [pkt]
    assert (p.out_ab.packets, p.out_ab.bytes) == (1, len(pkt))
    assert (p.in_ab.packets, p.in_ab.bytes) == (1, len(pkt))


def test_udp_encapsulation_and_transport_mode() -> None:
    p = Pair("gcm", encap=UdpEncapsulation(4500, 4500), mode=Mode.TRANSPORT)
    host_a, host_b = ipaddress.ip_network("198.18.0.1/32"), ipaddress.ip_network("198.18.0.2/32")
    p.a.set_policies(*policies(A, B, host_a, host_b))
    p.b.set_policies(*policies(B, A, host_b, host_a))
    pkt = icmp_packet("198.18.0.1", "198.18.0.2", b"transport")
    p.a.from_tun(pkt)
    assert len(p.wa.udp) == 1 and not p.wa.ipv4
    esp = p.wa.udp[0]
    assert esp[:4] == (0x1001).to_bytes(4, "big") and b"transport" not in esp
    p.b.from_esp(esp)
    # Transport mode rebuilds the header from the SA endpoints; payload and protocol survive.
    got = p.wb.tun[0]
    assert got[9] == 1 and got[12:20] == pkt[12:20] and got[20:] == pkt[20:] and checksum(got[:20]) == 0


def test_hostile_input_is_counted_and_other_sas_keep_working() -> None:
    p = Pair("gcm")
    other_out = OutboundSa(sa(0x3003, A, B, Direction.OUT, reqid=2), p.events.append, os.urandom)
    other_in = InboundSa(sa(0x3003, A, B, Direction.IN, reqid=2), p.events.append, os.urandom)
    p.b.add_inbound(other_in)
    p.a.from_tun(icmp_packet("198.19.1.1", "198.19.2.1"))
    good = p.wa.ipv4.pop()
    hostile = [
        b"", b"\x45", good[:24],  # short
        good[:20] + (0xDEAD).to_bytes(4, "big") + good[24:],  # unknown SPI
        good[:-1] + bytes([good[-1] ^ 1]),  # bad ICV
        os.urandom(1500),  # garbage
    ]
    for h in hostile:
        p.b.from_ipv4_raw(h)
    p.b.from_ipv4_raw(good)
    p.b.from_ipv4_raw(good)  # replay
    d = p.b.drops
    assert d[Drop.UNKNOWN_SPI] >= 1 and d[Drop.INTEGRITY] == 1 and d[Drop.REPLAY] == 1
    assert d[Drop.MALFORMED] >= 2
    assert p.in_ab.integrity_failed == 1 and p.in_ab.replay_dropped == 1 and p.in_ab.packets == 1
    # The other SA is untouched and still carries traffic.
    inner = icmp_packet("198.19.1.1", "198.19.2.1", b"other")
    esp = other_out.esp.seal(inner, 4)  # type: ignore[union-attr]
    before = len(p.wb.tun)
    p.b.set_policies(p.b.spd_out, Spd([Policy(TrafficSelector(NET_A, NET_B), Direction.IN,
                                              template=Template(IpsecProtocol.ESP, Mode.TUNNEL, A, B, 2))]))
    p.b.from_esp(esp)
    assert len(p.wb.tun) == before + 1 and other_in.packets == 1 and other_in.integrity_failed == 0


def test_inbound_policy_check_drops_spoofed_inner_source() -> None:
    p = Pair("gcm")
    p.send(icmp_packet("198.19.1.1", "198.19.2.1"))
    assert len(p.wb.tun) == 1
    # A valid SA carrying an inner source outside its selectors must not be delivered.
    spoofed = icmp_packet("10.66.0.1", "198.19.2.1")
    esp = p.out_ab.esp.seal(spoofed, 4)  # type: ignore[union-attr]
    p.b.from_esp(esp)
    assert len(p.wb.tun) == 1 and p.b.drops[Drop.POLICY] == 1


def test_no_policy_no_sa_and_acquire() -> None:
    p = Pair("gcm")
    p.a.from_tun(icmp_packet("198.19.9.1", "198.19.2.1"))
    assert p.a.drops_out[Drop.NO_POLICY] == 1
    tmpl = Template(IpsecProtocol.ESP, Mode.TUNNEL, A, B, 9)
    sel = TrafficSelector(NET_A, ipaddress.ip_network("198.19.3.0/24"))
    p.a.set_policies(Spd([Policy(sel, Direction.OUT, template=tmpl)]), p.a.spd_in)
    p.a.now = 100.0
    for _ in range(3):
        p.a.from_tun(icmp_packet("198.19.1.1", "198.19.3.1"))
    assert p.a.drops_out[Drop.NO_SA] == 3
    assert [e for e in p.events if isinstance(e, Acquire)] == [Acquire(sel, 9)]  # rate limited
    block = Policy(sel, Direction.OUT, action=PolicyAction.BLOCK)
    p.a.set_policies(Spd([block]), p.a.spd_in)
    p.a.from_tun(icmp_packet("198.19.1.1", "198.19.3.1"))
    assert p.a.drops_out[Drop.BLOCKED] == 1


def test_selector_ports_and_priority() -> None:
    tmpl1 = Template(IpsecProtocol.ESP, Mode.TUNNEL, A, B, 1)
    tmpl2 = Template(IpsecProtocol.ESP, Mode.TUNNEL, A, B, 2)
    spd = Spd([
        Policy(TrafficSelector(NET_A, NET_B), Direction.OUT, template=tmpl1, priority=10),
        Policy(TrafficSelector(NET_A, NET_B, protocol=6, dst_ports=(443, 443)), Direction.OUT,
               template=tmpl2, priority=1),
    ])
    s, d = bytes([198, 19, 1, 1]), bytes([198, 19, 2, 1])
    assert spd.lookup(s, d, 6, 5555, 443).template == tmpl2  # type: ignore[union-attr]
    assert spd.lookup(s, d, 6, 5555, 80).template == tmpl1  # type: ignore[union-attr]
    assert spd.lookup(s, d, 17, 5555, 443).template == tmpl1  # type: ignore[union-attr]
    assert spd.lookup(s, bytes([198, 19, 3, 1]), 6, 1, 443) is None


def test_lifetime_packets_soft_then_hard() -> None:
    p = Pair("gcm", lifetime=Lifetime(soft_packets=2, hard_packets=3))
    for _ in range(4):
        p.send(icmp_packet("198.19.1.1", "198.19.2.1"))
    # Both ends of the test SA share its id: each emits soft at packet 2, hard at packet 3.
    soft, hard = SaExpired(p.out_ab.sa.id, hard=False), SaExpired(p.out_ab.sa.id, hard=True)
    assert [e for e in p.events if isinstance(e, SaExpired)] == [soft, soft, hard, hard]
    assert p.out_ab.dead and p.in_ab.dead
    assert p.a.drops_out[Drop.NO_SA] == 1  # the 4th packet finds the SA dead


def test_ipv6_outer_and_inner() -> None:
    # In memory only; IPv4-mapped forms of the test ranges keep to the project's address rules.
    a6, b6 = ipaddress.ip_address("::ffff:198.18.0.1"), ipaddress.ip_address("::ffff:198.18.0.2")
    n_a, n_b = ipaddress.ip_network("::ffff:198.19.1.0/120"), ipaddress.ip_network("::ffff:198.19.2.0/120")
    wa, wb, events = Wire(), Wire(), []  # type: ignore[var-annotated]
    ea, eb = Engine(wa, events.append, 1300, 1280), Engine(wb, events.append, 1300, 1280)
    ea.add_outbound(OutboundSa(sa(0x1001, a6, b6, Direction.OUT, "cbc"), events.append, os.urandom))
    eb.add_inbound(InboundSa(sa(0x1001, a6, b6, Direction.IN, "cbc"), events.append, os.urandom))
    ea.set_policies(*policies(a6, b6, n_a, n_b))
    eb.set_policies(*policies(b6, a6, n_b, n_a))
    src = ipaddress.ip_address("::ffff:198.19.1.1").packed
    dst = ipaddress.ip_address("::ffff:198.19.2.1").packed
    inner = build_ipv6(src, dst, 17, 8) + bytes(8)
    ea.from_tun(inner)
    payload, proto = wa.ipv6[0]
    assert proto == 50
    eb.from_esp(payload)
    assert wb.tun == [inner]


def test_mss_clamped_on_syn_before_sealing_and_on_syn_ack_after_opening() -> None:
    from tests.dataplane.test_mss import tcp_segment

    p = Pair("gcm")  # engines clamp to MSS 1300 (IPv4)
    s, d = bytes([198, 19, 1, 1]), bytes([198, 19, 2, 1])
    syn = tcp_segment(0x02, b"\x02\x04\x05\xb4", s, d)  # MSS 1460
    p.send(build_ipv4(s, d, 6, len(syn), 1) + syn)
    delivered = p.wb.tun[-1]
    assert delivered[40:44] == b"\x02\x04" + (1300).to_bytes(2, "big")
    # The reverse direction: a SYN-ACK decrypted by A gets clamped before it reaches A's TUN.
    back_out = OutboundSa(sa(0x2002, B, A, Direction.OUT), p.events.append, os.urandom)
    back_in = InboundSa(sa(0x2002, B, A, Direction.IN), p.events.append, os.urandom)
    synack = tcp_segment(0x12, b"\x02\x04\x05\xb4", d, s)
    esp = back_out.esp.seal(build_ipv4(d, s, 6, len(synack), 2) + synack, 4)  # type: ignore[union-attr]
    p.a.add_inbound(back_in)
    p.a.from_esp(esp)
    assert p.wa.tun[-1][40:44] == b"\x02\x04" + (1300).to_bytes(2, "big")
