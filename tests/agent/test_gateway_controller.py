"""A meshsec gateway's road warriors against a running controller: the engine's Configuration
Payload waits for AllocateLease (the IKE_AUTH answer is deferred, then resumed), the client gets
the controller's address, DNS and split routes, the lease is released when the IKE SA ends,
connect / disconnect / refusal are controller events (what `meshctl get events` shows), a full
pool refuses with the controller's reason, and deleting a device puts its certificate on the
revocation list: the gateway drops the client's IKE SA within one poll and refuses it after."""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509

from meshsec.agent.gateway.clients import (
    ClientConnected,
    ClientDisconnected,
    ClientEvent,
    ClientRefused,
    ConnectedClients,
)
from meshsec.agent.gateway.controller_leases import ControllerLeases
from meshsec.agent.gateway.revocation import RevocationFollower
from meshsec.agent.ike.certs import Credentials, wall_clock
from meshsec.agent.ike.config import IkeConfig
from meshsec.agent.ike.events import ChildSaEstablished, IkeSaDeleted, IkeSaFailed, VirtualAddressRefused
from meshsec.agent.ike.revocation import RevocationList
from meshsec.agent.ike.sa import State
from meshsec.agent.ike.ts import Ts
from meshsec.agent.ike.virtual_ip import Client
from meshsec.common.pki import make_csr, new_key
from meshsec.controller.server import Controller
from meshsec.v1 import admin_pb2, agent_pb2, agent_pb2_grpc
from tests.controller.ctl_harness import (
    CALL_TIMEOUT,
    EnrolledNode,
    admin_channel,
    admin_stub,
    apply,
    join,
    retained_events,
    running_controller,
)
from tests.controller.test_mesh_support import site
from tests.controller.test_remote_access_resources import pool, user
from tests.ike.peers import Pair, child, ike_config, of_type, responder_config
from tests.ike.pki import Authority, credentials, pem

pytestmark = pytest.mark.timeout(90)

DEVICES = [
    {"name": "laptop", "platform": "linux"},
    {"name": "phone", "platform": "android"},
    {"name": "tablet", "platform": "android"},
]
GW_CA = Authority.root("gateway test CA")
GW_CERT, GW_KEY = GW_CA.issue("gw.example.test")


@pytest.fixture
async def ctl(tmp_path: Path) -> AsyncIterator[Controller]:
    async with running_controller(
        tmp_path,
        site("dc1", ["198.19.1.0/24"]),
        pool(addresses=["198.19.200.0/30"]),  # two addresses
        user("bob", auth={"method": "certificate"}, devices=DEVICES),
    ) as controller:
        yield controller


async def _device(ctl: Controller, device: str) -> tuple[Credentials, str]:
    """The device's credentials as `meshctl remote-access profile bob DEVICE` makes them."""
    key = new_key()
    async with admin_channel(ctl) as channel:
        issued = await admin_stub(channel).IssueDeviceCertificate(
            admin_pb2.IssueDeviceCertificateRequest(
                user="bob", device=device, csr_pem=make_csr(key, f"{device}.bob")
            ),
            timeout=CALL_TIMEOUT,
        )
    creds = Credentials.load(issued.certificate_pem.encode(), key, [pem(GW_CA.cert)], wall_clock)
    return creds, issued.serial


class Gateway:
    """The engine side of one gateway node: its road-warrior config with the controller's leases
    and revocation list, plus what the agent does on the pool's and the follower's callbacks."""

    def __init__(self, node: EnrolledNode, ctl: Controller) -> None:
        self.channel = node.channel(ctl)
        stub = agent_pb2_grpc.AgentServiceStub(self.channel)
        self.ready: asyncio.Queue[Client] = asyncio.Queue()
        self.leases = ControllerLeases(stub, self.ready.put_nowait)
        self.revocations = RevocationList()
        self.pairs: list[Pair] = []
        self.clients = ConnectedClients(lambda _connection, client: self.leases.release(client))
        self._seen: dict[int, int] = {}  # events of each pair already fed to `clients`

        async def fetch() -> list[str]:
            listed = await stub.ListRevokedCertificates(
                agent_pb2.ListRevokedCertificatesRequest(), timeout=CALL_TIMEOUT
            )
            return list(listed.serials)

        self.follower = RevocationFollower(fetch, self.revocations, self._drop_revoked, interval=0.5)
        trusted = [x509.load_pem_x509_certificate(node.ca_bundle_pem)]
        self.config = responder_config(
            local_id="gw.example.test",
            remote_id="%any",
            psk=None,
            address_pool=self.leases,
            credentials=credentials([GW_CERT], GW_KEY, trusted, at=wall_clock()),
            revocations=self.revocations,
            children=(child(local="198.19.0.0/20", remote="0.0.0.0/0"),),
        )

    def _drop_revoked(self, serials: frozenset[str]) -> None:
        for pair in self.pairs:
            for sa in pair.table:
                if sa.peer_serial in serials and sa.state is State.ESTABLISHED:
                    sa.delete(pair.now)
            pair.pump()

    def observe(self) -> list[ClientEvent]:
        """What the agent does with the engine's events: connect/disconnect/refusal records, and
        each ended IKE SA's lease given back."""
        out = []
        for i, pair in enumerate(self.pairs):
            new = pair.events_r[self._seen.get(i, 0) :]
            self._seen[i] = len(pair.events_r)
            out += [e for ev in new if (e := self.clients.observe(i, "rw", "bob", ev)) is not None]
        return out

    async def connect(self, creds: Credentials) -> Pair:
        client: IkeConfig = ike_config(
            local_id="bob@example.test",
            remote_id="gw.example.test",
            psk=None,
            credentials=creds,
            request_virtual_ip="4",
            children=(child(local="0.0.0.0/0", remote="198.19.0.0/20"),),
        )
        pair = Pair(client, [self.config])
        self.pairs.append(pair)
        pair.connect()
        waiting = [sa for sa in pair.table if sa.tasks.deferred]  # IKE_AUTH waits for AllocateLease
        if waiting:
            await asyncio.wait_for(self.ready.get(), 10)
            waiting[0].resume_request(pair.now)
            pair.pump()
        return pair


async def _events(ctl: Controller) -> list[tuple[str, str]]:
    return [(e.reason, e.message) for e in await retained_events(ctl, ("RemoteAccessUser",))]


async def test_leases_from_the_controller_and_revocation(ctl: Controller) -> None:
    gw = Gateway(await join(ctl, "dc1", "gw1", "198.18.1.1", node_labels={"role": "ra"}), ctl)
    laptop, laptop_serial = await _device(ctl, "laptop")
    phone, _ = await _device(ctl, "phone")
    tablet, _ = await _device(ctl, "tablet")

    first = await gw.connect(laptop)
    assert first.initiator.state is State.ESTABLISHED, first.events_i
    vip = first.initiator.virtual_addresses[0]
    assert vip in ipaddress.ip_network("198.19.200.0/30")
    reply = first.initiator.cfg_reply
    assert reply is not None and [str(d) for d in reply.dns] == ["198.19.0.53"]
    assert [str(s) for s in reply.subnets] == ["198.19.0.0/20"]
    (gw_child,) = of_type(first.events_r, ChildSaEstablished)
    assert gw_child.ts_remote == (Ts(vip, vip),)
    second = await gw.connect(phone)  # another device of the same user: its own address
    assert second.initiator.virtual_addresses[0] not in (vip,)

    third = await gw.connect(tablet)  # the pool is full
    (refused,) = of_type(third.events_r, VirtualAddressRefused)
    assert refused.reason == (
        "bob@example.test: controller: pool staff: all 2 addresses of 198.19.200.0/30 "
        "are leased; release a lease or enlarge the pool"
    )
    assert refused.notify == "INTERNAL_ADDRESS_FAILURE"

    seen = gw.observe()
    assert [type(e) for e in seen] == [ClientConnected, ClientConnected, ClientRefused]
    second.initiator.delete(second.now)  # the phone leaves: its lease goes back
    second.pump()
    (left,) = gw.observe()
    assert isinstance(left, ClientDisconnected) and left.why == "deleted by client"
    assert Client("bob@example.test", "phone.bob").key not in gw.leases.leases
    await gw.leases.settle()

    # Removing the laptop from the user revokes its certificate: dropped within a poll, then refused.
    await apply(ctl, {**user("bob", auth={"method": "certificate"}, devices=DEVICES[1:])})
    started = time.monotonic()
    gw.follower.serving = True  # no push here (no watch): the poll that serves older controllers
    poller = asyncio.get_running_loop().create_task(gw.follower.run())
    try:
        while not of_type(first.events_i, IkeSaDeleted):
            assert time.monotonic() - started < 5, "revoked client still connected after 5 s"
            await asyncio.sleep(0.05)
    finally:
        poller.cancel()
    assert laptop_serial in gw.revocations
    again = await gw.connect(laptop)
    (failed,) = of_type(again.events_r, IkeSaFailed)
    assert f"certificate serial {laptop_serial} is revoked" in failed.reason

    events = await _events(ctl)
    assert ("RemoteAccessConnected", f"bob (laptop) on gw1 with {vip}") in events
    assert ("RemoteAccessDisconnected", "bob (phone) left gw1") in events
    assert any(r == "RemoteAccessRefused" and m.startswith("pool staff: all 2 addresses") for r, m in events)
    await gw.channel.close()


async def _until(check: object, what: str, timeout: float = 10.0) -> None:
    started = time.monotonic()
    while not check():  # type: ignore[operator]
        assert time.monotonic() - started < timeout, what
        await asyncio.sleep(0.05)


async def test_a_restarted_gateway_takes_a_resumed_clients_lease_back(ctl: Controller) -> None:
    """What a gateway agent restarted with its clients' IKE SAs does (issue #17): the lease is
    held at once with the persisted addresses, AllocateLease for the same identity and device
    confirms it (a reconnect: the same address); other addresses from the controller mean the
    lease is lost (fail closed); an unreachable controller keeps the hold and retries, and the
    client's disconnect meanwhile cancels the retry."""
    node = await join(ctl, "dc1", "gw1", "198.18.1.1", node_labels={"role": "ra"})
    gw = Gateway(node, ctl)
    laptop, _ = await _device(ctl, "laptop")
    first = await gw.connect(laptop)
    reply = first.responder.cfg_reply
    assert reply is not None and reply.ip4 is not None
    bob = Client("bob@example.test", "laptop.bob")

    channel = node.channel(ctl)  # the restarted agent's own channel
    restarted = ControllerLeases(agent_pb2_grpc.AgentServiceStub(channel), lambda _c: None)
    lost: list[str] = []
    restarted.retake(bob, reply, lambda _c, why: lost.append(why))
    assert restarted.leases[bob.key].holders == 1 and restarted.user_of(bob) == ""  # held at once
    await _until(lambda: restarted.user_of(bob) == "bob", "lease not confirmed")
    assert not lost

    moved = ControllerLeases(agent_pb2_grpc.AgentServiceStub(channel), lambda _c: None)
    other = ipaddress.IPv4Address(int(reply.ip4) ^ 1)
    moved.retake(bob, type(reply)(other, None, reply.dns, reply.subnets), lambda _c, why: lost.append(why))
    await _until(lambda: lost, "other addresses not noticed")
    assert lost == ["the controller leased other addresses"] and bob.key not in moved.leases

    dead = grpc.aio.insecure_channel("127.0.0.1:1")  # nothing listens: UNAVAILABLE, retried
    away = ControllerLeases(agent_pb2_grpc.AgentServiceStub(dead), lambda _c: None)
    away.retake(bob, reply, lambda _c, why: lost.append(why))
    await asyncio.sleep(1.5)  # the first try failed, the second waits
    assert away.leases[bob.key].holders == 1 and len(lost) == 1 and away._retakes
    assert away.release(bob) and not away._retakes  # the disconnect cancels the retry
    await away.settle()
    await dead.close()

    assert restarted.release(bob)  # the resumed client leaves: the restarted gateway releases it
    await restarted.settle()
    events = await _events(ctl)
    assert ("RemoteAccessDisconnected", "bob (laptop) left gw1") in events, events
    await channel.close()
    await gw.channel.close()
