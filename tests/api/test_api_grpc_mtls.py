"""The API over a real grpc.aio server with mTLS on loopback, as the controller will serve it.

The servicers here are deliberately tiny (the real ones belong to the controller); what is under
test is the contract and its transport: generated stubs on both sides, both RPC shapes, the two
listeners (mTLS for everything, server-only TLS for Enroll), the caller identity the server reads
from the client certificate, refusal of clients without a certificate or with one from another CA,
and validation errors carried in the binary trailer.
"""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import grpc
import pytest
from cryptography import x509
from google.protobuf import struct_pb2

from meshsec.v1 import admin_pb2, admin_pb2_grpc, agent_pb2, agent_pb2_grpc, common_pb2
from tests.harness.tls import IssuedCertificate, ThrowawayCA, new_key_and_csr

BOOTSTRAP_TOKEN = "tok1.s3cr3t-bootstrap"
VALIDATION_TRAILER = "meshsec-validation-errors-bin"
CALL_TIMEOUT = 10.0
AnyContext = grpc.aio.ServicerContext[Any, Any]


@dataclass(frozen=True)
class Caller:
    kind: str  # "node" or "admin"
    name: str
    common_name: str


def caller_of(context: AnyContext) -> Caller | None:
    """The identity convention of docs/api.md: URI SAN meshsec://<kind>/<name>, CN = name."""
    auth = context.auth_context()
    uris = [u.decode() for u in auth.get("peer_uri", [])]
    common_names = [c.decode() for c in auth.get("x509_common_name", [])]
    for uri in uris:
        if uri.startswith("meshsec://"):
            kind, _, name = uri.removeprefix("meshsec://").partition("/")
            if kind in ("node", "admin") and name and common_names == [name]:
                return Caller(kind, name, common_names[0])
    return None


@dataclass
class Seen:
    callers: list[Caller | None] = field(default_factory=list)
    sans: list[list[bytes]] = field(default_factory=list)


class TinyAgentService(agent_pb2_grpc.AgentServiceServicer):
    def __init__(self, ca: ThrowawayCA, seen: Seen) -> None:
        self._ca = ca
        self._seen = seen

    async def _node(self, context: AnyContext, node_name: str) -> str:
        caller = caller_of(context)
        self._seen.callers.append(caller)
        self._seen.sans.append(list(context.auth_context().get("x509_subject_alternative_name", [])))
        if caller is None or caller.kind != "node":
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "a node certificate is required")
        if node_name != caller.name:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, f"{caller.name} may not act as {node_name}"
            )
        return caller.name

    async def Enroll(
        self,
        request: agent_pb2.EnrollRequest,
        context: grpc.aio.ServicerContext[agent_pb2.EnrollRequest, agent_pb2.EnrollResponse],
    ) -> agent_pb2.EnrollResponse:
        self._seen.callers.append(caller_of(context))
        if request.bootstrap_token != BOOTSTRAP_TOKEN:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "unknown bootstrap token")
        cert_pem = self._ca.sign_csr(
            request.csr_pem.encode(), request.node_name, valid_for=datetime.timedelta(hours=1)
        )
        cert = x509.load_pem_x509_certificate(cert_pem)
        response = agent_pb2.EnrollResponse(
            certificate_pem=cert_pem.decode(), ca_bundle_pem=self._ca.cert_pem.decode()
        )
        response.not_after.FromDatetime(cert.not_valid_after_utc)
        response.node.api_version = "meshsec.io/v1alpha1"
        response.node.kind = "Node"
        response.node.metadata.name = request.node_name
        return response

    async def ReportStatus(
        self,
        request: agent_pb2.StatusReport,
        context: grpc.aio.ServicerContext[agent_pb2.StatusReport, agent_pb2.StatusAck],
    ) -> agent_pb2.StatusAck:
        await self._node(context, request.node_name)
        return agent_pb2.StatusAck(seq=request.seq, next_report_seconds=30)

    async def WatchDesiredState(
        self,
        request: agent_pb2.WatchRequest,
        context: grpc.aio.ServicerContext[agent_pb2.WatchRequest, agent_pb2.DesiredStateUpdate],
    ) -> AsyncIterator[agent_pb2.DesiredStateUpdate]:
        node = await self._node(context, request.node_name)
        current = 7
        if request.resume_from_version == current:
            yield agent_pb2.DesiredStateUpdate(
                version=current, base_version=current, kind=agent_pb2.UPDATE_KIND_DELTA
            )
            return
        # A snapshot split in two messages, then one delta.
        first = agent_pb2.DesiredStateUpdate(version=5, kind=agent_pb2.UPDATE_KIND_SNAPSHOT, more=True)
        first.node.node_name = node
        first.upserted_tunnels.append(_tunnel("t-ab", "node-b", psk=b"\x00\xffpsk-for-a-and-b" * 2))
        yield first
        yield agent_pb2.DesiredStateUpdate(
            version=5,
            kind=agent_pb2.UPDATE_KIND_SNAPSHOT,
            upserted_tunnels=[_tunnel("t-ac", "node-c", psk=b"psk-for-a-and-c" * 3)],
        )
        yield agent_pb2.DesiredStateUpdate(
            version=current, base_version=5, kind=agent_pb2.UPDATE_KIND_DELTA, removed_tunnel_ids=["t-ac"]
        )


def _tunnel(tunnel_id: str, peer: str, *, psk: bytes) -> agent_pb2.DesiredTunnel:
    child = agent_pb2.ChildConfig(
        name="site",
        local_ts=[common_pb2.TrafficSelector(cidr="198.19.1.0/24")],
        remote_ts=[
            common_pb2.TrafficSelector(cidr="198.19.2.0/24", protocol=6, port_start=443, port_end=443)
        ],
        mode=common_pb2.MODE_TUNNEL,
        protocol=common_pb2.IPSEC_PROTOCOL_ESP,
        lifetimes=common_pb2.Lifetimes(soft_seconds=3000, hard_seconds=3600, jitter_seconds=300),
        start_action=common_pb2.START_ACTION_START,
    )
    return agent_pb2.DesiredTunnel(
        tunnel_id=tunnel_id,
        policy="mesh",
        peer_name=peer,
        peer_kind=common_pb2.PEER_KIND_NODE,
        local_endpoint=common_pb2.Endpoint(address="198.18.0.1", scope=common_pb2.ADDRESS_SCOPE_PRIVATE),
        remote_endpoints=[
            common_pb2.Endpoint(address="198.18.100.2", port=4500, scope=common_pb2.ADDRESS_SCOPE_NAT),
            common_pb2.Endpoint(address="198.18.0.2", scope=common_pb2.ADDRESS_SCOPE_PRIVATE),
        ],
        local_id=common_pb2.Identity(type=common_pb2.Identity.TYPE_FQDN, value="node-a"),
        remote_id=common_pb2.Identity(type=common_pb2.Identity.TYPE_FQDN, value=peer),
        auth=agent_pb2.TunnelAuth(psk=agent_pb2.PskAuth(key=psk)),
        ike_proposals=["aes256gcm16-prfsha384-ecp384"],
        esp_proposals=["aes256gcm16-ecp384"],
        children=[child],
        ike_lifetimes=common_pb2.Lifetimes(soft_seconds=14400, hard_seconds=15000),
        dpd=common_pb2.Dpd(interval_seconds=30, timeout_seconds=90, action=common_pb2.DPD_ACTION_RESTART),
        initiator=True,
    )


class TinyAdminService(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, seen: Seen) -> None:
        self._seen = seen
        self._events = [
            admin_pb2.Event(
                sequence=seq,
                type=admin_pb2.EVENT_TYPE_NORMAL,
                reason="Applied",
                involved=common_pb2.ObjectRef(kind="Site", name=f"site-{seq}"),
                message=f"event {seq}",
                source="controller/0",
            )
            for seq in (10, 11, 12)
        ]

    async def _admin(self, context: AnyContext) -> None:
        caller = caller_of(context)
        self._seen.callers.append(caller)
        if caller is None or caller.kind != "admin":
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "an admin certificate is required")

    async def Apply(
        self,
        request: admin_pb2.ApplyRequest,
        context: grpc.aio.ServicerContext[admin_pb2.ApplyRequest, admin_pb2.ApplyResponse],
    ) -> admin_pb2.ApplyResponse:
        await self._admin(context)
        errors = [
            admin_pb2.ValidationError(
                kind=r.kind, name=r.metadata.name, index=i, path="spec.prefixes", message="must not be empty"
            )
            for i, r in enumerate(request.resources)
            if not r.spec.fields["prefixes"].list_value.values
        ]
        if errors:
            trailer = admin_pb2.ValidationErrors(errors=errors).SerializeToString()
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{errors[0].kind}/{errors[0].name}: {errors[0].path}: {errors[0].message}",
                trailing_metadata=((VALIDATION_TRAILER, trailer),),
            )
        return admin_pb2.ApplyResponse(
            results=[
                admin_pb2.ApplyResult(
                    kind=r.kind, name=r.metadata.name, action=admin_pb2.APPLY_ACTION_CREATED, resource=r
                )
                for r in request.resources
            ]
        )

    async def WatchEvents(
        self,
        request: admin_pb2.WatchEventsRequest,
        context: grpc.aio.ServicerContext[admin_pb2.WatchEventsRequest, admin_pb2.Event],
    ) -> AsyncIterator[admin_pb2.Event]:
        await self._admin(context)
        for event in self._events:
            if event.sequence > request.since_sequence:
                yield event


@dataclass
class Controller:
    ca: ThrowawayCA
    mtls_target: str
    bootstrap_target: str
    seen: Seen


@pytest.fixture
async def controller() -> AsyncIterator[Controller]:
    ca = ThrowawayCA("controller CA")
    serving = ca.server("127.0.0.1")
    seen = Seen()
    server = grpc.aio.server()
    agent_pb2_grpc.add_AgentServiceServicer_to_server(TinyAgentService(ca, seen), server)
    admin_pb2_grpc.add_AdminServiceServicer_to_server(TinyAdminService(seen), server)
    key_and_chain = [(serving.key_pem.reveal(), serving.cert_pem)]
    mtls_port = server.add_secure_port(
        "127.0.0.1:0",
        grpc.ssl_server_credentials(key_and_chain, root_certificates=ca.cert_pem, require_client_auth=True),
    )
    bootstrap_port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials(key_and_chain))
    await server.start()
    try:
        yield Controller(ca, f"127.0.0.1:{mtls_port}", f"127.0.0.1:{bootstrap_port}", seen)
    finally:
        await server.stop(None)


def _channel(target: str, trust: bytes, client: IssuedCertificate | None = None) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=trust,
        private_key=client.key_pem.reveal() if client else None,
        certificate_chain=client.cert_pem if client else None,
    )
    return grpc.aio.secure_channel(target, credentials)


async def test_enroll_over_bootstrap_listener_then_use_certificate_over_mtls(controller: Controller) -> None:
    key_pem, csr_pem = new_key_and_csr("node-a")
    async with _channel(controller.bootstrap_target, controller.ca.cert_pem) as channel:
        enrolled = await agent_pb2_grpc.AgentServiceStub(channel).Enroll(
            agent_pb2.EnrollRequest(
                bootstrap_token=BOOTSTRAP_TOKEN,
                node_name="node-a",
                csr_pem=csr_pem.decode(),
                facts=agent_pb2.NodeFacts(addresses=[common_pb2.Endpoint(address="198.18.0.1")]),
            ),
            timeout=CALL_TIMEOUT,
        )
    assert controller.seen.callers == [None]  # no client certificate on the bootstrap listener
    assert enrolled.node.metadata.name == "node-a"
    cert = x509.load_pem_x509_certificate(enrolled.certificate_pem.encode())
    assert enrolled.not_after.ToDatetime(datetime.UTC) == cert.not_valid_after_utc

    node_cert = IssuedCertificate(enrolled.certificate_pem.encode(), key_pem)
    async with _channel(controller.mtls_target, enrolled.ca_bundle_pem.encode(), node_cert) as channel:
        ack = await agent_pb2_grpc.AgentServiceStub(channel).ReportStatus(
            agent_pb2.StatusReport(node_name="node-a", agent_instance_id="i1", seq=41, full=True),
            timeout=CALL_TIMEOUT,
        )
    assert ack.seq == 41
    assert controller.seen.callers[-1] == Caller("node", "node-a", "node-a")
    assert controller.seen.sans[-1] == [b"meshsec://node/node-a"]


async def test_enroll_with_unknown_token_is_unauthenticated(controller: Controller) -> None:
    _, csr_pem = new_key_and_csr("node-a")
    async with _channel(controller.bootstrap_target, controller.ca.cert_pem) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await agent_pb2_grpc.AgentServiceStub(channel).Enroll(
                agent_pb2.EnrollRequest(bootstrap_token="nope", node_name="node-a", csr_pem=csr_pem.decode()),
                timeout=CALL_TIMEOUT,
            )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_bootstrap_listener_serves_nothing_but_enroll(controller: Controller) -> None:
    async with _channel(controller.bootstrap_target, controller.ca.cert_pem) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await agent_pb2_grpc.AgentServiceStub(channel).ReportStatus(
                agent_pb2.StatusReport(node_name="node-a", seq=1), timeout=CALL_TIMEOUT
            )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_watch_streams_snapshot_chunks_then_delta(controller: Controller) -> None:
    node = controller.ca.node("node-a")
    async with _channel(controller.mtls_target, controller.ca.cert_pem, node) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        updates = [u async for u in stub.WatchDesiredState(agent_pb2.WatchRequest(node_name="node-a"))]
        resumed = [
            u
            async for u in stub.WatchDesiredState(
                agent_pb2.WatchRequest(node_name="node-a", resume_from_version=7)
            )
        ]
    assert [(u.version, u.kind, u.more) for u in updates] == [
        (5, agent_pb2.UPDATE_KIND_SNAPSHOT, True),
        (5, agent_pb2.UPDATE_KIND_SNAPSHOT, False),
        (7, agent_pb2.UPDATE_KIND_DELTA, False),
    ]
    assert updates[0].node.node_name == "node-a"
    tunnel = updates[0].upserted_tunnels[0]
    assert tunnel.auth.WhichOneof("method") == "psk"
    assert tunnel.auth.psk.key == b"\x00\xffpsk-for-a-and-b" * 2  # bytes survive exactly, NULs included
    assert tunnel.remote_endpoints[0].scope == common_pb2.ADDRESS_SCOPE_NAT
    assert tunnel.children[0].remote_ts[0].port_start == 443
    assert updates[2].base_version == 5 and list(updates[2].removed_tunnel_ids) == ["t-ac"]
    assert [(u.version, u.base_version, u.kind) for u in resumed] == [(7, 7, agent_pb2.UPDATE_KIND_DELTA)]


async def test_node_certificate_cannot_read_another_nodes_slice(controller: Controller) -> None:
    node = controller.ca.node("node-a")
    async with _channel(controller.mtls_target, controller.ca.cert_pem, node) as channel:
        call = agent_pb2_grpc.AgentServiceStub(channel).WatchDesiredState(
            agent_pb2.WatchRequest(node_name="node-b"), timeout=CALL_TIMEOUT
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in call:
                pytest.fail("node-a received node-b's desired state")
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_client_without_certificate_is_refused_in_the_handshake(controller: Controller) -> None:
    async with _channel(controller.mtls_target, controller.ca.cert_pem) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await agent_pb2_grpc.AgentServiceStub(channel).ReportStatus(
                agent_pb2.StatusReport(node_name="node-a", seq=1), timeout=CALL_TIMEOUT
            )
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert controller.seen.callers == []  # the call never reached a servicer


async def test_client_certificate_from_another_ca_is_refused(controller: Controller) -> None:
    impostor = ThrowawayCA("another CA").node("node-a")
    async with _channel(controller.mtls_target, controller.ca.cert_pem, impostor) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await agent_pb2_grpc.AgentServiceStub(channel).ReportStatus(
                agent_pb2.StatusReport(node_name="node-a", seq=1), timeout=CALL_TIMEOUT
            )
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert controller.seen.callers == []


async def test_agent_refuses_a_controller_it_does_not_trust(controller: Controller) -> None:
    node = controller.ca.node("node-a")
    async with _channel(controller.mtls_target, ThrowawayCA("another CA").cert_pem, node) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await agent_pb2_grpc.AgentServiceStub(channel).ReportStatus(
                agent_pb2.StatusReport(node_name="node-a", seq=1), timeout=CALL_TIMEOUT
            )
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert controller.seen.callers == []


def _site(name: str, prefixes: list[str]) -> common_pb2.Resource:
    spec = struct_pb2.Struct()
    spec.update({"prefixes": prefixes})
    return common_pb2.Resource(
        api_version="meshsec.io/v1alpha1",
        kind="Site",
        metadata=common_pb2.ObjectMeta(name=name, labels={"region": "eu"}),
        spec=spec,
    )


async def test_admin_apply_round_trip_and_validation_errors_in_trailer(controller: Controller) -> None:
    admin = controller.ca.admin("alice")
    async with _channel(controller.mtls_target, controller.ca.cert_pem, admin) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        applied = await stub.Apply(
            admin_pb2.ApplyRequest(resources=[_site("dc-west", ["198.19.1.0/24"])], field_manager="meshctl"),
            timeout=CALL_TIMEOUT,
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Apply(
                admin_pb2.ApplyRequest(resources=[_site("ok", ["198.19.2.0/24"]), _site("empty", [])]),
                timeout=CALL_TIMEOUT,
            )
    assert controller.seen.callers[0] == Caller("admin", "alice", "alice")
    assert [(r.name, r.action) for r in applied.results] == [("dc-west", admin_pb2.APPLY_ACTION_CREATED)]
    assert (
        applied.results[0].resource.spec.fields["prefixes"].list_value.values[0].string_value
        == "198.19.1.0/24"
    )
    error = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "Site/empty: spec.prefixes: must not be empty"
    # grpc-stubs types this as the sync API's metadata; grpc.aio returns (key, value) pairs.
    metadata = cast("Iterable[tuple[str, bytes]]", error.trailing_metadata())
    [trailer] = [value for key, value in metadata if key == VALIDATION_TRAILER]
    problems = admin_pb2.ValidationErrors.FromString(trailer)
    assert [(e.name, e.index, e.path) for e in problems.errors] == [("empty", 1, "spec.prefixes")]


async def test_admin_watch_events_replays_after_sequence(controller: Controller) -> None:
    admin = controller.ca.admin("alice")
    async with _channel(controller.mtls_target, controller.ca.cert_pem, admin) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        events = [e async for e in stub.WatchEvents(admin_pb2.WatchEventsRequest(since_sequence=10))]
    assert [(e.sequence, e.involved.name) for e in events] == [(11, "site-11"), (12, "site-12")]


async def test_node_certificate_is_refused_on_the_admin_service(controller: Controller) -> None:
    node = controller.ca.node("node-a")
    async with _channel(controller.mtls_target, controller.ca.cert_pem, node) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await admin_pb2_grpc.AdminServiceStub(channel).Apply(
                admin_pb2.ApplyRequest(resources=[_site("dc-west", ["198.19.1.0/24"])]), timeout=CALL_TIMEOUT
            )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
