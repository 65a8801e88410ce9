"""The kernel backend against the machine's own kernel (XFRM, no ESP needed), in kx- namespaces."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import re
import socket

import pytest
from pyroute2 import netns as pr_netns

from meshsec.agent.dataplane.api import (
    Acquire,
    Capabilities,
    DataPlaneError,
    Direction,
    Encryption,
    IpsecProtocol,
    Mode,
    Policy,
    PolicyAction,
    SaExpired,
    SaId,
    SecurityAssociation,
    Template,
    TrafficSelector,
    Unsupported,
)
from meshsec.agent.dataplane.kernel import mtu
from meshsec.agent.dataplane.kernel.backend import KernelDataPlane
from meshsec.agent.dataplane.kernel.selection import select_backend
from meshsec.common.secrets import Secret
from tests.dataplane.kernel.conftest import next_event
from tests.harness.netns import Host, Lab

pytestmark = pytest.mark.netns

A, B = ipaddress.ip_address("198.18.0.1"), ipaddress.ip_address("198.18.0.2")
NET1, NET2 = ipaddress.ip_network("198.19.1.0/24"), ipaddress.ip_network("198.19.2.0/24")
SEL = TrafficSelector(NET1, NET2)


def _out_policy(reqid: int = 5, priority: int = 10) -> Policy:
    return Policy(SEL, Direction.OUT, template=Template(IpsecProtocol.ESP, Mode.TUNNEL, A, B, reqid),
                  priority=priority)


def _ip_json(host: Host, *args: str) -> list[dict[str, object]]:
    out = host.ip("-j", *args).strip()
    return json.loads(out) if out else []


def _xfrm_policies(host: Host) -> list[dict[str, str]]:
    """`ip xfrm policy` (iproute2 6.1 has no JSON for xfrm) as one dict per policy: the words that
    follow each keyword, template fields prefixed with "tmpl_"."""
    policies: list[dict[str, str]] = []
    for block in re.split(r"\n(?=src )", host.ip("xfrm", "policy", "list").strip()):
        if not block.strip():
            continue
        head, _, tmpl = block.partition("tmpl ")
        fields = dict(re.findall(r"(src|dst|dir|priority|action|mark|dport|proto) (\S+)", head))
        fields.setdefault("action", "allow")
        fields.update({f"tmpl_{k}": v for k, v in
                       re.findall(r"(src|dst|proto|reqid|mode) (\S+)", tmpl)})
        policies.append(fields)
    return policies


def _kernel_has_esp(host: Host) -> bool:
    proc = host.run(["ip", "xfrm", "state", "add", "src", str(A), "dst", str(B), "proto", "esp",
                     "spi", "0x4242", "mode", "tunnel", "aead", "rfc4106(gcm(aes))", "0x" + "11" * 20,
                     "128"], check=False)
    host.run(["ip", "xfrm", "state", "flush"], check=False)  # our own scratch namespace
    return proc.returncode == 0


async def test_capabilities_agree_with_iproute2(dp: KernelDataPlane, host: Host, lab: Lab) -> None:
    caps = dp.capabilities
    assert caps.backend == "kernel"
    assert caps.esp == _kernel_has_esp(host)
    if not caps.esp:
        assert any("esp" in note and ("EPROTONOSUPPORT" in note or "ENOSYS" in note) for note in caps.notes)
        assert dp.routing_mode in ("policy", "route")
    # The probe's scratch namespace is gone again.
    assert not [ns for ns in lab.leftovers().namespaces if ns.endswith("probe")]


async def test_esp_sa_without_kernel_esp_is_unsupported_with_a_clear_message(dp: KernelDataPlane) -> None:
    if dp.capabilities.esp:
        pytest.skip("this kernel has ESP")
    sa = SecurityAssociation(SaId(B, 0x2000, IpsecProtocol.ESP), A, Direction.OUT, Mode.TUNNEL, 5,
                             Encryption("aes-gcm-16", Secret(b"k" * 20), 128))
    with pytest.raises(Unsupported, match=r"no ESP.*userspace data plane"):
        await dp.add_sa(sa)
    # The same refusal comes from the kernel itself when the backend is not told beforehand.
    raw = KernelDataPlane(netns=dp.netns)
    try:
        with pytest.raises(Unsupported, match="lacks this protocol or algorithm"):
            await raw.add_sa(sa)
    finally:
        await raw.close()


async def test_policy_add_update_get_dump_delete_round_trip(dp: KernelDataPlane, host: Host) -> None:
    await dp.ensure_policy(_out_policy(reqid=5, priority=10))
    shown = _xfrm_policies(host)
    assert shown == [{"src": "198.19.1.0/24", "dst": "198.19.2.0/24", "dir": "out", "priority": "10",
                      "action": "allow", "mark": "0/0x4d530000", "tmpl_src": "198.18.0.1",
                      "tmpl_dst": "198.18.0.2", "tmpl_proto": "esp", "tmpl_reqid": "5",
                      "tmpl_mode": "tunnel"}]

    # Replacing keeps one policy and changes it in place.
    await dp.ensure_policy(_out_policy(reqid=6, priority=20))
    shown = _xfrm_policies(host)
    assert len(shown) == 1 and shown[0]["priority"] == "20" and shown[0]["tmpl_reqid"] == "6"
    got = await dp.get_policy(SEL, Direction.OUT)
    assert got is not None and got["priority"] == 20 and got.templates()[0]["reqid"] == 6

    block = Policy(TrafficSelector(NET2, NET1, protocol=6, dst_ports=(22, 22)), Direction.IN,
                   action=PolicyAction.BLOCK)
    await dp.ensure_policy(block)
    owned = await dp.list_owned()
    assert set(owned.policies) == {(SEL, Direction.OUT), (block.selector, Direction.IN)}
    shown_by_dir = {p["dir"]: p for p in _xfrm_policies(host)}
    assert shown_by_dir["in"]["action"] == "block" and shown_by_dir["in"]["dport"] == "22"
    assert shown_by_dir["in"]["proto"] == "tcp"

    await dp.delete_policy(SEL, Direction.OUT)
    await dp.delete_policy(SEL, Direction.OUT)  # idempotent
    assert await dp.get_policy(SEL, Direction.OUT) is None
    assert [p["dir"] for p in _xfrm_policies(host)] == ["in"]


async def test_policy_installed_by_an_earlier_process_is_found_and_deleted(dp: KernelDataPlane,
                                                                          host: Host) -> None:
    await dp.ensure_policy(_out_policy())
    fresh = KernelDataPlane(netns=dp.netns)  # knows nothing about what dp installed
    try:
        assert (await fresh.list_owned()).policies == ((SEL, Direction.OUT),)
        await fresh.delete_policy(SEL, Direction.OUT)
    finally:
        await fresh.close()
    assert _xfrm_policies(host) == []


async def test_allocate_spi_reserves_distinct_spis_in_range(dp: KernelDataPlane, host: Host) -> None:
    spis = [await dp.allocate_spi(IpsecProtocol.ESP, B, A) for _ in range(3)]
    assert len(set(spis)) == 3
    assert all(dp.spi_range[0] <= s <= dp.spi_range[1] for s in spis)
    states = host.ip("xfrm", "state", "list")
    for spi in spis:
        assert f"spi 0x{spi:08x}" in states
    assert states.count("mark 0/0x4d530000") == 3
    owned = await dp.list_owned()
    assert {s.spi for s in owned.sas} == set(spis)
    await dp.delete_sa(SaId(A, spis[0], IpsecProtocol.ESP))
    await dp.delete_sa(SaId(A, spis[0], IpsecProtocol.ESP))  # idempotent
    assert {s.spi for s in (await dp.list_owned()).sas} == set(spis[1:])


async def test_flush_owned_leaves_foreign_state_alone(dp: KernelDataPlane, host: Host) -> None:
    # A foreign policy with the very same selector and direction, and a foreign SPI reservation.
    host.run(["ip", "xfrm", "policy", "add", "src", str(NET1), "dst", str(NET2), "dir", "out",
              "priority", "99", "tmpl", "src", str(A), "dst", str(B), "proto", "esp", "reqid", "77",
              "mode", "tunnel"])
    host.run(["ip", "xfrm", "state", "allocspi", "src", str(B), "dst", str(A), "proto", "esp",
              "min", "0x1000", "max", "0x1000"])
    await dp.ensure_policy(_out_policy())
    await dp.ensure_policy(Policy(SEL, Direction.FWD, action=PolicyAction.BYPASS))
    await dp.allocate_spi(IpsecProtocol.ESP, B, A)
    assert len(_xfrm_policies(host)) == 3

    await dp.flush_owned()
    assert await dp.list_owned() == type(await dp.list_owned())(sas=(), policies=())
    left = _xfrm_policies(host)
    assert len(left) == 1 and left[0]["priority"] == "99" and left[0]["tmpl_reqid"] == "77"
    states = host.ip("xfrm", "state", "list")
    assert "spi 0x00001000" in states and len(re.findall(r"^src ", states, re.M)) == 1


async def test_acquire_event_when_traffic_meets_a_policy_without_sa(lab: Lab, dp: KernelDataPlane,
                                                                    host: Host) -> None:
    peer = lab.host("b")
    lab.link(host, peer, f"{A}/24", f"{B}/24")
    host.add_loopback_address("198.19.1.1/32")
    host.add_route(str(NET2), via=str(B))
    await dp.ensure_policy(_out_policy(reqid=42))
    events = dp.events()
    await asyncio.to_thread(host.ping, "198.19.2.1", count=1, wait=0.5, src="198.19.1.1")
    event = await next_event(events, 10)
    assert event == Acquire(selector=SEL, reqid=42)


async def test_expired_spi_reservation_raises_a_hard_expire_event(dp: KernelDataPlane, host: Host) -> None:
    # The kernel drops unused SPI reservations after net.core.xfrm_acq_expires (per namespace).
    host.sysctl("net.core.xfrm_acq_expires", "1")
    events = dp.events()
    spi = await dp.allocate_spi(IpsecProtocol.ESP, B, A)
    event = await next_event(events, 15)
    assert event == SaExpired(sa=SaId(A, spi, IpsecProtocol.ESP), hard=True)


async def test_events_for_foreign_state_are_not_reported(dp: KernelDataPlane, host: Host) -> None:
    host.sysctl("net.core.xfrm_acq_expires", "1")
    events = dp.events()
    host.run(["ip", "xfrm", "state", "allocspi", "src", str(B), "dst", str(A), "proto", "esp"])
    ours = await dp.allocate_spi(IpsecProtocol.ESP, B, A)
    event = await next_event(events, 15)
    assert isinstance(event, SaExpired) and event.sa.spi == ours


async def test_encap_socket_strips_the_non_esp_marker_and_drops_junk(dp: KernelDataPlane,
                                                                     host: Host) -> None:
    host.add_loopback_address("198.18.9.1/32")
    sock = await asyncio.to_thread(pr_netns.create_socket, host.ns, socket.AF_INET, socket.SOCK_DGRAM)
    sender = await asyncio.to_thread(pr_netns.create_socket, host.ns, socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind(("0.0.0.0", 4500))
        sender.bind(("198.18.9.1", 4501))
        got: asyncio.Queue[tuple[bytes, tuple[str, int], tuple[str, int]]] = asyncio.Queue()
        await dp.attach_encap_socket(sock, lambda m, local, remote: got.put_nowait((m, local, remote)))
        assert sock.getsockopt(17, 100) == 2  # UDP_ENCAP_ESPINUDP
        ike = bytes(range(40))
        sender.sendto(b"\xff", ("198.18.9.1", 4500))  # NAT keepalive: the kernel eats it
        sender.sendto(b"\0\0\0\0" + b"short", ("198.18.9.1", 4500))  # marker but no IKE header
        sender.sendto(b"\0\0\0\0" + ike, ("198.18.9.1", 4500))
        message, local, remote = await asyncio.wait_for(got.get(), 5)
        assert message == ike and local == ("198.18.9.1", 4500) and remote == ("198.18.9.1", 4501)
        reader = dp._encap[0]
        assert (reader.received, reader.dropped_malformed) == (1, 1)
    finally:
        await dp.close()
        sock.close()
        sender.close()


async def test_tunnel_route_mtu_and_mss_clamping_table(lab: Lab, dp: KernelDataPlane, host: Host) -> None:
    peer = lab.host("b")
    lab.link(host, peer, f"{A}/24", f"{B}/24")
    from meshsec.agent.dataplane.userspace.mtu import Suite

    # 1500 - 20 (IPv4) - 8 (ESP header) - 16 (CBC IV) - 32 (SHA-512 ICV) = 1424, a multiple of 16;
    # minus the 2-byte ESP trailer.
    value = mtu.tunnel_mtu(1500, ipv6_outer=False, udp_encap=False,
                           suites=(Suite("esp", "aes-cbc", "hmac-sha512"),))
    assert value == 1422
    await mtu.ensure_tunnel_route(host.ns, NET2, value, via=B)
    routes = _ip_json(host, "route", "show", str(NET2))
    assert routes[0]["metrics"][0]["mtu"] == 1422
    await mtu.ensure_mss_clamping(host.ns)
    await mtu.ensure_mss_clamping(host.ns)  # re-installing replaces, never duplicates
    table = host.run(["nft", "list", "table", "inet", "meshsec"]).stdout
    # One rule per hook (forwarded and locally sent SYNs), never duplicated.
    assert table.count("maxseg size set rt mtu") == 2
    assert "hook forward" in table and "hook output" in table
    await mtu.remove_mss_clamping(host.ns)
    assert "meshsec" not in host.run(["nft", "list", "tables"]).stdout
    await mtu.delete_tunnel_route(host.ns, NET2)
    assert _ip_json(host, "route", "show", str(NET2)) == []


async def test_select_backend_falls_back_to_userspace_without_esp(
        lab: Lab, host: Host, caplog: pytest.LogCaptureFixture) -> None:
    from meshsec.agent.dataplane.userspace.backend import UserspaceDataPlane

    kernel = KernelDataPlane(netns=host.ns, scratch_netns=f"{lab.run_prefix}probe")
    caplog.set_level(logging.INFO)
    chosen = await select_backend("auto", kernel=kernel)
    if kernel.capabilities.esp:
        assert chosen is kernel
        return
    assert isinstance(chosen, UserspaceDataPlane)
    assert "userspace, because the kernel data plane is unusable" in caplog.text
    assert "EPROTONOSUPPORT" in caplog.text
    with pytest.raises(Unsupported, match="kernel data plane requested but unusable"):
        await select_backend("kernel", kernel=kernel)
    with pytest.raises(DataPlaneError, match="not one of"):
        await select_backend("fastest")


async def test_auto_needs_esp_in_udp_too_and_the_agents_ask_select_backend(
        lab: Lab, host: Host, caplog: pytest.LogCaptureFixture) -> None:
    from meshsec.agent.adapters.recording import RecordingDataPlane
    from meshsec.agent.dataplane.userspace.backend import UserspaceDataPlane
    from meshsec.agent.standalone.config import AgentSettings
    from meshsec.agent.standalone.runner import make_dataplane

    # What a kernel with ESP but without ESP-in-UDP reports (injected: this kernel has neither).
    no_encap = Capabilities(backend="kernel", esp=True, ah=True, aead_gcm=True, udp_encapsulation=False,
                            notes=("udp_encapsulation: kernel refused a test udp_encapsulation SA",))
    caplog.set_level(logging.INFO)
    chosen = await select_backend("auto", kernel=KernelDataPlane(netns=host.ns, capabilities=no_encap))
    assert isinstance(chosen, UserspaceDataPlane)
    assert "kernel data plane is unusable: no ESP-in-UDP; udp_encapsulation: kernel refused" in caplog.text
    forced = KernelDataPlane(netns=host.ns, capabilities=no_encap)
    assert await select_backend("kernel", kernel=forced) is forced
    assert "kernel (configured), but tunnels behind a NAT will fail: no ESP-in-UDP" in caplog.text

    # The agents' entry point: `none` records, the rest is select_backend's choice.
    assert isinstance(await make_dataplane(AgentSettings(dataplane="none")), RecordingDataPlane)
    userspace = await make_dataplane(AgentSettings(dataplane="userspace", tun_name="kx-tun9"))
    assert isinstance(userspace, UserspaceDataPlane) and userspace.tun_name == "kx-tun9"
    # (`auto` through the agent: test_kernel_vm_agent.py, both on this kernel and in the lane.)


async def test_route_based_mode_is_refused_where_xfrm_interfaces_are_missing(dp: KernelDataPlane) -> None:
    if dp.capabilities.xfrm_interfaces:
        pytest.skip("this kernel has xfrm interfaces")
    assert dp.routing_mode == "policy"
    with pytest.raises(Unsupported, match="no xfrm interfaces"):
        await dp.ensure_policy(Policy(SEL, Direction.OUT, template=_out_policy().template, if_id=3))
    with pytest.raises(Unsupported, match="no xfrm interfaces"):
        await dp.ensure_xfrm_interface("ipsec3", 3, 1400)


async def test_ensure_policies_batches_and_reports_only_the_failed_ones(dp: KernelDataPlane,
                                                                         host: Host) -> None:
    good = [Policy(TrafficSelector(ipaddress.ip_network(f"198.19.{1 + i // 200}.{i % 200}/32"), NET2),
                   Direction.OUT, template=Template(IpsecProtocol.ESP, Mode.TUNNEL, A, B, 100 + i))
            for i in range(300)]
    # The kernel refuses a transport template whose family differs from the selector's (EINVAL).
    bad = Policy(TrafficSelector(NET2, NET1), Direction.OUT, template=Template(
        IpsecProtocol.ESP, Mode.TRANSPORT, ipaddress.ip_address("::ffff:198.18.0.1"),
        ipaddress.ip_address("::ffff:198.18.0.2"), 9))
    with pytest.raises(DataPlaneError, match=r"1 of 301 policies failed: policy 198.19.2.0/24.*EINVAL"):
        await dp.ensure_policies([*good[:150], bad, *good[150:]])
    assert len(_xfrm_policies(host)) == 300
    assert set((await dp.list_owned()).policies) == {(p.selector, Direction.OUT) for p in good}
    await dp.ensure_policies(good)  # replacing all is fine
    assert len(_xfrm_policies(host)) == 300


def _server_mss(client: Host, server: Host, port: int) -> int:
    """The MSS a TCP server ends up with for a connection from `client` (it never exceeds what
    the client's SYN advertised, as it reached the server)."""
    listener = pr_netns.create_socket(server.ns, socket.AF_INET, socket.SOCK_STREAM)
    conn = pr_netns.create_socket(client.ns, socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.bind(("198.19.2.1", port))
        listener.listen(1)
        conn.settimeout(5)
        conn.connect(("198.19.2.1", port))
        listener.settimeout(5)
        accepted, _ = listener.accept()
        with accepted:
            return int(accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG))
    finally:
        conn.close()
        listener.close()


async def test_mss_clamping_limits_forwarded_syns_to_the_route_mtu(lab: Lab) -> None:
    client, router, server = lab.host("c"), lab.router("r"), lab.host("s")
    lab.link(client, router, "198.18.1.2/24", "198.18.1.1/24")
    lab.link(router, server, "198.18.2.1/24", "198.18.2.2/24")
    server.add_loopback_address("198.19.2.1/32")
    client.add_route("default", via="198.18.1.1")
    server.add_route("default", via="198.18.2.1")
    # The tunnelled prefix's route on the forwarding node carries the tunnel MTU.
    await mtu.ensure_tunnel_route(router.ns, NET2, 1400, via=ipaddress.ip_address("198.18.2.2"))
    before = await asyncio.to_thread(_server_mss, client, server, 5001)
    await mtu.ensure_mss_clamping(router.ns)
    after = await asyncio.to_thread(_server_mss, client, server, 5002)
    assert before > 1360 >= after, (before, after)  # 1400 - 40: clamped to the route MTU on the way


async def test_a_restarted_plane_adopts_policies_and_routes_and_removes_only_stale_routes(
    lab: Lab, host: Host
) -> None:
    """A restart stop leaves policies and routes in place; the next process adopts them (its
    bookkeeping follows: deleting an adopted policy releases its route), removes a route of our
    table that no policy needs, and allocates reqids above none of the SPI reservations'."""
    peer = lab.host("b")
    lab.link(host, peer, f"{A}/24", f"{B}/24")
    net3 = ipaddress.ip_network("198.19.3.0/24")
    sel3 = TrafficSelector(NET1, net3)
    first = KernelDataPlane(netns=host.ns, scratch_netns=f"{lab.run_prefix}probe")
    await first.start()
    await first.ensure_policy(_out_policy(reqid=7))
    await first.ensure_policy(Policy(sel3, Direction.OUT, template=Template(IpsecProtocol.ESP, Mode.TUNNEL,
                                                                            A, B, 8), priority=10))
    await first.allocate_spi(IpsecProtocol.ESP, B, A)  # a reservation: private reqid, not counted
    host.ip("route", "add", "198.19.9.0/24", "via", str(B), "table", "220", "proto", "211")
    await first.close()  # a restart: nothing removed
    assert {p["dst"] for p in _xfrm_policies(host)} == {str(NET2), str(net3)}

    fresh = KernelDataPlane(netns=host.ns, capabilities=first.capabilities)
    await fresh.start()
    try:
        owned = await fresh.adopt()
        assert set(owned.policies) == {(SEL, Direction.OUT), (sel3, Direction.OUT)}
        assert owned.max_reqid == 0 and len(owned.sas) == 1  # the reservation, for the sweeper
        routes = {r["dst"] for r in _ip_json(host, "route", "show", "table", "220")}
        assert routes == {str(NET2), str(net3)}  # the stale 198.19.9.0/24 is gone, the others stand
        assert "meshsec" in host.run(["nft", "list", "tables"]).stdout  # clamping kept for OUT policies
        await fresh.delete_policy(SEL, Direction.OUT)
        assert {r["dst"] for r in _ip_json(host, "route", "show", "table", "220")} == {str(net3)}
    finally:
        await fresh.flush_owned()
        await fresh.close()
    assert _xfrm_policies(host) == [] and _ip_json(host, "route", "show", "table", "220") == []


async def test_bypassed_ike_socket_passes_our_own_block_policies_in_and_out(lab: Lab, dp: KernelDataPlane,
                                                                           host: Host) -> None:
    """A and B's own addresses inside owned BLOCK policies both ways (what a node-scope tunnel's
    selectors look like before its SA exists): a plain UDP socket of A's can neither send to B nor
    hear from it; the socket `bypass_socket` exempted does both (strongSwan's socket bypass)."""
    peer = lab.host("b")
    lab.link(host, peer, f"{A}/24", f"{B}/24")
    own = TrafficSelector(ipaddress.ip_network(f"{A}/32"), ipaddress.ip_network(f"{B}/32"))
    back = TrafficSelector(own.dst, own.src)
    await dp.ensure_policy(Policy(own, Direction.OUT, PolicyAction.BLOCK))
    await dp.ensure_policy(Policy(back, Direction.IN, PolicyAction.BLOCK))
    made = [await asyncio.to_thread(pr_netns.create_socket, ns, socket.AF_INET, socket.SOCK_DGRAM)
            for ns in (host.ns, host.ns, peer.ns)]
    plain, ike, far = made
    try:
        plain.bind((str(A), 4600))
        ike.bind((str(A), 500))
        far.bind((str(B), 500))
        far.settimeout(5)
        await dp.bypass_socket(ike)
        with pytest.raises(PermissionError):  # the kernel's answer to a BLOCK policy: EPERM
            plain.sendto(b"plain", (str(B), 500))
        ike.sendto(b"ike", (str(B), 500))
        assert far.recvfrom(100) == (b"ike", (str(A), 500))
        # Inbound, in this order over one veth: the datagram to the plain socket, the BLOCK
        # policy's drop, arrives first; once the bypassed socket has its own, the other is gone.
        far.sendto(b"to plain", (str(A), 4600))
        far.sendto(b"to ike", (str(A), 500))
        ike.settimeout(5)
        assert ike.recvfrom(100) == (b"to ike", (str(B), 500))
        plain.setblocking(False)
        with pytest.raises(BlockingIOError):
            plain.recv(100)
    finally:
        for s in made:
            s.close()


async def test_bypass_socket_refuses_what_is_not_an_ip_socket(dp: KernelDataPlane) -> None:
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        with pytest.raises(DataPlaneError, match="not IPv4 or IPv6"):
            await dp.bypass_socket(unix)
    finally:
        unix.close()
