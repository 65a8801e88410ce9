"""The kernel backend carrying traffic on a kernel with ESP: runs only in the qemu kernel lane.

Two namespaces joined by a veth; every SA and policy comes from `KernelDataPlane`. The guest is
software-emulated (about 20x slower), so pings are few and short.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import re
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from pyroute2 import netns as pr_netns

from meshsec.agent.dataplane.api import (
    Capabilities,
    Direction,
    Encryption,
    Integrity,
    IpsecProtocol,
    Lifetime,
    Mode,
    OwnedState,
    Policy,
    SaExpired,
    SaId,
    SecurityAssociation,
    Template,
    TrafficSelector,
    UdpEncapsulation,
)
from meshsec.agent.dataplane.kernel.backend import KernelDataPlane
from meshsec.common.secrets import Secret
from tests.dataplane.kernel.conftest import next_event
from tests.harness.netns import Host, Lab

pytestmark = [pytest.mark.kernelvm, pytest.mark.netns]

A, B = ipaddress.ip_address("198.18.0.1"), ipaddress.ip_address("198.18.0.2")
NET1, NET2 = ipaddress.ip_network("198.19.1.0/24"), ipaddress.ip_network("198.19.2.0/24")
INNER_A, INNER_B = "198.19.1.1", "198.19.2.1"
ANY4 = ipaddress.ip_network("0.0.0.0/0")


def gcm() -> tuple[Encryption | None, Integrity | None]:
    return Encryption("aes-gcm-16", Secret(os.urandom(20)), 128), None


def chacha20poly1305() -> tuple[Encryption | None, Integrity | None]:
    return Encryption("chacha20-poly1305", Secret(os.urandom(36)), 128), None


def cbc_sha256() -> tuple[Encryption | None, Integrity | None]:
    integrity = Integrity("hmac-sha256", Secret(os.urandom(32)), 128)
    return Encryption("aes-cbc", Secret(os.urandom(16))), integrity


_PROBED: list[Capabilities] = []


@dataclass
class Site:
    host: Host
    dp: KernelDataPlane
    outer: ipaddress.IPv4Address
    net: ipaddress.IPv4Network
    # Sockets lent to the data plane (attach_encap_socket): closed only after it stopped, as the
    # agent does; closing one under its reader lets a later pipe reuse the fd the loop still
    # watches, and the teardown's nft subprocess then waits forever for its output.
    lent: list[socket.socket] = field(default_factory=list)


@dataclass
class Tunnel:
    a_out: SaId
    a_in: SaId
    b_out: SaId
    b_in: SaId


@pytest.fixture
async def sites(lab: Lab) -> AsyncIterator[tuple[Site, Site]]:
    a, b = lab.host("a"), lab.host("b")
    lab.link(a, b, f"{A}/24", f"{B}/24")
    a.add_loopback_address(f"{INNER_A}/32")
    b.add_loopback_address(f"{INNER_B}/32")
    a.add_route(str(NET2), via=str(B), src=INNER_A)
    b.add_route(str(NET1), via=str(A), src=INNER_B)
    started: list[KernelDataPlane] = []
    sites: tuple[Site, ...] = ()
    try:
        for h in (a, b):
            # Probing is slow under emulation and per kernel, so the session's first probe is reused.
            plane = KernelDataPlane(netns=h.ns, scratch_netns=f"{lab.run_prefix}probe",
                                    capabilities=_PROBED[0] if _PROBED else None)
            await plane.start()
            _PROBED[:] = [plane.capabilities]
            started.append(plane)
        planes = started
        sites = (Site(a, planes[0], A, NET1), Site(b, planes[1], B, NET2))
        yield sites
    finally:
        for plane in started:
            await plane.flush_owned()
            await plane.close()
        for site in sites:
            for sock in site.lent:
                sock.close()


Suite = tuple[Encryption | None, Integrity | None]


def _protocol(suite: Suite) -> IpsecProtocol:
    return IpsecProtocol.AH if suite[0] is None else IpsecProtocol.ESP


def _sa(sa_id: SaId, src: ipaddress.IPv4Address, direction: Direction, reqid: int, suite: Suite,
        mode: Mode = Mode.TUNNEL, **kw: object) -> SecurityAssociation:
    enc, integ = suite
    return SecurityAssociation(id=sa_id, src=src, direction=direction, mode=mode, reqid=reqid,
                               encryption=enc, integrity=integ, **kw)  # type: ignore[arg-type]


async def _child_sa_pair(x: Site, y: Site, reqid: int, suite: Suite, mode: Mode = Mode.TUNNEL,
                         **kw: object) -> tuple[SaId, SaId]:
    """x -> y: y reserves the SPI (make-before-break: inbound first), then both sides install it."""
    protocol = _protocol(suite)
    spi = await y.dp.allocate_spi(protocol, x.outer, y.outer)
    sa_id = SaId(y.outer, spi, protocol)
    await y.dp.add_sa(_sa(sa_id, x.outer, Direction.IN, reqid, suite, mode, **kw))
    await x.dp.add_sa(_sa(sa_id, x.outer, Direction.OUT, reqid, suite, mode, **kw))
    return sa_id, sa_id


async def _policies(x: Site, y: Site, reqid: int, if_id: int = 0, src: ipaddress.IPv4Network | None = None,
                    dst: ipaddress.IPv4Network | None = None, protocol: IpsecProtocol = IpsecProtocol.ESP,
                    mode: Mode = Mode.TUNNEL) -> None:
    out_sel = TrafficSelector(src or x.net, dst or y.net)
    in_sel = TrafficSelector(dst or y.net, src or x.net)
    tunnel = mode is Mode.TUNNEL
    await x.dp.ensure_policy(Policy(out_sel, Direction.OUT, if_id=if_id, template=Template(
        protocol, mode, x.outer if tunnel else None, y.outer if tunnel else None, reqid)))
    for direction in (Direction.IN, Direction.FWD) if tunnel else (Direction.IN,):
        await x.dp.ensure_policy(Policy(in_sel, direction, if_id=if_id, template=Template(
            protocol, mode, y.outer if tunnel else None, x.outer if tunnel else None, reqid)))


async def _tunnel(a: Site, b: Site, reqid: int, suite: Suite, *, if_id: int = 0,
                  encap: UdpEncapsulation | None = None, mode: Mode = Mode.TUNNEL) -> Tunnel:
    ab, _ = await _child_sa_pair(a, b, reqid, suite, mode, if_id=if_id, encap=encap)
    ba, _ = await _child_sa_pair(b, a, reqid, suite, mode, if_id=if_id, encap=encap)
    selectors: dict[str, ipaddress.IPv4Network] = {}
    if if_id:  # route-based: wide (0/0) policies bound to the interface; routes pick the traffic
        selectors = {"src": ANY4, "dst": ANY4}
    for x, y in ((a, b), (b, a)):
        if mode is Mode.TRANSPORT:  # host to host, between the outer addresses themselves
            selectors = {"src": ipaddress.ip_network(x.outer), "dst": ipaddress.ip_network(y.outer)}
        await _policies(x, y, reqid, if_id=if_id, protocol=_protocol(suite), mode=mode, **selectors)
    return Tunnel(a_out=ab, a_in=ba, b_out=ba, b_in=ab)


async def _ping(site: Site, dst: str, count: int = 3) -> int:
    src = INNER_A if site.net == NET1 else INNER_B
    result = await asyncio.to_thread(site.host.ping, dst, count=count, interval=0.2, wait=3, src=src)
    return result.received


def _xfrm_stat(host: Host, name: str) -> int:
    text = host.run(["cat", "/proc/net/xfrm_stat"]).stdout
    found = re.search(rf"^{name}\s+(\d+)", text, re.M)
    assert found, text
    return int(found.group(1))


@pytest.mark.parametrize("suite", [gcm, chacha20poly1305, cbc_sha256],
                         ids=["aes-gcm-16", "chacha20-poly1305", "aes-cbc+hmac-sha256"])
async def test_ping_through_esp_and_counters_move(sites: tuple[Site, Site], suite: object) -> None:
    a, b = sites
    caps = a.dp.capabilities
    # The lane's Debian kernel builds CONFIG_CRYPTO_CHACHA20POLY1305 as a module: the probe loads it.
    assert caps.esp and caps.aead_gcm and caps.aead_chacha20poly1305, caps.notes
    make = suite  # a fresh key set per direction
    t = await _tunnel(a, b, 10, make())  # type: ignore[operator]
    assert await _ping(a, INNER_B) == 3
    sent = await a.dp.counters(t.a_out)
    got = await b.dp.counters(t.b_in)
    back = await a.dp.counters(t.a_in)
    assert sent.packets >= 3 and got.packets >= 3 and back.packets >= 3
    assert sent.bytes > 0 and got.integrity_failed == 0
    # Without its SA the peer refuses the traffic: the packets really were ESP.
    await b.dp.delete_sa(t.b_in)
    assert await _ping(a, INNER_B, count=1) == 0


def ah_sha512() -> tuple[Encryption | None, Integrity | None]:
    return None, Integrity("hmac-sha512", Secret(os.urandom(64)), 256)


async def test_ah_tunnel_carries_ping(sites: tuple[Site, Site]) -> None:
    a, b = sites
    assert a.dp.capabilities.ah, a.dp.capabilities.notes
    t = await _tunnel(a, b, 17, ah_sha512())
    assert t.a_out.protocol is IpsecProtocol.AH
    assert await _ping(a, INNER_B) == 3
    assert (await b.dp.counters(t.b_in)).packets >= 3 and (await a.dp.counters(t.a_in)).packets >= 3


async def test_transport_mode_esp_between_the_outer_addresses(sites: tuple[Site, Site]) -> None:
    a, b = sites
    t = await _tunnel(a, b, 18, cbc_sha256(), mode=Mode.TRANSPORT)
    result = await asyncio.to_thread(a.host.ping, str(B), count=3, interval=0.2, wait=3)
    assert result.received == 3
    assert (await b.dp.counters(t.b_in)).packets >= 3 and (await a.dp.counters(t.a_in)).packets >= 3


async def test_mismatched_keys_are_dropped_and_counted(sites: tuple[Site, Site]) -> None:
    a, b = sites
    spi = await b.dp.allocate_spi(IpsecProtocol.ESP, A, B)
    sa_id = SaId(B, spi, IpsecProtocol.ESP)
    await b.dp.add_sa(_sa(sa_id, A, Direction.IN, 11, gcm()))
    await a.dp.add_sa(_sa(sa_id, A, Direction.OUT, 11, gcm()))  # other key
    ba, _ = await _child_sa_pair(b, a, 11, gcm())
    await _policies(a, b, 11)
    await _policies(b, a, 11)
    before = _xfrm_stat(b.host, "XfrmInStateProtoError")
    assert await _ping(a, INNER_B, count=2) == 0
    assert (await b.dp.counters(sa_id)).integrity_failed >= 2
    assert _xfrm_stat(b.host, "XfrmInStateProtoError") >= before + 2
    assert ba.spi != spi


async def test_soft_then_hard_lifetime_expire_events(sites: tuple[Site, Site]) -> None:
    a, _ = sites
    events = a.dp.events()
    sa_id = SaId(B, 0x5000, IpsecProtocol.ESP)
    await a.dp.add_sa(_sa(sa_id, A, Direction.OUT, 12, gcm(),
                          lifetime=Lifetime(soft_seconds=1, hard_seconds=3)))
    soft = await next_event(events, 30)
    assert soft == SaExpired(sa=sa_id, hard=False)
    hard = await next_event(events, 30)
    assert hard == SaExpired(sa=sa_id, hard=True)
    assert sa_id not in (await a.dp.list_owned()).sas


async def test_rekey_make_before_break_moves_traffic_to_the_new_sa(sites: tuple[Site, Site]) -> None:
    a, b = sites
    old = await _tunnel(a, b, 13, gcm())
    assert await _ping(a, INNER_B, count=1) == 1
    # New CHILD_SA with the same reqid: inbound installed first on both sides, then outbound.
    new_ab, _ = await _child_sa_pair(a, b, 13, gcm())
    new_ba, _ = await _child_sa_pair(b, a, 13, gcm())
    old_count = (await a.dp.counters(old.a_out)).packets
    assert await _ping(a, INNER_B, count=2) == 2  # both SA sets installed: no loss
    assert (await a.dp.counters(new_ab)).packets >= 2  # the newest outbound SA is used
    assert (await a.dp.counters(old.a_out)).packets == old_count
    for site, sa in ((a, old.a_out), (b, old.b_in), (b, old.b_out), (a, old.a_in)):
        await site.dp.delete_sa(sa)
    assert await _ping(a, INNER_B, count=2) == 2
    assert (await b.dp.counters(new_ba)).packets >= 2


async def test_migrate_moves_a_tunnel_to_a_new_address_and_continues_its_sequence_numbers(
    sites: tuple[Site, Site],
) -> None:
    """MOBIKE's data-plane half: A's outer address changes. a->b keeps its SA id (only the
    source changes: replaced in place), b->a gets a new id (A's new address): installed beside
    the old one, policies moved, old one deleted. Were the sequence numbers not carried over,
    B's moved inbound SA (replay window carried too) would drop A's restarted ones as replays."""
    a, b = sites
    suite = gcm()
    t = await _tunnel(a, b, 15, suite)
    assert await _ping(a, INNER_B, count=3) == 3
    before_in = (await b.dp.counters(t.b_in)).packets
    a2 = ipaddress.ip_address("198.18.0.11")
    a.host.add_address("to-b", f"{a2}/24")
    new_a_in = SaId(a2, t.a_in.spi, t.a_in.protocol)
    await a.dp.migrate_sa(t.a_out, _sa(t.a_out, a2, Direction.OUT, 15, suite))
    await b.dp.migrate_sa(t.b_in, _sa(t.b_in, a2, Direction.IN, 15, suite))
    await a.dp.migrate_sa(t.a_in, _sa(new_a_in, B, Direction.IN, 15, suite))
    await b.dp.migrate_sa(t.b_out, _sa(new_a_in, B, Direction.OUT, 15, suite))
    a.outer = a2
    await _policies(a, b, 15)
    await _policies(b, a, 15)
    await a.dp.delete_sa(t.a_in)
    await b.dp.delete_sa(t.b_out)
    assert await _ping(a, INNER_B, count=3) == 3
    # The outbound sequence number went on from 3, not from 0 (both ends reset would pass the
    # replay check, so read it from the kernel).
    state = a.host.run(["ip", "xfrm", "state", "get", "src", str(a2), "dst", str(B), "proto", "esp",
                        "spi", hex(t.a_out.spi)]).stdout  # fmt: skip
    oseq = re.search(r"oseq 0x([0-9a-f]+)", state)
    assert oseq and int(oseq.group(1), 16) >= 6, state
    moved_in = await b.dp.counters(t.b_in)
    assert moved_in.packets >= before_in + 3 and moved_in.replay_dropped == 0  # one counter, no replays
    assert (await a.dp.counters(new_a_in)).packets >= 6  # the replies came to the new address
    owned = await a.dp.list_owned()
    assert t.a_in not in owned.sas and new_a_in in owned.sas


async def test_udp_encapsulated_esp_and_ike_on_the_same_socket(sites: tuple[Site, Site]) -> None:
    a, b = sites
    socks = []
    got: asyncio.Queue[bytes] = asyncio.Queue()
    for site in (a, b):
        sock = await asyncio.to_thread(pr_netns.create_socket, site.host.ns, socket.AF_INET,
                                       socket.SOCK_DGRAM)
        site.lent.append(sock)  # closed by the fixture after the data plane
        sock.bind((str(site.outer), 4500))
        socks.append(sock)
        await site.dp.attach_encap_socket(sock, lambda m, local, remote: got.put_nowait(m))
    t = await _tunnel(a, b, 14, cbc_sha256(), encap=UdpEncapsulation(4500, 4500))
    assert await _ping(a, INNER_B) == 3
    assert (await b.dp.counters(t.b_in)).packets >= 3
    ike = bytes(range(64))
    socks[0].sendto(b"\0\0\0\0" + ike, (str(B), 4500))
    assert await asyncio.wait_for(got.get(), 20) == ike


async def test_route_based_tunnel_over_xfrm_interfaces(sites: tuple[Site, Site]) -> None:
    a, b = sites
    assert a.dp.capabilities.xfrm_interfaces and a.dp.routing_mode == "policy"
    for site, peer_net in ((a, NET2), (b, NET1)):
        await site.dp.ensure_xfrm_interface("ipsec7", 7, 1400)
        site.host.add_route(str(peer_net), dev="ipsec7", src=INNER_A if site is a else INNER_B)
    t = await _tunnel(a, b, 15, gcm(), if_id=7)
    assert a.dp.routing_mode == "route"  # once a policy with an if_id is in use
    assert await _ping(a, INNER_B) == 3
    assert (await b.dp.counters(t.b_in)).packets >= 3
    link = b.host.ip("-s", "link", "show", "ipsec7")
    assert "RX:" in link
    for site in (a, b):
        await site.dp.delete_xfrm_interface("ipsec7")


async def test_cleanup_leaves_nothing(lab: Lab, sites: tuple[Site, Site]) -> None:
    a, b = sites
    await _tunnel(a, b, 16, cbc_sha256())
    await a.dp.allocate_spi(IpsecProtocol.ESP, B, A)
    for site in (a, b):
        assert (await site.dp.list_owned()).sas
        await site.dp.flush_owned()
        assert await site.dp.list_owned() == OwnedState(sas=(), policies=())
        assert site.host.ip("xfrm", "state", "list").strip() == ""
        assert site.host.ip("xfrm", "policy", "list").strip() == ""
