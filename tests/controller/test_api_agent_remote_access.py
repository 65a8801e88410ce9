"""AgentService remote-access RPCs with enrolled nodes on a running controller: only gateways of
a user's pool get leases, a reconnect keeps the address, a full pool refuses with its reason,
releases and refusals are events, and gateways read the revocation list."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from meshsec.common.md4 import nt_password_hash
from meshsec.common.pki import make_csr, new_key
from meshsec.controller.server import Controller
from meshsec.v1 import admin_pb2, agent_pb2, agent_pb2_grpc
from tests.controller.ctl_harness import (
    CALL_TIMEOUT,
    EnrolledNode,
    Watcher,
    admin_channel,
    admin_stub,
    apply,
    join,
    retained_events,
    running_controller,
)
from tests.controller.test_api_agent import next_update
from tests.controller.test_mesh_support import site
from tests.controller.test_remote_access_resources import pool, user

pytestmark = pytest.mark.timeout(60)

BOB_DEVICES = [{"name": "laptop", "platform": "linux"}, {"name": "phone", "platform": "android"}]


@pytest.fixture
async def ctl(tmp_path: Path) -> AsyncIterator[Controller]:
    async with running_controller(
        tmp_path,
        site("dc1", ["198.19.1.0/24"]),
        pool(addresses=["198.19.200.0/30"]),  # two addresses
        user("alice"),  # eap-mschapv2
        user("bob", auth={"method": "certificate"}, devices=BOB_DEVICES),
    ) as controller:
        yield controller


async def _call(node: EnrolledNode, ctl: Controller, method: str, request: Any) -> Any:
    async with node.channel(ctl) as channel:
        return await getattr(agent_pb2_grpc.AgentServiceStub(channel), method)(request, timeout=CALL_TIMEOUT)


async def _refused(node: EnrolledNode, ctl: Controller, method: str, request: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _call(node, ctl, method, request)
    return info.value


async def test_gateways_allocate_and_release_leases(ctl: Controller) -> None:
    gw = await join(ctl, "dc1", "gw1", "198.18.1.1", node_labels={"role": "ra"})
    other = await join(ctl, "dc1", "n2", "198.18.1.2")
    alice = agent_pb2.AllocateLeaseRequest(identity="ALICE@example.test", device="eap-1")
    first = await _call(gw, ctl, "AllocateLease", alice)
    assert first.user == "alice" and first.pool == "staff"
    assert first.addresses[0] in ("198.19.200.1", "198.19.200.2")
    assert list(first.dns) == ["198.19.0.53"] and list(first.routes) == ["198.19.0.0/20"]
    assert (await _call(gw, ctl, "AllocateLease", alice)).addresses == first.addresses  # a reconnect

    denied = await _refused(other, ctl, "AllocateLease", alice)
    assert denied.code() is grpc.StatusCode.PERMISSION_DENIED
    assert denied.details() == "node n2 is not a gateway of RemoteAccessPool/staff"
    unknown = await _refused(
        gw, ctl, "AllocateLease", agent_pb2.AllocateLeaseRequest(identity="eve@x", device="d")
    )
    assert unknown.code() is grpc.StatusCode.NOT_FOUND
    tablet = agent_pb2.AllocateLeaseRequest(identity="bob@example.test", device="tablet")
    assert (
        await _refused(gw, ctl, "AllocateLease", tablet)
    ).details() == "RemoteAccessUser/bob has no device 'tablet'"

    bob = agent_pb2.AllocateLeaseRequest(identity="bob@example.test", device="laptop")
    await _call(gw, ctl, "AllocateLease", bob)
    full = await _refused(
        gw, ctl, "AllocateLease", agent_pb2.AllocateLeaseRequest(identity="bob@example.test", device="phone")
    )
    assert full.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert full.details() == (
        "pool staff: all 2 addresses of 198.19.200.0/30 are leased; release a lease or enlarge the pool"
    )
    release = agent_pb2.ReleaseLeaseRequest(identity="alice@example.test", device="eap-1")
    assert (await _call(gw, ctl, "ReleaseLease", release)).released
    assert not (await _call(gw, ctl, "ReleaseLease", release)).released
    assert (
        await _call(
            gw,
            ctl,
            "AllocateLease",
            agent_pb2.AllocateLeaseRequest(identity="bob@example.test", device="phone"),
        )
    ).addresses

    events = [
        (e.reason, e.involved.name, e.message) for e in await retained_events(ctl, ("RemoteAccessUser",))
    ]
    assert ("RemoteAccessConnected", "alice", f"alice (eap-1) on gw1 with {first.addresses[0]}") in events
    assert ("RemoteAccessDisconnected", "alice", "alice (eap-1) left gw1") in events
    assert ("RemoteAccessRefused", "alice", "node n2 is not a gateway of RemoteAccessPool/staff") in events
    assert any(
        r == "RemoteAccessRefused" and m.startswith("pool staff: all 2 addresses") for r, _, m in events
    )


async def test_gateways_read_the_revocation_list(ctl: Controller) -> None:
    gw = await join(ctl, "dc1", "gw1", "198.18.1.1", node_labels={"role": "ra"})
    async with admin_channel(ctl) as channel:
        issued = await admin_stub(channel).IssueDeviceCertificate(
            admin_pb2.IssueDeviceCertificateRequest(
                user="bob", device="laptop", csr_pem=make_csr(new_key(), "laptop.bob")
            ),
            timeout=CALL_TIMEOUT,
        )
    listed = await _call(gw, ctl, "ListRevokedCertificates", agent_pb2.ListRevokedCertificatesRequest())
    assert list(listed.serials) == []
    await apply(ctl, user("bob", auth={"method": "certificate"}, devices=BOB_DEVICES[1:]))
    listed = await _call(gw, ctl, "ListRevokedCertificates", agent_pb2.ListRevokedCertificatesRequest())
    assert list(listed.serials) == [issued.serial]


async def _issue(ctl: Controller, user: str, device: str) -> str:
    async with admin_channel(ctl) as channel:
        issued = await admin_stub(channel).IssueDeviceCertificate(
            admin_pb2.IssueDeviceCertificateRequest(
                user=user, device=device, csr_pem=make_csr(new_key(), f"{device}.{user}")
            ),
            timeout=CALL_TIMEOUT,
        )
    return str(issued.serial)


async def test_the_revocation_list_is_pushed_to_gateways_in_their_node_config(ctl: Controller) -> None:
    """Deleting a device or a user reaches every gateway as a desired-state delta carrying the
    new list (no poll), and only nodes that serve a pool get one."""
    gw1 = await join(ctl, "dc1", "gw1", "198.18.1.1", node_labels={"role": "ra"})
    gw2 = await join(ctl, "dc1", "gw2", "198.18.1.2", node_labels={"role": "ra"})
    other = await join(ctl, "dc1", "n3", "198.18.1.3")
    laptop, phone = await _issue(ctl, "bob", "laptop"), await _issue(ctl, "bob", "phone")
    w1, w2, w3 = Watcher(gw1), Watcher(gw2), Watcher(other)
    async with gw1.channel(ctl) as c1, gw2.channel(ctl) as c2, other.channel(ctl) as c3:
        u1, u2, u3 = w1.updates(c1), w2.updates(c2), w3.updates(c3)
        for updates in (u1, u2):
            snapshot = await next_update(updates)
            assert snapshot.node.HasField("revocation") and list(snapshot.node.revocation.serials) == []
        assert not (await next_update(u3)).node.HasField("revocation")
        # A user change that revokes nothing (alice's device list) sends the gateways nothing:
        # the next update they see is the one that revokes bob's laptop.
        await apply(ctl, user("alice", devices=[{"name": "ipad", "platform": "apple"}]))
        await apply(ctl, user("bob", auth={"method": "certificate"}, devices=BOB_DEVICES[1:]))
        for updates in (u1, u2):
            delta = await next_update(updates)
            assert delta.kind == agent_pb2.UPDATE_KIND_DELTA
            assert list(delta.node.revocation.serials) == [laptop]
        # The laptop back under the same name: its old certificate stays revoked (nothing sent).
        await apply(ctl, user("bob", auth={"method": "certificate"}, devices=BOB_DEVICES))
        phone_lease = agent_pb2.AllocateLeaseRequest(identity="bob@example.test", device="phone")
        await _call(gw2, ctl, "AllocateLease", phone_lease)
        async with admin_channel(ctl) as channel:
            await admin_stub(channel).Delete(
                admin_pb2.DeleteRequest(kind="RemoteAccessUser", name="bob"), timeout=CALL_TIMEOUT
            )
        for updates in (u1, u2):
            delta = await next_update(updates)
            assert list(delta.node.revocation.serials) == sorted([laptop, phone])
    # A new bob with the same devices does not bring the old certificates back.
    await apply(ctl, user("bob", auth={"method": "certificate"}, devices=BOB_DEVICES))
    listed = await _call(gw1, ctl, "ListRevokedCertificates", agent_pb2.ListRevokedCertificatesRequest())
    assert list(listed.serials) == sorted([laptop, phone])
    assert ctl.core is not None
    pushed = ctl.core.state.snapshot("gw1")
    assert pushed is not None and pushed.config is not None
    assert list(pushed.config.revocation.serials) == sorted([laptop, phone])
    events = [(e.reason, e.message) for e in await retained_events(ctl, ("RemoteAccessUser",))]
    # The deletion gave the lease back itself (gw2's ReleaseLease finds no user): its event.
    assert ("RemoteAccessDisconnected", "bob (phone) left gw2: user deleted") in events


async def test_a_gateway_reports_a_revoked_client_as_a_refusal_of_its_user(ctl: Controller) -> None:
    gw = await join(ctl, "dc1", "gw1", "198.18.1.1", node_labels={"role": "ra"})
    other = await join(ctl, "dc1", "n2", "198.18.1.2")
    laptop, phone = await _issue(ctl, "bob", "laptop"), await _issue(ctl, "bob", "phone")
    await apply(ctl, user("bob", auth={"method": "certificate"}, devices=BOB_DEVICES[1:]))
    report = agent_pb2.ReportRevokedClientRequest(serial=laptop.upper(), peer_address="198.18.9.9")
    await _call(gw, ctl, "ReportRevokedClient", report)
    # Only a serial the controller revoked, and only from a gateway, becomes an event.
    still_valid = agent_pb2.ReportRevokedClientRequest(serial=phone)
    assert (await _refused(gw, ctl, "ReportRevokedClient", still_valid)).code() is grpc.StatusCode.NOT_FOUND
    unknown = agent_pb2.ReportRevokedClientRequest(serial="abc")
    assert (await _refused(gw, ctl, "ReportRevokedClient", unknown)).code() is grpc.StatusCode.NOT_FOUND
    denied = await _refused(other, ctl, "ReportRevokedClient", report)
    assert denied.code() is grpc.StatusCode.PERMISSION_DENIED
    refusals = [
        (e.involved.name, e.message)
        for e in await retained_events(ctl, ("RemoteAccessUser",))
        if e.reason == "RemoteAccessRefused"
    ]
    assert refusals == [
        ("bob", f"bob (laptop) refused on gw1 from 198.18.9.9: certificate {laptop} is revoked")
    ]


async def test_a_gateway_reports_a_failed_eap_client_as_a_refusal_of_its_user(ctl: Controller) -> None:
    gw = await join(ctl, "dc1", "gw1", "198.18.1.1", node_labels={"role": "ra"})
    other = await join(ctl, "dc1", "n2", "198.18.1.2")
    why = "EAP-MSCHAPV2 for 'alice': wrong password"
    wrong = agent_pb2.ReportRefusedClientRequest(identity="ALICE@example.test", reason=why,
                                                 peer_address="198.18.9.9")  # fmt: skip
    await _call(gw, ctl, "ReportRefusedClient", wrong)
    await _call(gw, ctl, "ReportRefusedClient", wrong)  # a retry within the minute: no second event
    # A name of no user records nothing (a guess at names writes no history), nor does a node
    # that is no gateway of alice's pool.
    guess = agent_pb2.ReportRefusedClientRequest(identity="mallory@example.test", reason="wrong password")
    assert (await _refused(gw, ctl, "ReportRefusedClient", guess)).code() is grpc.StatusCode.NOT_FOUND
    denied = await _refused(other, ctl, "ReportRefusedClient", wrong)
    assert denied.code() is grpc.StatusCode.PERMISSION_DENIED
    refusals = [
        (e.involved.name, e.message, e.source)
        for e in await retained_events(ctl, ("RemoteAccessUser",))
        if e.reason == "RemoteAccessRefused"
    ]
    assert refusals == [
        ("alice", f"alice refused on gw1 from 198.18.9.9: {why}", "agent/gw1"),
        # As for AllocateLease: the controller's own refusal of a node that serves no such pool.
        ("alice", "node n2 is not a gateway of RemoteAccessPool/staff", "controller/ctl-a"),
    ]


async def test_gateway_nodes_get_the_pools_they_serve_in_their_node_config(ctl: Controller) -> None:
    gw = await join(ctl, "dc1", "gw1", "198.18.1.1", node_labels={"role": "ra"})
    other = await join(ctl, "dc1", "n2", "198.18.1.2")
    watcher, bystander = Watcher(gw), Watcher(other)
    async with gw.channel(ctl) as channel, other.channel(ctl) as other_channel:
        updates, theirs = watcher.updates(channel), bystander.updates(other_channel)
        snapshot = await next_update(updates)
        (service,) = snapshot.node.remote_access
        assert service.pool == "staff" and list(service.local_ts) == ["198.19.0.0/20"]
        assert service.ike_proposals[0].startswith("aes256gcm16")
        assert set(service.auth_methods) == {"certificate", "eap-mschapv2"}
        assert not (await next_update(theirs)).node.remote_access
        # A pool edit reaches its gateways as a new NodeConfig.
        await apply(ctl, pool(addresses=["198.19.200.0/30"], routes={"mode": "full"}))
        delta = await next_update(updates)
        assert list(delta.node.remote_access[0].local_ts) == ["0.0.0.0/0", "::/0"]
async def test_gateways_get_an_eap_users_nt_hash_and_nothing_else(ctl: Controller) -> None:
    gw = await join(ctl, "dc1", "gw1", "198.18.1.1", node_labels={"role": "ra"})
    other = await join(ctl, "dc1", "n2", "198.18.1.2")
    alice = agent_pb2.GetEapCredentialRequest(identity="Alice@example.test")
    unset = await _call(gw, ctl, "GetEapCredential", alice)
    assert (unset.user, unset.method, unset.nt_hash) == ("alice", "eap-mschapv2", b"")  # no password yet
    async with admin_channel(ctl) as channel:
        await admin_stub(channel).SetRemoteAccessPassword(
            admin_pb2.SetRemoteAccessPasswordRequest(user="alice", password="correct horse battery"),
            timeout=CALL_TIMEOUT,
        )
    got = await _call(gw, ctl, "GetEapCredential", alice)
    assert got.nt_hash == nt_password_hash("correct horse battery")
    denied = await _refused(other, ctl, "GetEapCredential", alice)
    assert denied.code() is grpc.StatusCode.PERMISSION_DENIED
    unknown = await _refused(gw, ctl, "GetEapCredential", agent_pb2.GetEapCredentialRequest(identity="eve@x"))
    assert unknown.code() is grpc.StatusCode.NOT_FOUND
    bob = await _refused(
        gw, ctl, "GetEapCredential", agent_pb2.GetEapCredentialRequest(identity="bob@example.test")
    )
    assert bob.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert bob.details() == "RemoteAccessUser/bob authenticates with certificate, not EAP"
