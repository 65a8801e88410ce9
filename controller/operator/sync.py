"""The operator's side of AdminService: apply, delete and count tunnels for one custom resource.

Every call answers with an `Outcome` instead of raising for what the controller refused, so the
handlers turn it into a status condition; only "controller unreachable" is left to retry.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import grpc
from google.protobuf import struct_pb2

from meshsec.common.api import VALIDATION_TRAILER
from meshsec.common.secrets import Secret
from meshsec.controller.resources import Kind
from meshsec.v1 import admin_pb2, admin_pb2_grpc, common_pb2

FIELD_MANAGER = "crd-sync"
CALL_TIMEOUT = 15.0


class Verdict(enum.Enum):
    DONE = "done"
    INVALID = "invalid"  # the controller refused the resource itself (field problems)
    BLOCKED = "blocked"  # refused because of other resources (e.g. a Site still has Nodes)
    UNAVAILABLE = "unavailable"  # try again later


@dataclass(frozen=True, slots=True)
class Outcome:
    verdict: Verdict
    message: str = ""
    # "field.path: reason" for every problem the controller reported about this resource.
    problems: tuple[str, ...] = ()
    action: str = ""  # CREATED, CONFIGURED, UNCHANGED for a successful apply
    # The stored resource's version after a successful apply ("" if the response left it out).
    resource_version: str = ""


@dataclass(frozen=True, slots=True)
class TunnelCounts:
    desired: int
    established: int
    failed: int


@dataclass(frozen=True, slots=True)
class NodeLiveness:
    online: bool  # reported within its heartbeat interval
    last_seen: str  # RFC 3339, "" if the agent never reported


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: Secret
    token_id: str
    expires_at: int  # seconds since the epoch
    ca_sha256: str


_ESTABLISHED = (common_pb2.TUNNEL_STATE_ESTABLISHED, common_pb2.TUNNEL_STATE_REKEYING)


class ControllerSync:
    """AdminService over the controller's admin socket (the operator runs beside the controller)."""

    def __init__(
        self,
        target: str,
        *,
        liveness_max_age: float = 5.0,
        interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
    ) -> None:
        self.target = target
        self._channel = grpc.aio.insecure_channel(target, interceptors=interceptors)
        self._stub = admin_pb2_grpc.AdminServiceStub(self._channel)
        # One link-free topology read serves every Node's resync within this many seconds, so a
        # resync round costs one O(nodes) call instead of one per node.
        self._liveness_max_age = liveness_max_age
        self._liveness: dict[str, NodeLiveness] = {}
        self._liveness_at = float("-inf")
        self._liveness_lock = asyncio.Lock()

    @classmethod
    def unix(cls, path: str, *, interceptors: Sequence[grpc.aio.ClientInterceptor] = ()) -> ControllerSync:
        return cls(f"unix:{path}", interceptors=interceptors)

    async def close(self) -> None:
        await self._channel.close(None)

    async def apply(self, manifest: Mapping[str, Any], *, field_manager: str = FIELD_MANAGER) -> Outcome:
        request = admin_pb2.ApplyRequest(resources=[_resource(manifest)], field_manager=field_manager)
        try:
            response = await self._stub.Apply(request, timeout=CALL_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            return _refusal(exc, (manifest["kind"], manifest["metadata"]["name"]))
        result = response.results[0]
        action = admin_pb2.ApplyAction.Name(result.action).removeprefix("APPLY_ACTION_")
        version = result.resource.metadata.resource_version if result.HasField("resource") else ""
        return Outcome(Verdict.DONE, action=action, resource_version=version)

    async def delete(self, kind: Kind, name: str, *, resource_version: str = "") -> Outcome:
        """`resource_version` (from `get`): refused with ABORTED (BLOCKED) if it changed since."""
        request = admin_pb2.DeleteRequest(kind=kind.value, name=name, resource_version=resource_version)
        try:
            await self._stub.Delete(request, timeout=CALL_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return Outcome(Verdict.DONE, "already absent")
            return _refusal(exc, (kind.value, name))
        return Outcome(Verdict.DONE)

    async def get(self, kind: Kind, name: str) -> common_pb2.Resource | None:
        try:
            response = await self._stub.Get(
                admin_pb2.GetRequest(kind=kind.value, name=name), timeout=CALL_TIMEOUT
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        return response.resource

    async def list_resources(self, kind: Kind, label_selector: str = "") -> list[common_pb2.Resource]:
        """Every resource of `kind` (all pages) matching `label_selector`."""
        request = admin_pb2.ListRequest(kind=kind.value, label_selector=label_selector)
        found: list[common_pb2.Resource] = []
        while True:
            response = await self._stub.List(request, timeout=CALL_TIMEOUT)
            found.extend(response.resources)
            if not response.next_page_token:
                return found
            request.page_token = response.next_page_token

    async def tunnels(self, kind: Kind, name: str) -> TunnelCounts:
        """Counts over every page of ListTunnels filtered to this resource."""
        request = _tunnel_filter(kind, name)
        desired = established = failed = 0
        while True:
            response = await self._stub.ListTunnels(request, timeout=CALL_TIMEOUT)
            for tunnel in response.tunnels:
                desired += 1
                established += tunnel.state in _ESTABLISHED
                failed += tunnel.state == common_pb2.TUNNEL_STATE_FAILED
            if not response.next_page_token:
                return TunnelCounts(desired, established, failed)
            request.page_token = response.next_page_token

    async def node_liveness(self, name: str) -> NodeLiveness | None:
        """None when the controller has no such node."""
        async with self._liveness_lock:
            if time.monotonic() - self._liveness_at > self._liveness_max_age:
                topology = await self._stub.GetTopology(
                    admin_pb2.GetTopologyRequest(omit_links=True), timeout=CALL_TIMEOUT
                )
                self._liveness = {
                    n.name: NodeLiveness(
                        n.online, n.last_seen.ToJsonString() if n.HasField("last_seen") else ""
                    )
                    for n in topology.nodes
                }
                self._liveness_at = time.monotonic()
            return self._liveness.get(name)

    async def create_token(
        self, site: str, *, uses: int, ttl_seconds: int, node_labels: Mapping[str, str]
    ) -> IssuedToken:
        """A bootstrap token bound to a site but to no node name (one serves a whole DaemonSet)."""
        response = await self._stub.CreateBootstrapToken(
            admin_pb2.CreateBootstrapTokenRequest(
                site=site, uses=uses, ttl_seconds=ttl_seconds, node_labels=dict(node_labels)
            ),
            timeout=CALL_TIMEOUT,
        )
        return IssuedToken(
            Secret(response.token.encode()),
            response.token_id,
            response.expires_at.ToSeconds(),
            response.ca_cert_sha256,
        )

    async def put_secret(self, name: str, value: Secret) -> None:
        """An ExternalGateway PSK; the value goes out and never comes back."""
        await self._stub.PutSecret(
            admin_pb2.PutSecretRequest(name=name, value=value.reveal()), timeout=CALL_TIMEOUT
        )

    async def delete_secret(self, name: str) -> None:
        try:
            await self._stub.DeleteSecret(admin_pb2.DeleteSecretRequest(name=name), timeout=CALL_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise

    async def secret_users(self, name: str) -> list[str] | None:
        """The ExternalGateways using controller secret `name`; None when there is no such secret."""
        response = await self._stub.ListSecrets(admin_pb2.ListSecretsRequest(), timeout=CALL_TIMEOUT)
        return next((list(s.used_by) for s in response.secrets if s.name == name), None)

    async def revoke_token(self, token_id: str) -> None:
        try:
            await self._stub.RevokeBootstrapToken(
                admin_pb2.RevokeBootstrapTokenRequest(token_id=token_id), timeout=CALL_TIMEOUT
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:  # expired and collected already
                raise


def _tunnel_filter(kind: Kind, name: str) -> admin_pb2.ListTunnelsRequest:
    if kind is Kind.NODE:
        return admin_pb2.ListTunnelsRequest(node=name)
    if kind is Kind.SITE:
        return admin_pb2.ListTunnelsRequest(site=name)
    # A gateway's tunnels carry the gateway as their policy, like a MeshPolicy's.
    return admin_pb2.ListTunnelsRequest(policy=name)


def _resource(manifest: Mapping[str, Any]) -> common_pb2.Resource:
    meta = manifest["metadata"]
    out = common_pb2.Resource(api_version=manifest["apiVersion"], kind=manifest["kind"])
    out.metadata.name = meta["name"]
    out.metadata.labels.update(meta.get("labels") or {})
    out.metadata.annotations.update(meta.get("annotations") or {})
    spec = struct_pb2.Struct()
    spec.update(manifest.get("spec") or {})
    out.spec.CopyFrom(spec)
    return out


def _refusal(exc: grpc.aio.AioRpcError, own: tuple[str, str]) -> Outcome:
    code = exc.code()
    message = exc.details() or code.name
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        problems = tuple(_problem(e, own) for e in _validation_errors(exc)) or (message,)
        return Outcome(Verdict.INVALID, message, problems)
    if code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ABORTED):
        return Outcome(Verdict.BLOCKED, message, (message,))
    return Outcome(Verdict.UNAVAILABLE, f"{code.name}: {message}")


def _problem(error: admin_pb2.ValidationError, own: tuple[str, str]) -> str:
    """``path: reason`` for this resource; problems found on another resource name it."""
    text = f"{error.path}: {error.message}" if error.path else error.message
    return text if (error.kind, error.name) == own else f"{error.kind}/{error.name}: {text}"


def _validation_errors(exc: grpc.aio.AioRpcError) -> list[admin_pb2.ValidationError]:
    # grpc.aio gives a Metadata object (pairs when iterated); the stubs type it otherwise.
    pairs = cast(Iterable[tuple[str, object]], exc.trailing_metadata() or ())
    for key, value in pairs:
        if key == VALIDATION_TRAILER and isinstance(value, bytes):
            return list(admin_pb2.ValidationErrors.FromString(value).errors)
    return []
