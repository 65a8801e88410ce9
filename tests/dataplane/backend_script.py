"""Exercises UserspaceDataPlane's DataPlane contract in-process. It creates a TUN device, routes
and rules, so test_netns_backend.py runs it inside a throwaway namespace; prints OK at the end."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import subprocess

from meshsec.agent.dataplane.api import (
    DataPlane,
    DataPlaneError,
    Direction,
    Encryption,
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
from meshsec.agent.dataplane.userspace.backend import UserspaceConfig, UserspaceDataPlane
from meshsec.common.secrets import Secret

A, B = ipaddress.ip_address("198.18.0.1"), ipaddress.ip_address("198.18.0.2")
SEL = TrafficSelector(ipaddress.ip_network("198.19.1.0/24"), ipaddress.ip_network("198.19.2.0/24"))


def routes() -> list[dict[str, object]]:
    argv = ["ip", "-j", "route", "show", "table", "2730"]
    out = subprocess.run(argv, capture_output=True, text=True).stdout
    return json.loads(out or "[]")  # type: ignore[no-any-return]


def rules() -> int:
    out = subprocess.run(["ip", "rule", "show", "pref", "2730"], capture_output=True, text=True).stdout
    return len(out.splitlines())


def sa(spi: int, direction: Direction, **kw: object) -> SecurityAssociation:
    return SecurityAssociation(
        id=SaId(B if direction is Direction.OUT else A, spi, IpsecProtocol.ESP),
        src=A if direction is Direction.OUT else B, direction=direction, mode=Mode.TUNNEL, reqid=1,
        encryption=Encryption("aes-gcm-16", Secret(bytes(20)), 128), **kw,  # type: ignore[arg-type]
    )


async def main() -> None:
    dp = UserspaceDataPlane(UserspaceConfig(tun_name="udtest0"))
    assert isinstance(dp, DataPlane)
    await dp.start()
    assert rules() == 1 and dp.mtu == 1390

    spis = {await dp.allocate_spi(IpsecProtocol.ESP, B, A) for _ in range(200)}
    assert len(spis) == 200 and all(0x100 <= s <= 0xFFFFFFFF for s in spis)
    spi = spis.pop()
    await dp.add_sa(sa(spi, Direction.IN))
    try:
        await dp.add_sa(sa(spi, Direction.IN))
        raise AssertionError("duplicate add_sa accepted")
    except DataPlaneError as exc:
        assert "already installed" in str(exc)
    try:
        bad = Encryption("aes-gcm-16", Secret(bytes(7)), 128)
        await dp.add_sa(SecurityAssociation(id=SaId(A, 0x999, IpsecProtocol.ESP), src=B,
                                            direction=Direction.IN, mode=Mode.TUNNEL, reqid=1,
                                            encryption=bad))
        raise AssertionError("bad key accepted")
    except DataPlaneError as exc:
        assert "aes-gcm-16: key must be" in str(exc), exc

    out = sa(0x5000, Direction.OUT, encap=UdpEncapsulation(4500, 4500))
    await dp.add_sa(out)
    dp.engine.outbound[out.id].esp.seq = 41  # type: ignore[union-attr]
    await dp.update_sa(sa(0x5000, Direction.OUT, encap=UdpEncapsulation(4500, 14500)))
    st = dp.engine.outbound[out.id]
    assert st.esp.seq == 41 and st.encap_dst == ("198.18.0.2", 14500)  # type: ignore[union-attr]

    tmpl = Template(IpsecProtocol.ESP, Mode.TUNNEL, A, B, 1)
    await dp.ensure_policy(Policy(SEL, Direction.OUT, template=tmpl))
    await dp.ensure_policy(Policy(SEL, Direction.OUT, template=tmpl, priority=5))  # replace, no 2nd route
    rev = TrafficSelector(SEL.dst, SEL.src)
    await dp.ensure_policy(Policy(rev, Direction.IN, template=tmpl))
    r = routes()
    assert [x["dst"] for x in r] == ["198.19.2.0/24"] and str(r[0]["protocol"]) == "211", r
    # A route somebody else put into the same table is not ours and must survive our flush.
    subprocess.run(["ip", "route", "add", "198.19.99.0/24", "dev", "lo", "table", "2730", "proto", "static"],
                   check=True)

    owned = await dp.list_owned()
    assert set(owned.sas) == {sa(spi, Direction.IN).id, out.id} and len(owned.policies) == 2, owned
    c = await dp.counters(out.id)
    assert c.packets == 0 and c.bytes == 0

    # Two UDP 4500-style sockets (as an agent bound to two addresses has): IKE goes to the
    # receiver with the right local address, ESP leaves from the socket of the SA's source.
    socks = []
    got: list[tuple[bytes, tuple[str, int]]] = []
    for host in ("127.0.0.1", "127.0.0.2"):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((host, 14500))
        await dp.attach_encap_socket(s, lambda msg, local, remote: got.append((msg, local)))
        socks.append(s)
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.sendto(b"\0\0\0\0ike-1", ("127.0.0.1", 14500))
    probe.sendto(b"\0\0\0\0ike-2", ("127.0.0.2", 14500))
    probe.sendto(b"\xff", ("127.0.0.1", 14500))  # NAT keepalive: ignored
    probe.sendto(b"\x12\x34\x56\x78" + bytes(40), ("127.0.0.2", 14500))  # ESP with unknown SPI
    for _ in range(100):
        await asyncio.sleep(0.02)
        if len(got) == 2 and dp.drop_counters()["unknown_spi"]:
            break
    assert sorted(got) == [(b"ike-1", ("127.0.0.1", 14500)), (b"ike-2", ("127.0.0.2", 14500))], got
    assert dp.drop_counters()["unknown_spi"] == 1 and dp.drop_counters()["malformed"] == 0

    subprocess.run(["ip", "addr", "add", "198.19.1.1/32", "dev", "lo"], check=True)
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.3", 14501))
    peer.settimeout(5)
    lo_a, lo_b = ipaddress.ip_address("127.0.0.2"), ipaddress.ip_address("127.0.0.3")
    enc = Encryption("aes-gcm-16", Secret(bytes(20)), 128)
    await dp.add_sa(SecurityAssociation(id=SaId(lo_b, 0x7000, IpsecProtocol.ESP), src=lo_a,
                                        direction=Direction.OUT, mode=Mode.TUNNEL, reqid=7, encryption=enc,
                                        encap=UdpEncapsulation(14500, 14501)))
    sel7 = TrafficSelector(ipaddress.ip_network("198.19.1.1/32"), ipaddress.ip_network("198.19.7.0/24"))
    await dp.ensure_policy(Policy(sel7, Direction.OUT, template=Template(IpsecProtocol.ESP, Mode.TUNNEL,
                                                                         lo_a, lo_b, 7)))
    app = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    app.bind(("198.19.1.1", 0))
    app.sendto(b"through the tunnel", ("198.19.7.9", 9))
    esp, sender = await asyncio.to_thread(peer.recvfrom, 4096)
    assert sender == ("127.0.0.2", 14500) and esp[:4] == (0x7000).to_bytes(4, "big"), (sender, esp[:8])
    assert b"through the tunnel" not in esp
    app.close()
    peer.close()

    # Seconds lifetimes fire soft then hard; the hard one removes the SA.
    short = sa(0x6000, Direction.OUT, lifetime=Lifetime(soft_seconds=1, hard_seconds=2))
    await dp.add_sa(short)
    events = dp.events()
    e1 = await asyncio.wait_for(events.__anext__(), 5)
    e2 = await asyncio.wait_for(events.__anext__(), 5)
    assert e1 == SaExpired(short.id, hard=False) and e2 == SaExpired(short.id, hard=True), (e1, e2)
    assert short.id not in (await dp.list_owned()).sas

    await dp.delete_sa(short.id)  # deleting what is gone is not an error
    await dp.delete_policy(SEL, Direction.FWD)
    sel3 = TrafficSelector(SEL.src, ipaddress.ip_network("198.19.3.0/24"))
    await dp.ensure_policy(Policy(sel3, Direction.OUT, action=PolicyAction.BLOCK))
    assert "198.19.3.0/24" in [x["dst"] for x in routes()]
    await dp.ensure_policy(Policy(sel3, Direction.OUT, action=PolicyAction.BYPASS))  # no longer routed
    assert "198.19.3.0/24" not in [x["dst"] for x in routes()]
    await dp.flush_owned()
    owned = await dp.list_owned()
    assert not owned.sas and not owned.policies
    assert [x["dst"] for x in routes()] == ["198.19.99.0/24"], routes()
    await dp.close()
    assert rules() == 0
    for s in socks:
        s.close()
    probe.close()
    print("OK")


if __name__ == "__main__":
    asyncio.run(main())
