"""AgentService: enrollment, certificate renewal, the desired-state watch and status reports.

The same servicer class serves both listeners; on the bootstrap listener (server-only TLS) it
answers nothing but Enroll. Every other RPC acts as the node named in the client certificate
(docs/api.md, "Authorization rules"). A node accepts only the certificates whose serials it
records (`CERTIFICATE_SERIALS`): enrollment replaces them, renewal keeps the one that renewed and
adds the new one, deleting the Node drops them, so a deleted and re-created Node accepts nothing
until it enrolls again.
"""

from __future__ import annotations

import datetime
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
from cryptography import x509

from meshsec.common.once_per import OncePer
from meshsec.common.secrets import Secret
from meshsec.controller.api.agent_remote_access import REFUSAL_EVENT_EVERY_S, AgentRemoteAccessRpcs
from meshsec.controller.api.convert import doc_to_resource, facts_to_endpoints
from meshsec.controller.api.identity import AnyContext, caller_of, issued_at, serial_of
from meshsec.controller.api.wire import TunnelEncoder, split_update
from meshsec.controller.ca import CsrError, TokenError, load_csr
from meshsec.controller.ca.authority import IssuedCertificate
from meshsec.controller.mesh import PeerKind, Upsert
from meshsec.controller.resources import API_VERSION, Kind, Node, ValidationError, parse_resource
from meshsec.controller.resources.errors import clip
from meshsec.controller.resources.fields import valid_name
from meshsec.controller.resources.limits import (
    MAX_AGENT_VERSION,
    MAX_FACT_ADDRESSES,
    MAX_HOSTNAME,
    MAX_KERNEL_VERSION,
)
from meshsec.controller.resources.model import LAST_APPLIED_BY
from meshsec.controller.service.core import Core
from meshsec.controller.service.state import NodeGone, NodeUpdate, Resync, WritePlan
from meshsec.controller.store import Compare, Put, StoreError
from meshsec.v1 import agent_pb2, agent_pb2_grpc

log = logging.getLogger(__name__)

ENROLLED_AT = "meshsec.io/enrolled-at"
ENROLLED_WITH = "meshsec.io/enrolled-with-token"
# Serials (hex, comma-separated) of the certificates this Node currently accepts.
CERTIFICATE_SERIALS = "meshsec.io/certificate-serials"
# Leaves are backdated (meshsec.controller.ca.authority); allow for it when comparing issue times.
_BACKDATE_SLACK = datetime.timedelta(minutes=5, seconds=1)


class _Refused(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def _enrolled_at(doc: dict[str, Any]) -> datetime.datetime | None:
    """When the node last enrolled; None for nodes created by Apply (or an unreadable annotation,
    which then cannot revoke anything: the node's deletion still does)."""
    raw = doc.get("metadata", {}).get("annotations", {}).get(ENROLLED_AT)
    try:
        return datetime.datetime.fromtimestamp(float(raw), datetime.UTC) if raw is not None else None
    except (TypeError, ValueError, OverflowError):
        log.warning(
            "node %s: unreadable %s annotation %r", doc.get("metadata", {}).get("name"), ENROLLED_AT, raw
        )
        return None


def _accepted_serials(doc: dict[str, Any]) -> set[int] | None:
    """The serials this Node accepts; None for a Node enrolled before serials were recorded."""
    raw = _annotations(doc).get(CERTIFICATE_SERIALS)
    if raw is None:
        return None
    try:
        return {int(s, 16) for s in str(raw).split(",") if s}
    except ValueError:
        log.warning(
            "node %s: unreadable %s annotation", doc.get("metadata", {}).get("name"), CERTIFICATE_SERIALS
        )
        return set()


def _serials_text(*serials: int) -> str:
    return ",".join(f"{s:x}" for s in dict.fromkeys(serials))


def _certificate_refusal(doc: dict[str, Any], certificate_pem: bytes) -> str | None:
    """Why this Node does not accept the certificate, or None if it does."""
    name = doc.get("metadata", {}).get("name")
    accepted = _accepted_serials(doc)
    if accepted is not None:
        if serial_of(certificate_pem) in accepted:
            return None
        return (
            f"this certificate is not one node {name} accepts (it re-enrolled or renewed since, or was "
            "deleted and created again); enroll again"
        )
    if ENROLLED_WITH not in _annotations(doc):
        return f"node {name} has not enrolled since it was created; enroll it"
    # Enrolled by a controller that did not record serials: judged by issue time until it renews.
    enrolled_at = _enrolled_at(doc)
    issued = issued_at(certificate_pem)
    if issued is None or (enrolled_at is not None and issued + _BACKDATE_SLACK < enrolled_at):
        return f"this certificate predates the latest enrollment of node {name}"
    return None


def _annotations(doc: dict[str, Any]) -> dict[str, Any]:
    annotations: dict[str, Any] = doc.get("metadata", {}).get("annotations", {})
    return annotations


def _declared(doc: dict[str, Any]) -> bool:
    """An admin applied this Node (never enrolled, or applied again since): its spec is the truth."""
    annotations = _annotations(doc)
    return ENROLLED_WITH not in annotations or LAST_APPLIED_BY in annotations


def _adopted(
    doc: dict[str, Any], site: str, token_id: str, labels: dict[str, str], facts: dict[str, str]
) -> dict[str, Any]:
    """The declared Node bound to its enrolling agent: spec untouched, the token's labels added
    where the declaration has none of that key, the agent's facts recorded as annotations."""
    name = doc["metadata"]["name"]
    declared_site = doc.get("spec", {}).get("site")
    if declared_site != site:
        raise _Refused(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"Node {name} is declared in site {declared_site}, but token {token_id} enrolls into site "
            f"{site}; create a token for site {declared_site} or change the Node",
        )
    metadata = dict(doc["metadata"])
    metadata["labels"] = {**labels, **metadata.get("labels", {})}
    metadata["annotations"] = {**metadata.get("annotations", {}), **facts}
    return {**doc, "metadata": metadata, "status": {**doc.get("status", {}), "phase": "Enrolled"}}


def _facts_problem(facts: agent_pb2.NodeFacts) -> str | None:
    """Any bootstrap-token holder sends these, and they are stored with the Node: bounded."""
    for field, value, limit in (
        ("hostname", facts.hostname, MAX_HOSTNAME),
        ("agent_version", facts.agent_version, MAX_AGENT_VERSION),
        ("kernel_version", facts.kernel_version, MAX_KERNEL_VERSION),
    ):
        if len(value) > limit:
            return f"facts.{field} has {len(value)} characters; at most {limit}"
    if len(facts.addresses) > MAX_FACT_ADDRESSES:
        return f"facts.addresses lists {len(facts.addresses)} addresses; at most {MAX_FACT_ADDRESSES}"
    return None


def _now_rfc3339(now: float) -> str:
    return datetime.datetime.fromtimestamp(now, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class AgentApi(AgentRemoteAccessRpcs, agent_pb2_grpc.AgentServiceServicer):
    def __init__(self, core: Core, *, bootstrap: bool) -> None:
        self._core = core
        self._bootstrap = bootstrap
        self._refusals = OncePer(REFUSAL_EVENT_EVERY_S)
        self._encoder = TunnelEncoder(core.secrets.psk)
        self._last_head: tuple[tuple[int, int, bool], bytes] = ((-1, -1, False), b"")

    # --- authorization -------------------------------------------------------------------------

    async def _node(self, context: AnyContext, requested: str) -> str:
        """The calling node, if it may act as `requested` (empty: itself); aborts otherwise."""
        if self._bootstrap:
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "the bootstrap listener serves only Enroll; use the mTLS listener",
            )
        caller = caller_of(context)
        if caller is None or caller.kind != "node":
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "a node certificate is required")
        if requested and requested != caller.name:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, f"node {caller.name} may not act as node {requested}"
            )
        stored = self._core.state.doc(Kind.NODE, caller.name)
        if stored is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"node {caller.name} does not exist (deleted?)")
        refusal = _certificate_refusal(stored.doc, caller.certificate_pem)
        if refusal is not None:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, refusal)
        return caller.name

    # --- enrollment ----------------------------------------------------------------------------

    async def Enroll(
        self,
        request: agent_pb2.EnrollRequest,
        context: grpc.aio.ServicerContext[agent_pb2.EnrollRequest, agent_pb2.EnrollResponse],
    ) -> agent_pb2.EnrollResponse:
        name = request.node_name
        token = Secret(request.bootstrap_token)
        try:
            return await self._enroll(name, token, request)
        except _Refused as exc:
            await context.abort(exc.code, str(exc))
        except TokenError as exc:
            code = (
                grpc.StatusCode.PERMISSION_DENIED
                if exc.code == "permission_denied"
                else grpc.StatusCode.UNAUTHENTICATED
            )
            await context.abort(code, str(exc))
        except CsrError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except ValidationError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"enrollment rejected: {exc}")
        except StoreError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"store: {exc}")

    async def _enroll(
        self, name: str, token: Secret, request: agent_pb2.EnrollRequest
    ) -> agent_pb2.EnrollResponse:
        core = self._core
        if not valid_name(name):
            raise _Refused(
                grpc.StatusCode.INVALID_ARGUMENT, f"node_name {clip(name, 64)!r} is not a DNS-1123 name"
            )
        problem = _facts_problem(request.facts)
        if problem is not None:
            raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, f"enrollment rejected: {problem}")
        csr = load_csr(request.csr_pem, name)
        now = time.time()
        token_id = ""
        issued: IssuedCertificate | None = None

        async def build() -> WritePlan:
            nonlocal token_id, issued
            record, token_kv = await core.tokens.check(token, name, now)
            token_id = record.token_id
            existing = core.state.doc(Kind.NODE, name)
            enrolled = existing is not None and ENROLLED_WITH in _annotations(existing.doc)
            if enrolled and not record.allow_reenroll:
                raise _Refused(
                    grpc.StatusCode.ALREADY_EXISTS,
                    f"node {name} is already enrolled; token {record.token_id} does not allow re-enrollment",
                )
            current_site = existing.doc.get("spec", {}).get("site") if existing is not None else None
            if enrolled and not record.node_name and current_site != record.site:
                # A token for any name must not move an enrolled node (and its tunnels) elsewhere:
                # that takes a token bound to the node by name.
                raise _Refused(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"node {name} is enrolled in site {current_site}; token {record.token_id} enrolls into "
                    f"site {record.site} and is not bound to node {name}, so it cannot move it",
                )
            facts = {
                ENROLLED_AT: repr(now),
                ENROLLED_WITH: record.token_id,
                "meshsec.io/hostname": request.facts.hostname,
                "meshsec.io/agent-version": request.facts.agent_version,
            }
            if existing is not None and _declared(existing.doc):
                doc = _adopted(existing.doc, record.site, record.token_id, dict(record.labels), facts)
            else:
                old_meta: dict[str, Any] = existing.doc.get("metadata", {}) if existing else {}
                doc = {
                    "apiVersion": API_VERSION,
                    "kind": Kind.NODE.value,
                    "metadata": {
                        "name": name,
                        "labels": dict(record.labels),
                        "annotations": facts,
                        "uid": str(uuid.uuid4()),
                        "generation": int(old_meta.get("generation", 0)) + 1,
                        "creationTimestamp": _now_rfc3339(now),
                    },
                    "spec": {
                        "site": record.site,
                        "endpoints": facts_to_endpoints(request.facts),
                        "identity": {"ikeId": name},
                    },
                    "status": {"phase": "Enrolled"},
                }
            resource = parse_resource(doc)
            assert isinstance(resource, Node)
            # Signed here, so the Node records exactly the certificate handed out (and only it).
            issued = self._sign(csr, name, resource, datetime.datetime.fromtimestamp(now, datetime.UTC))
            doc["metadata"]["annotations"][CERTIFICATE_SERIALS] = _serials_text(issued.serial)
            resource = parse_resource(doc)
            key = core.tokens.key(record.token_id)
            return WritePlan(
                [Upsert(resource)],
                [
                    Put(core.state.keys.resource(Kind.NODE, name), json.dumps(doc).encode()),
                    core.tokens.spend_op(record),
                ],
                [Compare.mod_revision(key, token_kv.mod_revision)],
            )

        await core.state.commit(build)
        assert issued is not None
        await core.events.emit("NodeEnrolled", "Node", name, f"enrolled with token {token_id}")
        log.info("enrolled node %s (token %s)", name, token_id)
        return self._response(name, issued)

    def _sign(
        self, csr: x509.CertificateSigningRequest, name: str, node: Node | None, now: datetime.datetime
    ) -> IssuedCertificate:
        """The node's certificate, naming it and its IKE ID (enrollment and renewal alike)."""
        core = self._core
        ike_id = node.spec.identity.ike_id if node is not None else name
        return core.ca.sign_node(csr, name, ike_id, core.settings.node_cert_lifetime, now)

    def _response(self, name: str, issued: IssuedCertificate) -> agent_pb2.EnrollResponse:
        response = agent_pb2.EnrollResponse(
            certificate_pem=issued.certificate_pem, ca_bundle_pem=self._core.ca.certificate_pem
        )
        response.not_after.FromDatetime(issued.not_after)
        stored = self._core.state.doc(Kind.NODE, name)
        if stored is not None:
            response.node.CopyFrom(doc_to_resource(stored.doc, stored.mod_revision))
        return response

    async def RenewCertificate(
        self,
        request: agent_pb2.RenewCertificateRequest,
        context: grpc.aio.ServicerContext[agent_pb2.RenewCertificateRequest, agent_pb2.EnrollResponse],
    ) -> agent_pb2.EnrollResponse:
        name = await self._node(context, "")
        try:
            csr = load_csr(request.csr_pem, name)
        except CsrError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        try:
            issued = await self._renew(csr, name, context)
        except _Refused as exc:
            await context.abort(exc.code, str(exc))
        except StoreError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"store: {exc}")
        await self._core.events.emit(
            "CertificateRenewed", "Node", name, f"certificate valid until {issued.not_after}"
        )
        return self._response(name, issued)

    async def _renew(
        self, csr: x509.CertificateSigningRequest, name: str, context: AnyContext
    ) -> IssuedCertificate:
        """Sign and record the new certificate beside the one that asked: the agent keeps using
        the old one until it has switched, and a renewal whose answer was lost costs nothing."""
        state = self._core.state
        caller = caller_of(context)
        assert caller is not None  # _node() checked
        issued: IssuedCertificate | None = None

        async def build() -> WritePlan:
            nonlocal issued
            stored = state.doc(Kind.NODE, name)
            if stored is None:
                raise _Refused(grpc.StatusCode.NOT_FOUND, f"node {name} does not exist (deleted?)")
            refusal = _certificate_refusal(stored.doc, caller.certificate_pem)
            if refusal is not None:  # re-enrolled or re-created while this call waited
                raise _Refused(grpc.StatusCode.PERMISSION_DENIED, refusal)
            issued = self._sign(csr, name, state.index.node(name), datetime.datetime.now(datetime.UTC))
            serial = serial_of(caller.certificate_pem)
            assert serial is not None  # _certificate_refusal needs the certificate
            metadata = dict(stored.doc["metadata"])
            metadata["annotations"] = {
                **metadata.get("annotations", {}),
                CERTIFICATE_SERIALS: _serials_text(serial, issued.serial),
            }
            doc = {**stored.doc, "metadata": metadata}
            # The spec is unchanged, so there is nothing to validate against the mesh.
            return WritePlan([], [Put(state.keys.resource(Kind.NODE, name), json.dumps(doc).encode())])

        await state.commit(build)
        assert issued is not None
        return issued

    # --- desired state -------------------------------------------------------------------------

    async def WatchDesiredState(
        self,
        request: agent_pb2.WatchRequest,
        context: grpc.aio.ServicerContext[agent_pb2.WatchRequest, agent_pb2.DesiredStateUpdate],
    ) -> AsyncIterator[agent_pb2.DesiredStateUpdate]:
        name = await self._node(context, request.node_name)
        state = self._core.state
        queue = state.subscribe(name)
        if queue is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"node {name} has no desired state (not in the mesh)"
            )
        try:
            first = state.catch_up(name, request.resume_from_version)
            if first is None:
                snapshot = state.snapshot(name)
                assert snapshot is not None  # subscribe() succeeded, nothing awaited since
                first = [snapshot]
            sent = 0
            for update in first:
                messages, size = self._messages(update)
                for message in messages:
                    yield message
                self._pushed(name, update, size)
                sent = update.version
            while True:
                signal = await queue.get()
                if isinstance(signal, NodeGone):
                    await context.abort(grpc.StatusCode.NOT_FOUND, f"node {name} was deleted")
                if isinstance(signal, NodeUpdate) and signal.version <= sent:
                    continue
                if isinstance(signal, Resync) or signal.base_version != sent:
                    resent = state.snapshot(name)
                    if resent is None:
                        await context.abort(grpc.StatusCode.NOT_FOUND, f"node {name} was deleted")
                    update = resent
                else:
                    update = signal
                messages, size = self._messages(update)
                for message in messages:
                    yield message
                self._pushed(name, update, size)
                sent = update.version
        finally:
            state.unsubscribe(name, queue)

    def _messages(self, update: NodeUpdate) -> tuple[list[agent_pb2.DesiredStateUpdate], int]:
        """The update split into messages under the size limit (node config in the first), and
        their serialized size. Tunnels are encoded from cached parts (`wire.TunnelEncoder`)."""
        core = self._core
        index = core.state.index
        head = self._head(update.version, 0 if update.snapshot else update.base_version, update.snapshot)
        first = b""
        if update.removals or update.config is not None:
            first = agent_pb2.DesiredStateUpdate(
                removed_tunnel_ids=update.removals, node=update.config
            ).SerializeToString()
        generation = 0 if update.snapshot else update.version
        encode = self._encoder.encode
        tunnels = []
        for tunnel in update.upserts:
            peer = index.node(tunnel.peer) if tunnel.peer_kind is PeerKind.NODE else None
            tunnels.append(encode(tunnel, peer.spec.site if peer else "", generation))
        blobs = split_update(head, first, tunnels, core.settings.max_message_bytes)
        return [agent_pb2.DesiredStateUpdate.FromString(b) for b in blobs], sum(len(b) for b in blobs)

    def _head(self, version: int, base_version: int, snapshot: bool) -> bytes:
        # One change sends every affected agent the same head (most slices move in lockstep).
        key = (version, base_version, snapshot)
        if key != self._last_head[0]:
            kind = agent_pb2.UPDATE_KIND_SNAPSHOT if snapshot else agent_pb2.UPDATE_KIND_DELTA
            message = agent_pb2.DesiredStateUpdate(version=version, kind=kind, base_version=base_version)
            self._last_head = (key, message.SerializeToString())
        return self._last_head[1]

    def _pushed(self, node: str, update: NodeUpdate, size: int) -> None:
        self._core.metrics.pushed(
            node, update.version, update.at, size, "snapshot" if update.snapshot else "delta"
        )

    # --- status --------------------------------------------------------------------------------

    async def ReportStatus(
        self,
        request: agent_pb2.StatusReport,
        context: grpc.aio.ServicerContext[agent_pb2.StatusReport, agent_pb2.StatusAck],
    ) -> agent_pb2.StatusAck:
        name = await self._node(context, request.node_name)
        return await self._core.status.accept(name, request, time.time())
