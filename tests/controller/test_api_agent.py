"""AgentService of a real controller over gRPC with mTLS on 127.0.0.1 (embedded store).

Enrollment with bootstrap tokens (happy path, bad, expired, reused, bound to another name), the
authorization rule (a node certificate reads only its own slice), the desired-state watch
(snapshot, deltas on changes, resume from a version) and status reports reaching the admin view.
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from meshsec.controller.mesh.psk import derive_pair_psk
from meshsec.controller.resources import Kind
from meshsec.controller.server import Controller
from meshsec.v1 import admin_pb2, agent_pb2, agent_pb2_grpc, common_pb2
from tests.controller.ctl_harness import (
    CALL_TIMEOUT,
    EnrolledNode,
    Watcher,
    admin_channel,
    admin_stub,
    apply,
    bootstrap_channel,
    core_of,
    create_token,
    enroll,
    facts,
    join,
    running_controller,
)
from tests.controller.test_mesh_support import node, policy, site
from tests.harness.tls import ThrowawayCA, new_key_and_csr

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def ctl(tmp_path: Path) -> AsyncIterator[Controller]:
    async with running_controller(
        tmp_path,
        site("dc1", ["198.19.1.0/24"]),
        site("dc2", ["198.19.2.0/24"]),
        policy("mesh", "full-mesh", "node", {}, auth={"method": "psk"}),
    ) as controller:
        yield controller


async def next_update(updates: AsyncIterator[agent_pb2.DesiredStateUpdate]) -> agent_pb2.DesiredStateUpdate:
    return await asyncio.wait_for(updates.__anext__(), 10)


# --- enrollment -------------------------------------------------------------------------------


async def test_enrollment_issues_a_node_certificate_and_creates_the_node(ctl: Controller) -> None:
    node = await join(ctl, "dc1", "node-a", "198.18.0.1")
    cert = x509.load_pem_x509_certificate(node.certificate_pem)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == ["meshsec://node/node-a"]
    assert "node-a" in sans.get_values_for_type(x509.DNSName)
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usages) == {ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH}
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert datetime.timedelta(hours=24) <= lifetime <= datetime.timedelta(hours=24, minutes=6)
    assert node.response.not_after.ToDatetime(datetime.UTC) == cert.not_valid_after_utc
    assert node.ca_bundle_pem.decode() == core_of(ctl).ca.certificate_pem
    assert node.response.node.metadata.name == "node-a"
    assert node.response.node.spec["site"] == "dc1"
    assert node.response.node.spec["endpoints"]["private"] == ["198.18.0.1"]
    # The issued certificate works on the mTLS listener.
    async with node.channel(ctl) as channel:
        ack = await agent_pb2_grpc.AgentServiceStub(channel).ReportStatus(
            agent_pb2.StatusReport(node_name="node-a", agent_instance_id="i1", seq=1, full=True),
            timeout=CALL_TIMEOUT,
        )
    assert ack.seq == 1 and not ack.resync_required and ack.next_report_seconds == 30


async def _enroll_error(ctl: Controller, token: str, name: str, csr_cn: str | None = None) -> grpc.StatusCode:
    _, csr = new_key_and_csr(csr_cn or name)
    async with bootstrap_channel(ctl) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await agent_pb2_grpc.AgentServiceStub(channel).Enroll(
                agent_pb2.EnrollRequest(
                    bootstrap_token=token, node_name=name, csr_pem=csr.decode(), facts=facts("198.18.0.9")
                ),
                timeout=CALL_TIMEOUT,
            )
    code: grpc.StatusCode = info.value.code()
    return code


async def test_bad_expired_reused_and_misbound_tokens_are_refused(ctl: Controller) -> None:
    assert await _enroll_error(ctl, "nosuch.token", "node-x") == grpc.StatusCode.UNAUTHENTICATED
    good = await create_token(ctl, "dc1", "node-x")
    token_id = good.partition(".")[0]
    assert await _enroll_error(ctl, f"{token_id}.wrong-secret", "node-x") == grpc.StatusCode.UNAUTHENTICATED
    assert await _enroll_error(ctl, good, "node-y") == grpc.StatusCode.PERMISSION_DENIED
    assert await _enroll_error(ctl, good, "node-x", csr_cn="node-z") == grpc.StatusCode.INVALID_ARGUMENT
    await enroll(ctl, good, "node-x", "198.18.0.9")  # failed attempts did not spend the single use
    assert await _enroll_error(ctl, good, "node-x") == grpc.StatusCode.UNAUTHENTICATED  # used up
    # Expired: a token created one second in the past.
    tokens = core_of(ctl).tokens
    old, _ = await tokens.create(
        site="dc1",
        node_name="",
        ttl_s=1,
        uses=1,
        labels={},
        allow_reenroll=False,
        now=datetime.datetime.now(datetime.UTC).timestamp() - 2,
    )
    assert await _enroll_error(ctl, old.reveal().decode(), "node-old") == grpc.StatusCode.UNAUTHENTICATED
    # Revoked.
    revoked = await create_token(ctl, "dc1", "node-r")
    async with admin_channel(ctl) as channel:
        await admin_stub(channel).RevokeBootstrapToken(
            admin_pb2.RevokeBootstrapTokenRequest(token_id=revoked.partition(".")[0]), timeout=CALL_TIMEOUT
        )
    assert await _enroll_error(ctl, revoked, "node-r") == grpc.StatusCode.UNAUTHENTICATED
    # An enrolled name needs a token that allows re-enrollment.
    again = await create_token(ctl, "dc1", "node-x")
    assert await _enroll_error(ctl, again, "node-x") == grpc.StatusCode.ALREADY_EXISTS
    # The store holds only hashes of token secrets.
    raw = b"".join(kv.value for kv in (await core_of(ctl).state.store.range(tokens.prefix)).kvs)
    for token in (good, again, revoked):
        assert token.partition(".")[2].encode() not in raw


async def test_a_token_not_bound_to_the_node_cannot_move_it_to_another_site(ctl: Controller) -> None:
    await join(ctl, "dc1", "node-a", "198.18.0.1")
    anyone_in_dc2 = await create_token(ctl, "dc2", allow_reenroll=True)
    assert await _enroll_error(ctl, anyone_in_dc2, "node-a") == grpc.StatusCode.PERMISSION_DENIED
    assert core_of(ctl).state.index.node("node-a").spec.site == "dc1"  # type: ignore[union-attr]
    # Re-enrolling in its own site with such a token, or moving it with a token bound to its name,
    # is what an admin who issued them asked for.
    await enroll(ctl, await create_token(ctl, "dc1", allow_reenroll=True), "node-a", "198.18.0.1")
    await join(ctl, "dc2", "node-a", "198.18.0.1", allow_reenroll=True)
    assert core_of(ctl).state.index.node("node-a").spec.site == "dc2"  # type: ignore[union-attr]


async def test_reenrollment_invalidates_the_old_certificate(ctl: Controller) -> None:
    first = await join(ctl, "dc1", "node-a", "198.18.0.1")
    second = await join(ctl, "dc1", "node-a", "198.18.0.2", allow_reenroll=True)
    for holder, expected in ((first, grpc.StatusCode.PERMISSION_DENIED), (second, None)):
        async with holder.channel(ctl) as channel:
            call = agent_pb2_grpc.AgentServiceStub(channel).ReportStatus(
                agent_pb2.StatusReport(node_name="node-a", agent_instance_id="i", seq=1, full=True),
                timeout=CALL_TIMEOUT,
            )
            if expected is None:
                await call
            else:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await call
                assert info.value.code() == expected


async def test_bootstrap_listener_answers_only_enroll_and_mtls_needs_a_certificate(ctl: Controller) -> None:
    async with bootstrap_channel(ctl) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in agent_pb2_grpc.AgentServiceStub(channel).WatchDesiredState(
                agent_pb2.WatchRequest(node_name="node-a"), timeout=CALL_TIMEOUT
            ):
                pass
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    no_cert = grpc.ssl_channel_credentials(root_certificates=core_of(ctl).ca.certificate_pem.encode())
    foreign = ThrowawayCA("someone else").node("node-a")
    foreign_creds = grpc.ssl_channel_credentials(
        root_certificates=core_of(ctl).ca.certificate_pem.encode(),
        private_key=foreign.key_pem.reveal(),
        certificate_chain=foreign.cert_pem,
    )
    for creds in (no_cert, foreign_creds):
        async with grpc.aio.secure_channel(f"127.0.0.1:{ctl.mtls_port}", creds) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                async for _ in agent_pb2_grpc.AgentServiceStub(channel).WatchDesiredState(
                    agent_pb2.WatchRequest(node_name="node-a"), timeout=CALL_TIMEOUT
                ):
                    pass
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_renewal_issues_a_fresh_certificate_for_the_caller_only(ctl: Controller) -> None:
    node = await join(ctl, "dc1", "node-a", "198.18.0.1")
    _, csr = new_key_and_csr("node-a")
    _, other_csr = new_key_and_csr("node-b")
    async with node.channel(ctl) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        renewed = await stub.RenewCertificate(
            agent_pb2.RenewCertificateRequest(csr_pem=csr.decode()), timeout=CALL_TIMEOUT
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.RenewCertificate(
                agent_pb2.RenewCertificateRequest(csr_pem=other_csr.decode()), timeout=CALL_TIMEOUT
            )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    cert = x509.load_pem_x509_certificate(renewed.certificate_pem.encode())
    assert cert.subject.rfc4514_string().endswith("CN=node-a") or "CN=node-a" in cert.subject.rfc4514_string()
    assert cert.serial_number != x509.load_pem_x509_certificate(node.certificate_pem).serial_number


# --- authorization and the watch ---------------------------------------------------------------


async def test_a_node_certificate_cannot_watch_or_report_for_another_node(ctl: Controller) -> None:
    a = await join(ctl, "dc1", "node-a", "198.18.0.1")
    await join(ctl, "dc2", "node-b", "198.18.0.2")
    async with a.channel(ctl) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in stub.WatchDesiredState(
                agent_pb2.WatchRequest(node_name="node-b"), timeout=CALL_TIMEOUT
            ):
                pass
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.ReportStatus(agent_pb2.StatusReport(node_name="node-b", seq=1), timeout=CALL_TIMEOUT)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # And an admin-only RPC is refused to a node certificate on the mTLS listener.
    async with a.channel(ctl) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await admin_stub(channel).List(admin_pb2.ListRequest(kind="Node"), timeout=CALL_TIMEOUT)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_watch_sends_a_snapshot_then_deltas_with_the_pair_psk(ctl: Controller) -> None:
    a = await join(ctl, "dc1", "node-a", "198.18.0.1")
    await join(ctl, "dc2", "node-b", "198.18.0.2")
    watcher = Watcher(a)
    async with a.channel(ctl) as channel:
        updates = watcher.updates(channel)
        snapshot = await next_update(updates)
        assert snapshot.kind == agent_pb2.UPDATE_KIND_SNAPSHOT
        assert snapshot.node.node_name == "node-a" and snapshot.node.site == "dc1"
        assert snapshot.node.site_prefixes == ["198.19.1.0/24"]
        assert [t.peer_name for t in snapshot.upserted_tunnels] == ["node-b"]
        tunnel = snapshot.upserted_tunnels[0]
        assert tunnel.peer_site == "dc2" and tunnel.remote_endpoints[0].address == "198.18.0.2"
        assert len(tunnel.auth.psk.key) == 32
        master = core_of(ctl).secrets._master
        assert master is not None
        psk_id = f"{tunnel.tunnel_id}.g1"
        assert tunnel.auth.psk.key == derive_pair_psk(master, psk_id).reveal()

        await join(ctl, "dc2", "node-c", "198.18.0.3")
        delta = await next_update(updates)
        assert delta.kind == agent_pb2.UPDATE_KIND_DELTA
        assert delta.base_version == snapshot.version and delta.version > snapshot.version
        assert [t.peer_name for t in delta.upserted_tunnels] == ["node-c"]
        assert not delta.HasField("node")  # node-a's own config did not change

        async with admin_channel(ctl) as admin:
            await admin_stub(admin).Delete(
                admin_pb2.DeleteRequest(kind="Node", name="node-b"), timeout=CALL_TIMEOUT
            )
        removal = await next_update(updates)
        assert removal.removed_tunnel_ids == [tunnel.tunnel_id] and not removal.upserted_tunnels
        assert sorted(t.peer_name for t in watcher.tunnels.values()) == ["node-c"]
        await updates.aclose()


async def test_resume_sends_only_the_missed_deltas(ctl: Controller) -> None:
    a = await join(ctl, "dc1", "node-a", "198.18.0.1")
    watcher = Watcher(a)
    async with a.channel(ctl) as channel:
        updates = watcher.updates(channel)
        first = await next_update(updates)
        assert first.kind == agent_pb2.UPDATE_KIND_SNAPSHOT and not first.upserted_tunnels
        await updates.aclose()
    seen = watcher.version
    await join(ctl, "dc2", "node-b", "198.18.0.2")  # missed while disconnected
    await join(ctl, "dc2", "node-c", "198.18.0.3")
    async with a.channel(ctl) as channel:
        updates = watcher.updates(channel)
        d1 = await next_update(updates)
        d2 = await next_update(updates)
        assert (d1.kind, d2.kind) == (agent_pb2.UPDATE_KIND_DELTA, agent_pb2.UPDATE_KIND_DELTA)
        assert d1.base_version == seen and d2.base_version == d1.version
        assert [t.peer_name for t in d1.upserted_tunnels] == ["node-b"]
        assert [t.peer_name for t in d2.upserted_tunnels] == ["node-c"]
        await updates.aclose()
    # At the current version: one empty delta that says "in sync".
    async with a.channel(ctl) as channel:
        updates = watcher.updates(channel)
        same = await next_update(updates)
        assert (same.kind, same.version, same.base_version) == (
            agent_pb2.UPDATE_KIND_DELTA,
            watcher.version,
            watcher.version,
        )
        assert not same.upserted_tunnels and not same.removed_tunnel_ids
        await updates.aclose()
    # A version the server has no history for (ahead, or unknown): a fresh snapshot.
    for bogus in (watcher.version + 1000, 1):
        async with a.channel(ctl) as channel:
            updates = watcher.updates(channel, resume=bogus)
            fresh = await next_update(updates)
            assert fresh.kind == agent_pb2.UPDATE_KIND_SNAPSHOT
            assert sorted(t.peer_name for t in fresh.upserted_tunnels) == ["node-b", "node-c"]
            await updates.aclose()


async def test_deleting_the_node_ends_its_watch_with_not_found(ctl: Controller) -> None:
    a = await join(ctl, "dc1", "node-a", "198.18.0.1")
    async with a.channel(ctl) as channel:
        call = agent_pb2_grpc.AgentServiceStub(channel).WatchDesiredState(
            agent_pb2.WatchRequest(node_name="node-a")
        )
        first = await asyncio.wait_for(call.read(), 10)
        assert first.kind == agent_pb2.UPDATE_KIND_SNAPSHOT
        async with admin_channel(ctl) as admin:
            await admin_stub(admin).Delete(
                admin_pb2.DeleteRequest(kind="Node", name="node-a"), timeout=CALL_TIMEOUT
            )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await asyncio.wait_for(call.read(), 10)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


# --- status ----------------------------------------------------------------------------------


def _report(
    node: str, seq: int, tunnel_id: str, peer: str, state: int, version: int
) -> agent_pb2.StatusReport:
    return agent_pb2.StatusReport(
        node_name=node,
        agent_instance_id=f"{node}-instance",
        seq=seq,
        full=True,
        tunnels=[agent_pb2.TunnelStatus(tunnel_id=tunnel_id, peer_name=peer, state=state)],  # type: ignore[arg-type]
        received_version=version,
    )


async def test_status_reports_show_in_list_tunnels_topology_and_events(ctl: Controller) -> None:
    a = await join(ctl, "dc1", "node-a", "198.18.0.1")
    b = await join(ctl, "dc2", "node-b", "198.18.0.2")
    state = core_of(ctl).state
    tid = state.index.desired_tunnels("node-a")[0].id
    async with admin_channel(ctl) as admin:
        events = admin_stub(admin).WatchEvents(admin_pb2.WatchEventsRequest(kinds=["Tunnel"]))
        listed = await admin_stub(admin).ListTunnels(admin_pb2.ListTunnelsRequest(), timeout=CALL_TIMEOUT)
        assert [t.tunnel_id for t in listed.tunnels] == [tid]
        assert listed.tunnels[0].state == common_pb2.TUNNEL_STATE_DOWN  # nobody reported yet
        assert listed.tunnels[0].desired.auth.psk.key == b""  # admins never see key material
        async with a.channel(ctl) as channel:
            await agent_pb2_grpc.AgentServiceStub(channel).ReportStatus(
                _report(
                    "node-a", 1, tid, "node-b", common_pb2.TUNNEL_STATE_ESTABLISHED, state.version("node-a")
                ),
                timeout=CALL_TIMEOUT,
            )
        async with b.channel(ctl) as channel:
            await agent_pb2_grpc.AgentServiceStub(channel).ReportStatus(
                _report(
                    "node-b", 1, tid, "node-a", common_pb2.TUNNEL_STATE_CONNECTING, state.version("node-b")
                ),
                timeout=CALL_TIMEOUT,
            )
        listed = await admin_stub(admin).ListTunnels(
            admin_pb2.ListTunnelsRequest(node="node-b"), timeout=CALL_TIMEOUT
        )
        info = listed.tunnels[0]
        assert [e.name for e in info.ends] == ["node-a", "node-b"]
        assert [e.status.state for e in info.ends] == [
            common_pb2.TUNNEL_STATE_ESTABLISHED,
            common_pb2.TUNNEL_STATE_CONNECTING,
        ]
        assert info.state == common_pb2.TUNNEL_STATE_CONNECTING and not info.ends[0].stale
        async with b.channel(ctl) as channel:
            await agent_pb2_grpc.AgentServiceStub(channel).ReportStatus(
                _report(
                    "node-b", 2, tid, "node-a", common_pb2.TUNNEL_STATE_ESTABLISHED, state.version("node-b")
                ),
                timeout=CALL_TIMEOUT,
            )
        listed = await admin_stub(admin).ListTunnels(
            admin_pb2.ListTunnelsRequest(state=common_pb2.TUNNEL_STATE_ESTABLISHED), timeout=CALL_TIMEOUT
        )
        assert [t.tunnel_id for t in listed.tunnels] == [tid]
        topology = await admin_stub(admin).GetTopology(admin_pb2.GetTopologyRequest(), timeout=CALL_TIMEOUT)
        assert [(n.name, n.online) for n in topology.nodes] == [("node-a", True), ("node-b", True)]
        assert [(link.a.name, link.b.name, link.state) for link in topology.links] == [
            ("node-a", "node-b", common_pb2.TUNNEL_STATE_ESTABLISHED)
        ]
        first = await asyncio.wait_for(events.read(), 10)
        second = await asyncio.wait_for(events.read(), 10)
        assert [first.reason, second.reason] == ["TunnelEstablished", "TunnelEstablished"]
        assert first.involved.name == tid and second.sequence > first.sequence
        events.cancel()


async def test_partial_report_without_baseline_asks_for_a_full_one(ctl: Controller) -> None:
    a = await join(ctl, "dc1", "node-a", "198.18.0.1")
    async with a.channel(ctl) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        ack = await stub.ReportStatus(
            agent_pb2.StatusReport(node_name="node-a", agent_instance_id="x", seq=5, full=False),
            timeout=CALL_TIMEOUT,
        )
        assert ack.resync_required
        ack = await stub.ReportStatus(
            agent_pb2.StatusReport(node_name="node-a", agent_instance_id="x", seq=6, full=True),
            timeout=CALL_TIMEOUT,
        )
        assert not ack.resync_required and ack.seq == 6
        duplicate = await stub.ReportStatus(
            agent_pb2.StatusReport(node_name="node-a", agent_instance_id="x", seq=6, full=True),
            timeout=CALL_TIMEOUT,
        )
        assert duplicate.seq == 6


async def test_a_change_too_wide_for_deltas_resends_snapshots(tmp_path: Path) -> None:
    async with running_controller(
        tmp_path,
        site("dc1", ["198.19.1.0/24"]),
        policy("mesh", "full-mesh", "node", {}),
        rebase_tunnels=0,  # every policy edit is "wide"
    ) as controller:
        a = await join(controller, "dc1", "node-a", "198.18.0.1")
        await join(controller, "dc1", "node-b", "198.18.0.2")
        watcher = Watcher(a)
        async with a.channel(controller) as channel:
            updates = watcher.updates(channel)
            first = await next_update(updates)
            assert first.kind == agent_pb2.UPDATE_KIND_SNAPSHOT
            await join(controller, "dc1", "node-c", "198.18.0.3")  # a node join is still a delta
            delta = await next_update(updates)
            assert delta.kind == agent_pb2.UPDATE_KIND_DELTA
            await apply(controller, policy("mesh", "full-mesh", "node", {}, mode="transport"))
            fresh = await next_update(updates)
            assert fresh.kind == agent_pb2.UPDATE_KIND_SNAPSHOT and fresh.version > delta.version
            assert sorted(t.peer_name for t in fresh.upserted_tunnels) == ["node-b", "node-c"]
            assert all(t.children[0].mode == common_pb2.MODE_TRANSPORT for t in fresh.upserted_tunnels)
            await updates.aclose()
        # History restarts at the rebase: resuming from before it needs a snapshot too.
        async with a.channel(controller) as channel:
            updates = watcher.updates(channel, resume=delta.version)
            assert (await next_update(updates)).kind == agent_pb2.UPDATE_KIND_SNAPSHOT
            await updates.aclose()


async def test_a_deleted_node_recreated_by_apply_does_not_accept_its_old_certificate(ctl: Controller) -> None:
    old = await join(ctl, "dc1", "node-a", "198.18.0.1")
    async with admin_channel(ctl) as admin:
        await admin_stub(admin).Delete(
            admin_pb2.DeleteRequest(kind="Node", name="node-a"), timeout=CALL_TIMEOUT
        )
    async with old.channel(ctl) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await agent_pb2_grpc.AgentServiceStub(channel).ReportStatus(
                agent_pb2.StatusReport(node_name="node-a", agent_instance_id="i", seq=1), timeout=CALL_TIMEOUT
            )
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
    # At once: issue times have 1 s resolution, serials tell the incarnations apart.
    await apply(ctl, node("node-a", "dc1", private=["198.18.0.1"]))
    async with old.channel(ctl) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await agent_pb2_grpc.AgentServiceStub(channel).ReportStatus(
                agent_pb2.StatusReport(node_name="node-a", agent_instance_id="i", seq=1), timeout=CALL_TIMEOUT
            )
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_enrollment_adopts_a_node_declared_in_yaml_and_keeps_its_spec(ctl: Controller) -> None:
    declared = node("node-a", "dc1", public=["198.18.0.7"], labels={"role": "gateway"}, ike_id="a.example")
    await apply(ctl, declared)
    stored_before = core_of(ctl).state.doc(Kind.NODE, "node-a")
    assert stored_before is not None
    # A token for another site is refused by name, and the declaration stays as it was.
    wrong = await create_token(ctl, "dc2", "node-a")
    _, csr = new_key_and_csr("node-a")
    async with bootstrap_channel(ctl) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await agent_pb2_grpc.AgentServiceStub(channel).Enroll(
                agent_pb2.EnrollRequest(
                    bootstrap_token=wrong, node_name="node-a", csr_pem=csr.decode(), facts=facts("198.18.0.9")
                ),
                timeout=CALL_TIMEOUT,
            )
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "declared in site dc1" in (info.value.details() or "")
    assert "site dc2" in (info.value.details() or "")
    assert core_of(ctl).state.doc(Kind.NODE, "node-a") == stored_before

    enrolled = await join(ctl, "dc1", "node-a", "198.18.0.9", node_labels={"rack": "r1", "role": "edge"})
    spec = dict(enrolled.response.node.spec)
    assert spec["site"] == "dc1"
    assert list(spec["endpoints"]["public"]) == ["198.18.0.7"]  # the declared endpoint, not the facts'
    assert "private" not in spec["endpoints"]
    assert spec["identity"]["ikeId"] == "a.example"
    meta = enrolled.response.node.metadata
    assert meta.uid == stored_before.doc["metadata"]["uid"]
    assert meta.generation == stored_before.doc["metadata"]["generation"]  # the spec did not change
    assert dict(meta.labels) == {"role": "gateway", "rack": "r1"}  # the declaration wins a clash
    assert meta.annotations["meshsec.io/hostname"] == "test-host"
    assert enrolled.response.node.status["phase"] == "Enrolled"
    # The certificate carries the declared IKE identity and works on the mTLS listener.
    cert = x509.load_pem_x509_certificate(enrolled.certificate_pem)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "a.example" in sans.get_values_for_type(x509.DNSName)
    async with enrolled.channel(ctl) as channel:
        ack = await agent_pb2_grpc.AgentServiceStub(channel).ReportStatus(
            agent_pb2.StatusReport(node_name="node-a", agent_instance_id="i1", seq=1, full=True),
            timeout=CALL_TIMEOUT,
        )
    assert ack.seq == 1
    # Once bound, a second enrollment without allow_reenroll is a conflict, as for any enrolled node.
    again = await create_token(ctl, "dc1", "node-a")
    assert await _enroll_error(ctl, again, "node-a") == grpc.StatusCode.ALREADY_EXISTS


async def _report_code(ctl: Controller, holder: EnrolledNode) -> grpc.StatusCode:
    async with holder.channel(ctl) as channel:
        try:
            await agent_pb2_grpc.AgentServiceStub(channel).ReportStatus(
                agent_pb2.StatusReport(node_name=holder.name, agent_instance_id="i", seq=1, full=True),
                timeout=CALL_TIMEOUT,
            )
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


async def _apply_resource(ctl: Controller, resource: common_pb2.Resource) -> grpc.aio.AioRpcError | None:
    async with admin_channel(ctl) as channel:
        try:
            await admin_stub(channel).Apply(
                admin_pb2.ApplyRequest(resources=[resource], field_manager="test"), timeout=CALL_TIMEOUT
            )
        except grpc.aio.AioRpcError as exc:
            return exc
    return None


async def _exported(ctl: Controller, name: str) -> common_pb2.Resource:
    """What `meshctl get -o yaml` hands out, without its resourceVersion."""
    async with admin_channel(ctl) as channel:
        got = await admin_stub(channel).Get(
            admin_pb2.GetRequest(kind="Node", name=name), timeout=CALL_TIMEOUT
        )
    got.resource.metadata.resource_version = ""
    return got.resource


async def test_apply_cannot_set_or_change_controller_annotations(ctl: Controller) -> None:
    first = await join(ctl, "dc1", "node-a", "198.18.0.1")
    second = await join(ctl, "dc1", "node-a", "198.18.0.2", allow_reenroll=True)
    forged = await _exported(ctl, "node-a")
    forged.metadata.annotations["meshsec.io/enrolled-at"] = "0"
    refused = await _apply_resource(ctl, forged)
    assert refused is not None and refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "metadata.annotations[meshsec.io/enrolled-at]" in (refused.details() or "")
    serials = forged.metadata.annotations["meshsec.io/certificate-serials"]
    del forged.metadata.annotations["meshsec.io/enrolled-at"]
    forged.metadata.annotations["meshsec.io/certificate-serials"] = (
        f"{serials},{x509.load_pem_x509_certificate(first.certificate_pem).serial_number:x}"
    )
    refused = await _apply_resource(ctl, forged)
    assert refused is not None and refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert await _report_code(ctl, first) == grpc.StatusCode.PERMISSION_DENIED
    assert await _report_code(ctl, second) == grpc.StatusCode.OK


async def test_an_exported_node_reapplies_harmlessly_but_cannot_revive_a_deleted_one(ctl: Controller) -> None:
    holder = await join(ctl, "dc1", "node-a", "198.18.0.1")
    export = await _exported(ctl, "node-a")
    export.metadata.labels["tier"] = "edge"  # an edited export: the admin's fields still apply
    assert await _apply_resource(ctl, export) is None
    assert core_of(ctl).state.index.node("node-a").metadata.labels == {"tier": "edge"}  # type: ignore[union-attr]
    assert await _report_code(ctl, holder) == grpc.StatusCode.OK
    async with admin_channel(ctl) as admin:
        await admin_stub(admin).Delete(
            admin_pb2.DeleteRequest(kind="Node", name="node-a"), timeout=CALL_TIMEOUT
        )
    refused = await _apply_resource(ctl, export)  # the old export names the old certificate's serial
    assert refused is not None and refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert await _report_code(ctl, holder) == grpc.StatusCode.NOT_FOUND


async def test_renewal_keeps_the_renewing_certificate_until_the_next_renewal(ctl: Controller) -> None:
    first = await join(ctl, "dc1", "node-a", "198.18.0.1")

    async def renew(holder: EnrolledNode) -> EnrolledNode:
        key, csr = new_key_and_csr("node-a")
        async with holder.channel(ctl) as channel:
            response = await agent_pb2_grpc.AgentServiceStub(channel).RenewCertificate(
                agent_pb2.RenewCertificateRequest(csr_pem=csr.decode()), timeout=CALL_TIMEOUT
            )
        return EnrolledNode("node-a", key, response.certificate_pem.encode(), holder.ca_bundle_pem, response)

    second = await renew(first)
    assert [await _report_code(ctl, h) for h in (first, second)] == [grpc.StatusCode.OK] * 2
    third = await renew(second)
    assert [await _report_code(ctl, h) for h in (first, second, third)] == [
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.OK,
        grpc.StatusCode.OK,
    ]
