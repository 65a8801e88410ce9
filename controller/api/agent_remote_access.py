"""AgentService's remote-access RPCs: gateways take and give back road warriors' leases and read
the revocation list. A mixin of `AgentApi`, which supplies `_core` and `_node` (the caller check).

The events are the controller's view of connects, disconnects and refusals (reasons
RemoteAccessConnected, RemoteAccessDisconnected, RemoteAccessRefused; kind RemoteAccessUser).
"""

from __future__ import annotations

import abc
import time

import grpc

from meshsec.common.once_per import OncePer
from meshsec.controller.api.identity import AnyContext
from meshsec.controller.remoteaccess.credentials import is_revoked
from meshsec.controller.remoteaccess.leases import PoolExhaustedError
from meshsec.controller.resources.model import (
    CERTIFICATE_METHODS,
    RemoteAccessPool,
    RemoteAccessUser,
    RemoteAuthMethod,
)
from meshsec.controller.service.core import Core
from meshsec.controller.store import StoreError
from meshsec.v1 import agent_pb2

MAX_SESSION_NAME = 64
MAX_REASON = 200
REFUSAL_EVENT_EVERY_S = 60.0
EAP_METHODS = frozenset({RemoteAuthMethod.EAP_MSCHAPV2, RemoteAuthMethod.EAP_TLS})


class AgentRemoteAccessRpcs(abc.ABC):
    _core: Core
    # Refusals gateways report, per (gateway, user): one event a minute at most, so that a client
    # retrying with a wrong password, or a gateway gone wrong, cannot flood the user's history.
    _refusals: OncePer

    @abc.abstractmethod
    async def _node(self, context: AnyContext, requested: str) -> str: ...

    async def _client(
        self, context: AnyContext, node: str, identity: str, device: str, *, listed: bool = True
    ) -> tuple[RemoteAccessUser, RemoteAccessPool]:
        """The user behind `identity` and its pool, if `node` may serve it; aborts otherwise."""
        user, pool = await self._gateway_user(context, node, identity)
        certificate = user.spec.auth_method in CERTIFICATE_METHODS
        if listed and certificate and device not in {d.name for d in user.spec.devices}:
            await self._refuse(
                context,
                grpc.StatusCode.NOT_FOUND,
                user.metadata.name,
                f"RemoteAccessUser/{user.metadata.name} has no device {device!r}",
            )
        if not device or len(device) > MAX_SESSION_NAME or "/" in device:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "device: 1-64 characters without '/'")
        return user, pool

    async def _gateway_user(
        self, context: AnyContext, node: str, identity: str
    ) -> tuple[RemoteAccessUser, RemoteAccessPool]:
        """The user behind `identity` and its pool, if `node` is a gateway of that pool."""
        state = self._core.state
        try:
            await state.caught_up()
        except StoreError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"store: {exc}")
        names = sorted(state.index.users_with_identity(identity))
        user = state.index.user(names[0]) if names else None
        if user is None:
            await self._refuse(
                context, grpc.StatusCode.NOT_FOUND, "", f"no RemoteAccessUser with identity {identity!r}"
            )
        assert user is not None
        pool = state.index.pool(user.spec.pool)
        assert pool is not None  # validation keeps a user's pool in existence
        gateway = state.index.node(node)
        if gateway is None or not pool.spec.gateways.matches(gateway.metadata.labels):
            await self._refuse(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                user.metadata.name,
                f"node {node} is not a gateway of RemoteAccessPool/{pool.metadata.name}",
            )
        return user, pool

    async def GetEapCredential(
        self,
        request: agent_pb2.GetEapCredentialRequest,
        context: grpc.aio.ServicerContext[
            agent_pb2.GetEapCredentialRequest, agent_pb2.GetEapCredentialResponse
        ],
    ) -> agent_pb2.GetEapCredentialResponse:
        node = await self._node(context, request.node)
        user, _ = await self._gateway_user(context, node, request.identity)
        name, method = user.metadata.name, user.spec.auth_method.value
        if user.spec.auth_method not in EAP_METHODS:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"RemoteAccessUser/{name} authenticates with {method}, not EAP",
            )
        nt_hash = b""
        if user.spec.auth_method == RemoteAuthMethod.EAP_MSCHAPV2:
            try:
                secret = await self._core.credentials.nt_hash(name)
            except StoreError as exc:
                await context.abort(grpc.StatusCode.UNAVAILABLE, f"store: {exc}")
            nt_hash = secret.reveal() if secret is not None else b""
        return agent_pb2.GetEapCredentialResponse(user=name, method=method, nt_hash=nt_hash)

    async def _refuse(self, context: AnyContext, code: grpc.StatusCode, user: str, reason: str) -> None:
        if user:
            await self._core.events.emit(
                "RemoteAccessRefused", "RemoteAccessUser", user, reason, warning=True
            )
        await context.abort(code, reason)

    async def AllocateLease(
        self,
        request: agent_pb2.AllocateLeaseRequest,
        context: grpc.aio.ServicerContext[agent_pb2.AllocateLeaseRequest, agent_pb2.AllocateLeaseResponse],
    ) -> agent_pb2.AllocateLeaseResponse:
        node = await self._node(context, request.node)
        user, pool = await self._client(context, node, request.identity, request.device)
        name = user.metadata.name
        try:
            lease = await self._core.leases.allocate(pool, name, request.device, node, time.time())
        except PoolExhaustedError as exc:
            await self._refuse(context, grpc.StatusCode.RESOURCE_EXHAUSTED, name, str(exc))
        except StoreError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"store: {exc}")
        addresses = [str(a) for a in lease.addresses]
        await self._core.events.emit(
            "RemoteAccessConnected",
            "RemoteAccessUser",
            name,
            f"{name} ({request.device}) on {node} with {', '.join(addresses)}",
            source=f"agent/{node}",
        )
        return agent_pb2.AllocateLeaseResponse(
            user=name,
            pool=pool.metadata.name,
            addresses=addresses,
            dns=[str(a) for a in pool.spec.dns],
            routes=[str(p) for p in pool.spec.routes.selectors()],
        )

    async def ReleaseLease(
        self,
        request: agent_pb2.ReleaseLeaseRequest,
        context: grpc.aio.ServicerContext[agent_pb2.ReleaseLeaseRequest, agent_pb2.ReleaseLeaseResponse],
    ) -> agent_pb2.ReleaseLeaseResponse:
        node = await self._node(context, request.node)
        # A device removed from spec.devices (its certificate revoked, its client dropped by the
        # gateway) still gives its lease back.
        user, _ = await self._client(context, node, request.identity, request.device, listed=False)
        name = user.metadata.name
        try:
            held = next((x for x in await self._core.leases.leases(name) if x.device == request.device), None)
            if held is not None and held.gateway != node:
                # The client roamed to another gateway, which holds it now: not ours to release.
                return agent_pb2.ReleaseLeaseResponse(released=False)
            released = await self._core.leases.release(name, request.device)
        except StoreError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"store: {exc}")
        if released is not None:
            await self._core.events.emit(
                "RemoteAccessDisconnected",
                "RemoteAccessUser",
                name,
                f"{name} ({request.device}) left {node}",
                source=f"agent/{node}",
            )
        return agent_pb2.ReleaseLeaseResponse(released=released is not None)

    async def ListRevokedCertificates(
        self,
        request: agent_pb2.ListRevokedCertificatesRequest,
        context: grpc.aio.ServicerContext[
            agent_pb2.ListRevokedCertificatesRequest, agent_pb2.ListRevokedCertificatesResponse
        ],
    ) -> agent_pb2.ListRevokedCertificatesResponse:
        await self._node(context, request.node)
        try:
            revoked = await self._core.credentials.revoked(self._core.state.index.has_device, time.time())
        except StoreError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"store: {exc}")
        return agent_pb2.ListRevokedCertificatesResponse(serials=sorted(c.serial for c in revoked))

    async def ReportRevokedClient(
        self,
        request: agent_pb2.ReportRevokedClientRequest,
        context: grpc.aio.ServicerContext[
            agent_pb2.ReportRevokedClientRequest, agent_pb2.ReportRevokedClientResponse
        ],
    ) -> agent_pb2.ReportRevokedClientResponse:
        node = await self._node(context, request.node)
        index = self._core.state.index
        gateway = index.node(node)
        labels = gateway.metadata.labels if gateway is not None else None
        if labels is None or not any(p.spec.gateways.matches(labels) for p in index.all_pools()):
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"node {node} serves no RemoteAccessPool")
        try:
            certificates = await self._core.credentials.certificates()
        except StoreError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"store: {exc}")
        # Only a serial the controller itself revoked becomes an event: a gateway cannot write
        # arbitrary refusals into a user's history.
        serial = request.serial.lower()
        found = next((c for c in certificates if c.serial == serial), None)
        if found is None or not is_revoked(found, index.has_device, time.time()):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no revoked device certificate {serial[:64]}")
        assert found is not None
        where = f" from {request.peer_address[:64]}" if request.peer_address else ""
        await self._core.events.emit(
            "RemoteAccessRefused",
            "RemoteAccessUser",
            found.user,
            f"{found.user} ({found.device}) refused on {node}{where}: certificate {serial} is revoked",
            warning=True,
            source=f"agent/{node}",
        )
        return agent_pb2.ReportRevokedClientResponse()

    async def ReportRefusedClient(
        self,
        request: agent_pb2.ReportRefusedClientRequest,
        context: grpc.aio.ServicerContext[
            agent_pb2.ReportRefusedClientRequest, agent_pb2.ReportRefusedClientResponse
        ],
    ) -> agent_pb2.ReportRefusedClientResponse:
        node = await self._node(context, request.node)
        # Only an identity of one of the caller's pools' users becomes an event (NOT_FOUND or
        # PERMISSION_DENIED otherwise, recording nothing), and one per gateway and user a minute.
        user, _ = await self._gateway_user(context, node, request.identity)
        name = user.metadata.name
        if self._refusals.allow((node, name), time.monotonic()):
            # meshctl escapes what a node wrote when it prints an event; the store keeps it as is.
            where = f" from {request.peer_address[:64]}" if request.peer_address else ""
            why = request.reason[:MAX_REASON] or "authentication failed"
            await self._core.events.emit(
                "RemoteAccessRefused",
                "RemoteAccessUser",
                name,
                f"{name} refused on {node}{where}: {why}",
                warning=True,
                source=f"agent/{node}",
            )
        return agent_pb2.ReportRefusedClientResponse()
