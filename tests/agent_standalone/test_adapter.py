"""The asyncio IKE adapter with real UDP sockets inside lab namespaces: two meshsec agents
(initiator and responder adapters) negotiate over loopback or a veth link; data planes are
the recording one, so every SA and policy the hook installs can be inspected."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import struct
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from meshsec.agent.adapters.ike import AdapterSettings, EventCallback, IkeAdapter, SaRecord
from meshsec.agent.adapters.recording import RecordingDataPlane
from meshsec.agent.dataplane.api import DataPlane, DataPlaneError, Direction, SaId, SecurityAssociation
from meshsec.agent.ike.address import Address
from meshsec.agent.ike.config import ChildConfig, IkeConfig
from meshsec.agent.ike.events import ChildSaDeleted, Event, LivenessChecked
from meshsec.agent.ike.responder import ResponderSettings
from meshsec.agent.ike.sa import IkeSa
from meshsec.agent.ike.ts import Ts
from meshsec.common.secrets import Secret
from tests.agent_standalone.netns_thread import NetnsLoop
from tests.harness.netns import Lab

pytestmark = [pytest.mark.netns, pytest.mark.timeout(60)]

A, B = "127.0.0.1", "127.0.0.2"


def configs(*, force_encap: bool = False, keepalive: float = 20.0) -> tuple[IkeConfig, IkeConfig]:
    ts_a, ts_b = (Ts.from_cidr("198.19.50.1/32"),), (Ts.from_cidr("198.19.50.2/32"),)
    init = IkeConfig(
        "conn", "a.test", "b.test", Secret("adapter-psk"),
        children=(ChildConfig("net", ts_a, ts_b),), force_encap=force_encap, natt_keepalive=keepalive,
    )  # fmt: skip
    resp = IkeConfig(
        "conn", "b.test", "a.test", Secret("adapter-psk"), children=(ChildConfig("net", ts_b, ts_a),)
    )
    return init, resp


@pytest.fixture
def ns_loop(lab: Lab) -> Iterator[NetnsLoop]:
    host = lab.host("a")
    loop = NetnsLoop(host.ns)
    try:
        yield loop
    finally:
        loop.close()


async def wait_until(pred: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not pred():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.01)


def established(adapter: IkeAdapter) -> SaRecord | None:
    for rec in adapter.active():
        if rec.established is not None and rec.children:
            return rec
    return None


def _by_direction(dp: RecordingDataPlane, direction: Direction) -> SecurityAssociation:
    (sa,) = [s for s in dp.sas.values() if s.direction is direction]
    return sa


@contextlib.asynccontextmanager
async def started_pair(
    responder: IkeConfig,
    *,
    dataplane_a: DataPlane | None = None,
    dataplane_b: DataPlane | None = None,
    on_event_a: EventCallback | None = None,
) -> AsyncIterator[tuple[IkeAdapter, IkeAdapter]]:
    """Adapter `a` on A (initiates, accepts nobody) and `b` on B (answers with `responder`), both
    started; on exit both close without sending DELETEs."""
    a = IkeAdapter(
        lambda local, remote: [],
        dataplane=dataplane_a,
        settings=AdapterSettings(bind=(A,)),
        on_event=on_event_a,
    )
    b = IkeAdapter(
        lambda local, remote: [responder], dataplane=dataplane_b, settings=AdapterSettings(bind=(B,))
    )
    await a.start()
    await b.start()
    try:
        yield a, b
    finally:
        await a.close(graceful=False)
        await b.close(graceful=False)


def test_establish_install_and_graceful_delete(ns_loop: NetnsLoop, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    async def scenario() -> None:
        ci, cr = configs()
        dpa, dpb = RecordingDataPlane(), RecordingDataPlane()
        async with started_pair(cr, dataplane_a=dpa, dataplane_b=dpb) as (a, b):
            await a.initiate(ci, Address(B, 500))
            await wait_until(lambda: established(a) and established(b))
            await a.settle()
            await b.settle()
            sa_a, sa_b = (await a.status())["ike_sas"], (await b.status())["ike_sas"]
            assert len(sa_a) == len(sa_b) == 1
            assert sa_a[0]["initiator_spi"] == sa_b[0]["initiator_spi"]
            assert sa_a[0]["responder_spi"] == sa_b[0]["responder_spi"]
            assert sa_a[0]["state"] == sa_b[0]["state"] == "ESTABLISHED"
            ca, cb = sa_a[0]["child_sas"][0], sa_b[0]["child_sas"][0]
            assert (ca["spi_in"], ca["spi_out"]) == (cb["spi_out"], cb["spi_in"])
            assert ca["state"] == cb["state"] == "INSTALLED"
            assert ca["counters"] == {"bytes_in": 0, "packets_in": 0, "bytes_out": 0, "packets_out": 0}

            for dp, mine, theirs in ((dpa, A, B), (dpb, B, A)):
                inbound, outbound = _by_direction(dp, Direction.IN), _by_direction(dp, Direction.OUT)
                assert (str(inbound.id.dst), str(inbound.src)) == (mine, theirs)
                assert (str(outbound.id.dst), str(outbound.src)) == (theirs, mine)
                # The inbound SPI was reserved in the data plane before it went on the wire.
                reserved = f"allocate_spi ESP {inbound.id.spi:#010x}"
                assert dp.log.index(reserved) < dp.log.index(f"add_sa in {inbound.id.spi:#010x}")
                assert {p.direction for p in dp.policies.values()} == {
                    Direction.IN,
                    Direction.OUT,
                    Direction.FWD,
                }
            # What A encrypts with, B decrypts with (and vice versa).
            a_out, b_in = _by_direction(dpa, Direction.OUT), _by_direction(dpb, Direction.IN)
            assert a_out.id == b_in.id
            assert a_out.encryption is not None and b_in.encryption is not None
            assert a_out.encryption.key == b_in.encryption.key
            assert (
                _by_direction(dpa, Direction.IN).encryption.key
                == _by_direction(dpb, Direction.OUT).encryption.key
            )  # type: ignore[union-attr]
            # No key material in status or logs (the logs run at DEBUG here).
            secrets = {a_out.encryption.key.reveal().hex(), b_in.encryption.key.reveal().hex(), "adapter-psk"}
            text = json.dumps([await a.status(), await b.status()], default=str) + caplog.text
            assert "ESTABLISHED" in caplog.text
            assert not [k for k in secrets if k in text]

            await a.close(graceful=True)
            await wait_until(lambda: not b.active())
            await b.settle()
            assert dpa.sas == {} and dpa.policies == {}
            assert dpb.sas == {} and dpb.policies == {}
            assert [r.outcome for r in b.history] == ["deleted by peer"]

    ns_loop.run(scenario())


def _garbage() -> list[tuple[int, bytes]]:
    header_only = os.urandom(8) + bytes(8) + bytes((33, 0x20, 34, 0x08)) + bytes(4) + struct.pack("!I", 28)
    bad_length = header_only[:24] + struct.pack("!I", 9999) + b"x" * 40
    return [
        (500, b""),
        (500, b"\x01\x02\x03"),
        (500, os.urandom(200)),
        (500, bad_length),
        (500, header_only),
        (4500, b"\xff"),  # NAT-T keepalive
        (4500, b"\x12\x34\x56\x78" + os.urandom(60)),  # ESP, but no data plane reads it here
        (4500, bytes(4) + b"\x00\x01"),  # non-ESP marker, truncated IKE
        (4500, bytes(4) + os.urandom(300)),
    ]


def test_malformed_datagrams_are_counted_and_harmless(ns_loop: NetnsLoop) -> None:
    async def scenario() -> dict[str, Any]:
        ci, cr = configs()
        async with started_pair(cr) as (a, b):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind((A, 0))
                for port, data in _garbage():
                    s.sendto(data, (B, port))
            await wait_until(lambda: b.stats["datagrams_received"] >= len(_garbage()))
            await a.initiate(ci, Address(B, 500))
            await wait_until(lambda: established(a) and established(b))
            return {
                "adapter": dict(b.stats),
                "table": dict(b.table.stats),
                "responder": dict(b.responder.stats),
            }

    stats = ns_loop.run(scenario())
    adapter = stats["adapter"]
    assert adapter["dropped_short"] == 3  # empty, 3 bytes, truncated IKE behind the marker
    assert adapter["natt_keepalives_received"] == 1
    assert adapter["dropped_esp_without_dataplane"] == 1
    assert adapter.get("adapter_errors", 0) == 0
    engine_drops = sum(stats["table"].values()) + sum(stats["responder"].values())
    assert engine_drops >= 4, stats  # random, bad length, header only, random behind the marker


def test_nat_keepalives_and_float_to_4500(ns_loop: NetnsLoop) -> None:
    async def scenario() -> tuple[dict[str, int], dict[str, int], list[dict[str, Any]]]:
        ci, cr = configs(force_encap=True, keepalive=0.2)
        async with started_pair(cr) as (a, b):
            await a.initiate(ci, Address(B, 500))
            await wait_until(lambda: established(a) and established(b))
            await wait_until(lambda: b.stats["natt_keepalives_received"] >= 2, timeout=5)
            return dict(a.stats), dict(b.stats), (await a.status())["ike_sas"]

    a_stats, _b_stats, sas = ns_loop.run(scenario())
    assert a_stats["natt_keepalives_sent"] >= 2
    assert sas[0]["local"] == f"{A}:4500" and sas[0]["remote"] == f"{B}:4500"
    assert sas[0]["nat_local"] is True
    assert sas[0]["child_sas"][0]["udp_encap"] is True


class RefusingDataPlane(RecordingDataPlane):
    """Accepts inbound SAs but refuses outbound ones, like a backend lacking an algorithm."""

    async def add_sa(self, sa: SecurityAssociation) -> None:
        if sa.direction is Direction.OUT:
            raise DataPlaneError("outbound SA refused (test)")
        await super().add_sa(sa)


def test_child_the_dataplane_refuses_is_deleted_on_both_sides(ns_loop: NetnsLoop) -> None:
    async def scenario() -> tuple[list[Event], RecordingDataPlane, RecordingDataPlane, IkeAdapter]:
        ci, cr = configs()
        dpa, dpb = RecordingDataPlane(), RefusingDataPlane()
        events_a: list[Event] = []
        async with started_pair(
            cr, dataplane_a=dpa, dataplane_b=dpb, on_event_a=lambda rec, ev: events_a.append(ev)
        ) as (a, b):
            await a.initiate(ci, Address(B, 500))
            await wait_until(lambda: any(isinstance(e, ChildSaDeleted) for e in events_a))
            await a.settle()
            await b.settle()
            return events_a, dpa, dpb, b

    events_a, dpa, dpb, b = ns_loop.run(scenario())
    deleted = [e for e in events_a if isinstance(e, ChildSaDeleted)]
    assert len(deleted) == 1 and deleted[0].by_peer
    assert dpa.sas == {} and dpa.policies == {}
    assert dpb.sas == {} and dpb.policies == {}  # the inbound half was rolled back
    assert b.stats["child_install_failed"] == 1
    assert [rec.sa.state.name for rec in b.records.values()] == ["ESTABLISHED"]  # IKE SA survives


def test_wildcard_bind_answers_from_the_address_it_was_asked_on(lab: Lab) -> None:
    """PKTINFO: a responder bound to 0.0.0.0 with two addresses answers from the one the
    initiator used, so NAT detection sees no NAT and the initiator accepts the replies."""
    ha, hb = lab.host("a"), lab.host("b")
    lab.link(ha, hb, "198.18.50.1/24", "198.18.50.2/24")
    hb.add_address("to-a", "198.18.50.3/24")
    la, lb = NetnsLoop(ha.ns), NetnsLoop(hb.ns)
    ci, cr = configs()
    a = IkeAdapter(lambda local, remote: [], settings=AdapterSettings(bind=("198.18.50.1",)))
    b = IkeAdapter(lambda local, remote: [cr], settings=AdapterSettings(bind=("0.0.0.0", "::")))
    try:
        la.run(a.start())
        lb.run(b.start())

        async def initiate() -> None:
            await a.initiate(ci, Address("198.18.50.3", 500))
            await wait_until(lambda: established(a))

        la.run(initiate())

        async def status(ad: IkeAdapter) -> dict[str, Any]:
            return await ad.status()

        sa_a = la.run(status(a))["ike_sas"][0]
        sa_b = lb.run(status(b))["ike_sas"][0]
        assert sa_a["remote"] == "198.18.50.3:500" and sa_b["local"] == "198.18.50.3:500"
        assert sa_a["nat_local"] is sa_a["nat_remote"] is sa_b["nat_remote"] is False
        assert sa_b["child_sas"][0]["spi_in"] == sa_a["child_sas"][0]["spi_out"]
        assert {ep.split(":")[0] if "[" not in ep else "::" for ep in lb.run(status(b))["listening"]} >= {
            "0.0.0.0"
        }
    finally:
        la.run(a.close(graceful=False))
        lb.run(b.close(graceful=False))
        la.close()
        lb.close()


class BareInitiator:
    """An engine IkeSa on a plain socket, driven by hand: lets a test choose the source port
    (a NAT rebinding) or the address family, independently of the adapter under test."""

    def __init__(self, config: IkeConfig, host: str, remote: str) -> None:
        self.family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.host = host
        self.sock = self._socket()
        self.sa = IkeSa(
            config, Address(host, self.sock.getsockname()[1]), Address(remote, 500), initiator=True
        )

    def _socket(self) -> socket.socket:
        sock = socket.socket(self.family, socket.SOCK_DGRAM)
        sock.bind((self.host, 0))
        sock.setblocking(False)
        return sock

    def rebind(self) -> None:
        """A new source port, as when a NAT drops and recreates the mapping."""
        self.sock.close()
        self.sock = self._socket()

    async def run_until(self, done: Callable[[], bool], timeout: float = 10.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not done():
            if loop.time() > deadline:
                raise TimeoutError("bare initiator: condition not met")
            for d in self.sa.datagrams_to_send():
                self.sock.sendto(d.wire(), (d.remote.host, d.remote.port))
            try:
                data, peer = await asyncio.wait_for(loop.sock_recvfrom(self.sock, 65535), 0.2)
            except TimeoutError:
                self.sa.handle_timer(loop.time())
                continue
            if peer[1] == 4500:
                data = data[4:]  # non-ESP marker
            self.sa.receive(data, self.sa.local, Address(peer[0], peer[1]), loop.time())


def test_ipv6_and_cookies_against_a_bare_engine_initiator(ns_loop: NetnsLoop) -> None:
    """An engine IkeSa on a plain socket talks IPv6 to a responder adapter bound to [::] that
    demands a COOKIE for every IKE_SA_INIT (threshold 0): the wildcard v6 socket learns the
    local address with IPV6_PKTINFO, and the front door's stateless answers go out too."""

    async def scenario() -> tuple[dict[str, int], list[dict[str, Any]], int]:
        ci, cr = configs()
        settings = AdapterSettings(bind=("::",), responder=ResponderSettings(cookie_threshold=0))
        b = IkeAdapter(lambda local, remote: [cr], settings=settings)
        await b.start()
        peer = BareInitiator(ci, "::1", "::1")
        try:
            peer.sa.initiate(asyncio.get_running_loop().time())
            await peer.run_until(lambda: peer.sa.established)
            await wait_until(lambda: established(b))
            return dict(b.responder.stats), (await b.status())["ike_sas"], peer.sa.stats["retransmits"]
        finally:
            peer.sock.close()
            await b.close(graceful=False)

    front, sas, retransmits = ns_loop.run(scenario())
    assert retransmits == 0
    assert front["cookie_sent"] == 1 and front["cookie_accepted"] == 1
    assert sas[0]["local"] == "[::1]:500" and sas[0]["remote"].startswith("[::1]:")
    assert sas[0]["nat_local"] is False and sas[0]["nat_remote"] is False


def test_child_sas_follow_a_nat_rebinding(ns_loop: NetnsLoop) -> None:
    """After the peer's NAT mapping changes port, its next authenticated message moves the IKE
    SA, and the adapter updates both ESP-in-UDP SAs in the data plane to the new port."""

    async def scenario() -> tuple[RecordingDataPlane, int, int]:
        ci, cr = configs(force_encap=True)
        dp = RecordingDataPlane()
        b = IkeAdapter(lambda local, remote: [cr], dataplane=dp, settings=AdapterSettings(bind=(B,)))
        await b.start()
        peer = BareInitiator(ci, A, B)
        try:
            peer.sa.initiate(asyncio.get_running_loop().time())
            await peer.run_until(lambda: peer.sa.established)
            await wait_until(lambda: established(b))
            await b.settle()
            first = peer.sock.getsockname()[1]
            peer.rebind()
            while peer.sa.next_event() is not None:
                pass
            peer.sa.check_liveness(asyncio.get_running_loop().time())
            await peer.run_until(lambda: isinstance(peer.sa.next_event(), LivenessChecked))
            await b.settle()
            return dp, first, peer.sock.getsockname()[1]
        finally:
            peer.sock.close()
            await b.close(graceful=False)

    dp, old_port, new_port = ns_loop.run(scenario())
    assert old_port != new_port
    inbound, outbound = _by_direction(dp, Direction.IN), _by_direction(dp, Direction.OUT)
    assert inbound.encap is not None and outbound.encap is not None
    assert (inbound.encap.src_port, inbound.encap.dst_port) == (new_port, 4500)
    assert (outbound.encap.src_port, outbound.encap.dst_port) == (4500, new_port)
    assert sum(op.startswith("update_sa") for op in dp.log) == 2


def test_hard_expiry_in_the_dataplane_deletes_the_child_sa_with_the_peer(ns_loop: NetnsLoop) -> None:
    async def scenario() -> tuple[list[bool], list[Event], RecordingDataPlane, RecordingDataPlane]:
        ci, cr = configs()
        dpa, dpb = RecordingDataPlane(), RecordingDataPlane()
        events_a: list[Event] = []
        async with started_pair(
            cr, dataplane_a=dpa, dataplane_b=dpb, on_event_a=lambda rec, ev: events_a.append(ev)
        ) as (a, b):
            await a.initiate(ci, Address(B, 500))
            await wait_until(lambda: established(a) and established(b))
            await b.settle()
            inbound = _by_direction(dpb, Direction.IN).id
            unknown = SaId(inbound.dst, inbound.spi ^ 1, inbound.protocol)
            answers = [b.child_expired(unknown, hard=True), b.child_expired(inbound, hard=False)]
            # Soft: the engine rekeys the CHILD_SA; once the old pair is gone, expire the new one.
            await wait_until(lambda: len(dpb.sas) == 2 and inbound not in dpb.sas)
            await a.settle()
            soft_left = len(dpb.sas)
            inbound = _by_direction(dpb, Direction.IN).id
            answers.append(b.child_expired(inbound, hard=True))
            await wait_until(lambda: sum(isinstance(e, ChildSaDeleted) for e in events_a) == 2)
            await a.settle()
            await b.settle()
            answers.append(soft_left == 2)
            return answers, events_a, dpa, dpb

    answers, events_a, dpa, dpb = ns_loop.run(scenario())
    assert answers == [False, True, True, True]
    assert [e.by_peer for e in events_a if isinstance(e, ChildSaDeleted)] == [True, True]
    assert dpa.sas == {} and dpb.sas == {}
