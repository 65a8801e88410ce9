"""Controller replicas and agent-side clients for the controller API tests (127.0.0.1 only).

`start_controller` runs a real `Controller` in-process on ephemeral ports with its admin socket
in a temporary directory; `EnrolledNode` is what an agent holds after enrollment (its own key and
the certificate the controller CA issued) and opens mTLS channels with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import struct_pb2

from meshsec.common.pki import make_csr, new_key
from meshsec.common.secrets import Secret
from meshsec.controller.server import Controller, ControllerConfig
from meshsec.controller.service.core import Core, Settings
from meshsec.controller.service.keys import Keys
from meshsec.controller.store import EmbeddedStore, Store
from meshsec.v1 import admin_pb2, admin_pb2_grpc, agent_pb2, agent_pb2_grpc, common_pb2
from tests.harness.tls import new_key_and_csr

CALL_TIMEOUT = 10.0
VALIDATION_TRAILER = "meshsec-validation-errors-bin"


async def wait_until(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    """Polls `predicate` on the event loop until it holds; AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


async def start_controller(
    store: Store,
    workdir: Path,
    *,
    replica: str = "ctl-a",
    prefix: str = "/meshsec/",
    election_ttl_s: int = 10,
    history: int = 16,
    cert_lifetime: datetime.timedelta = datetime.timedelta(hours=24),
    rebase_tunnels: int = 200_000,
    status_interval_s: int = 30,
) -> Controller:
    workdir.mkdir(parents=True, exist_ok=True)
    config = ControllerConfig(
        listen="127.0.0.1:0",
        bootstrap_listen="127.0.0.1:0",
        admin_socket=str(workdir / "admin.sock"),
        metrics="127.0.0.1:0",
        data_dir=workdir,
        settings=Settings(
            replica=replica,
            history=history,
            node_cert_lifetime=cert_lifetime,
            rebase_tunnels=rebase_tunnels,
            status_interval_s=status_interval_s,
        ),
        keys=Keys(prefix),
        election_ttl_s=election_ttl_s,
        leader_period_s=0.5,
    )
    controller = Controller(store, config)
    await controller.start()
    return controller


@contextlib.asynccontextmanager
async def running_controller(
    tmp_path: Path, *docs: dict[str, Any], **options: Any
) -> AsyncIterator[Controller]:
    """`start_controller` (with `options`) on a fresh embedded store in `tmp_path`, `docs` applied;
    on exit the controller stops and the store closes, whatever happened inside."""
    store = await EmbeddedStore.open(tmp_path / "store.log")
    controller = await start_controller(store, tmp_path / "ctl", **options)
    try:
        if docs:
            await apply(controller, *docs)
        yield controller
    finally:
        await controller.stop()
        await store.close()


async def retained_events(controller: Controller, kinds: tuple[str, ...] = ()) -> list[admin_pb2.Event]:
    """The controller's retained events (of `kinds`, or all): the replay is over once nothing
    arrives for a second."""
    out: list[admin_pb2.Event] = []
    async with admin_channel(controller) as channel:
        call = admin_stub(channel).WatchEvents(admin_pb2.WatchEventsRequest(since_sequence=1, kinds=kinds))
        try:
            while True:
                out.append(await asyncio.wait_for(call.read(), 1.0))
        except TimeoutError:
            call.cancel()
    return out


def core_of(controller: Controller) -> Core:
    assert controller.core is not None
    return controller.core


def ca_pem(controller: Controller) -> bytes:
    return core_of(controller).ca.certificate_pem.encode()


def admin_channel(controller: Controller) -> grpc.aio.Channel:
    assert controller.config.admin_socket is not None
    return grpc.aio.insecure_channel(f"unix:{controller.config.admin_socket}")


def admin_stub(channel: grpc.aio.Channel) -> Any:
    return admin_pb2_grpc.AdminServiceStub(channel)


async def admin_mtls_channel(controller: Controller, user: str) -> grpc.aio.Channel:
    """An mTLS channel with a freshly issued (registered) admin certificate for `user`."""
    key = new_key()
    issued, _ = await core_of(controller).admins.issue(
        user, make_csr(key, user), 3600, "test", datetime.datetime.now(datetime.UTC)
    )
    creds = grpc.ssl_channel_credentials(
        root_certificates=ca_pem(controller),
        private_key=key.reveal(),
        certificate_chain=issued.certificate_pem.encode(),
    )
    return grpc.aio.secure_channel(f"127.0.0.1:{controller.mtls_port}", creds)


def bootstrap_channel(controller: Controller) -> grpc.aio.Channel:
    creds = grpc.ssl_channel_credentials(root_certificates=ca_pem(controller))
    return grpc.aio.secure_channel(f"127.0.0.1:{controller.bootstrap_port}", creds)


def to_resource(doc: dict[str, Any]) -> common_pb2.Resource:
    spec = struct_pb2.Struct()
    spec.update(doc.get("spec", {}))
    meta = doc["metadata"]
    resource = common_pb2.Resource(api_version=doc["apiVersion"], kind=doc["kind"], spec=spec)
    resource.metadata.name = meta["name"]
    resource.metadata.labels.update(meta.get("labels", {}))
    return resource


async def apply(
    controller: Controller, *docs: dict[str, Any], dry_run: bool = False, timeout: float = CALL_TIMEOUT
) -> admin_pb2.ApplyResponse:
    async with admin_channel(controller) as channel:
        response: admin_pb2.ApplyResponse = await admin_stub(channel).Apply(
            admin_pb2.ApplyRequest(
                resources=[to_resource(d) for d in docs], dry_run=dry_run, field_manager="test"
            ),
            timeout=timeout,
        )
        return response


async def create_token(controller: Controller, site: str, node: str = "", **extra: Any) -> str:
    async with admin_channel(controller) as channel:
        response = await admin_stub(channel).CreateBootstrapToken(
            admin_pb2.CreateBootstrapTokenRequest(node_name=node, site=site, **extra), timeout=CALL_TIMEOUT
        )
        assert response.ca_cert_sha256 == core_of(controller).ca.sha256
        token: str = response.token
        return token


def facts(*addresses: str, public: tuple[str, ...] = ()) -> agent_pb2.NodeFacts:
    return agent_pb2.NodeFacts(
        addresses=[common_pb2.Endpoint(address=a, scope=common_pb2.ADDRESS_SCOPE_PRIVATE) for a in addresses]
        + [common_pb2.Endpoint(address=a, scope=common_pb2.ADDRESS_SCOPE_PUBLIC) for a in public],
        agent_version="0.1.0-test",
        hostname="test-host",
    )


@dataclass
class EnrolledNode:
    name: str
    key_pem: Secret
    certificate_pem: bytes
    ca_bundle_pem: bytes
    response: agent_pb2.EnrollResponse

    def channel(self, controller: Controller) -> grpc.aio.Channel:
        creds = grpc.ssl_channel_credentials(
            root_certificates=self.ca_bundle_pem,
            private_key=self.key_pem.reveal(),
            certificate_chain=self.certificate_pem,
        )
        return grpc.aio.secure_channel(f"127.0.0.1:{controller.mtls_port}", creds)


async def enroll(controller: Controller, token: str, name: str, *addresses: str) -> EnrolledNode:
    key, csr = new_key_and_csr(name)
    async with bootstrap_channel(controller) as channel:
        response = await agent_pb2_grpc.AgentServiceStub(channel).Enroll(
            agent_pb2.EnrollRequest(
                bootstrap_token=token, node_name=name, csr_pem=csr.decode(), facts=facts(*addresses)
            ),
            timeout=CALL_TIMEOUT,
        )
    return EnrolledNode(
        name, key, response.certificate_pem.encode(), response.ca_bundle_pem.encode(), response
    )


async def join(
    controller: Controller, site: str, name: str, *addresses: str, **token_args: Any
) -> EnrolledNode:
    return await enroll(
        controller, await create_token(controller, site, name, **token_args), name, *addresses
    )


class Watcher:
    """An agent-like desired-state consumer: applies snapshots and deltas to a tunnel table."""

    def __init__(self, node: EnrolledNode) -> None:
        self.node = node
        self.version = 0
        self.tunnels: dict[str, agent_pb2.DesiredTunnel] = {}
        self.config: agent_pb2.NodeConfig | None = None
        self.received: list[agent_pb2.DesiredStateUpdate] = []  # complete versions (after more=false)

    def apply(self, parts: list[agent_pb2.DesiredStateUpdate]) -> agent_pb2.DesiredStateUpdate:
        first = parts[0]
        merged = agent_pb2.DesiredStateUpdate(
            version=first.version, kind=first.kind, base_version=first.base_version
        )
        if first.HasField("node"):
            merged.node.CopyFrom(first.node)
        for part in parts:
            merged.upserted_tunnels.extend(part.upserted_tunnels)
            merged.removed_tunnel_ids.extend(part.removed_tunnel_ids)
        if merged.kind == agent_pb2.UPDATE_KIND_SNAPSHOT:
            self.tunnels = {}
        else:
            assert merged.base_version == self.version, (merged.base_version, self.version)
        for tid in merged.removed_tunnel_ids:
            del self.tunnels[tid]
        for tunnel in merged.upserted_tunnels:
            self.tunnels[tunnel.tunnel_id] = tunnel
        if merged.HasField("node"):
            self.config = merged.node
        assert merged.version >= self.version
        self.version = merged.version
        self.received.append(merged)
        return merged

    async def updates(
        self, channel: grpc.aio.Channel, *, resume: int | None = None
    ) -> AsyncIterator[agent_pb2.DesiredStateUpdate]:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        call = stub.WatchDesiredState(
            agent_pb2.WatchRequest(
                node_name=self.node.name, resume_from_version=self.version if resume is None else resume
            )
        )
        parts: list[agent_pb2.DesiredStateUpdate] = []
        try:
            async for message in call:
                parts.append(message)
                if not message.more:
                    yield self.apply(parts)
                    parts = []
        finally:
            call.cancel()
