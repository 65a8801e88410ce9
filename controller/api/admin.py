"""AdminService: resources (all-or-nothing Apply with field-path errors), tunnels with live
status, events, bootstrap tokens, secrets, admin certificates and the topology.

Served on the local Unix socket (file permissions are the access control) and on the mTLS
listener, where only admin certificates (URI SAN meshsec://admin/<user>) whose serial is
registered and not revoked are accepted, checked on every call.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import grpc

from meshsec.common.api import VALIDATION_TRAILER, missing_psk_warning
from meshsec.common.version import VERSION
from meshsec.controller.api.convert import (
    NonFiniteNumber,
    desired_tunnel,
    doc_to_resource,
    node_endpoints,
    resource_to_doc,
)
from meshsec.controller.api.identity import AnyContext, caller_of, serial_of
from meshsec.controller.api.remote_access import RemoteAccessRpcs
from meshsec.controller.api.selector import parse_selector
from meshsec.controller.ca import AdminRecord, CsrError, serial_text
from meshsec.controller.mesh import Change, PeerKind, Tunnel, Upsert
from meshsec.controller.mesh import Delete as MeshDelete
from meshsec.controller.remoteaccess.leases import Lease
from meshsec.controller.resources import FieldError, Kind, Resource, ValidationError, parse_resource
from meshsec.controller.resources.errors import clip
from meshsec.controller.resources.fields import Fields, valid_name
from meshsec.controller.resources.limits import annotation_problems, resource_size_problem
from meshsec.controller.resources.model import LAST_APPLIED_BY, RemoteAccessUser
from meshsec.controller.resources.parse import canonical_kind
from meshsec.controller.service.core import Core
from meshsec.controller.service.secrets import psk_problem
from meshsec.controller.service.state import PSK_SET_AT, StoredDoc, WritePlan
from meshsec.controller.service.status import merged_state
from meshsec.controller.store import Delete, Put, StoreError
from meshsec.v1 import admin_pb2, admin_pb2_grpc, common_pb2

SYSTEM_ANNOTATION_PREFIX = "meshsec.io/"
DEFAULT_PAGE = 500
_YIELD_EVERY = 512  # tunnels computed between returns to the event loop in big listings
# A refused Apply's status travels in trailing metadata, which gRPC caps (8 KiB soft, 16 KiB hard
# by default; past the soft limit calls fail at random). The status message (percent-encoded, up
# to 3 bytes per character) and the serialized ValidationErrors (base64, 4/3) stay well inside it.
_DETAILS_CHARS = 512
_TRAILER_BYTES = 3 * 1024


class _Refused(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def _kind(text: str) -> Kind:
    try:
        return Kind(text)
    except ValueError:
        raise _Refused(
            grpc.StatusCode.INVALID_ARGUMENT, f"kind must be one of {', '.join(k.value for k in Kind)}"
        ) from None


def _rfc3339(now: float) -> str:
    return datetime.datetime.fromtimestamp(now, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _reserved_annotation_errors(
    stored: StoredDoc | None, doc: dict[str, Any], field_manager: str
) -> list[FieldError]:
    """`meshsec.io/*` annotations belong to the controller (enrollment, certificates, PSK epochs):
    a client may send them back unchanged (an exported object re-applied), never set or change
    one; they decide which certificates a Node accepts."""
    current = stored.doc.get("metadata", {}).get("annotations", {}) if stored else {}
    meta = doc["metadata"]
    errors = []
    for key, value in sorted(meta.get("annotations", {}).items()):
        if not key.startswith(SYSTEM_ANNOTATION_PREFIX) or current.get(key) == value:
            continue
        if key == LAST_APPLIED_BY and value == field_manager:
            continue
        errors.append(
            FieldError(
                doc["kind"],
                meta["name"],
                f"metadata.annotations[{key}]",
                f"annotations under {SYSTEM_ANNOTATION_PREFIX} are set by the controller; remove it "
                + (
                    "(this object has none of that name)"
                    if key not in current
                    else "or send the stored value"
                ),
            )
        )
    return errors


def _read_request(
    request: admin_pb2.ApplyRequest,
) -> tuple[list[dict[str, Any]], list[tuple[int, Resource]], list[tuple[int, FieldError]]]:
    """Each resource's document and parsed form, and every problem with its index. Reads only the
    request, so Apply runs it in a worker thread: a 4 MiB request must not stall the event loop."""
    docs: list[dict[str, Any]] = []
    parsed: list[tuple[int, Resource]] = []
    problems: list[tuple[int, FieldError]] = []
    for i, pb in enumerate(request.resources):
        kind, name = pb.kind or "Resource", pb.metadata.name
        doc: dict[str, Any] = {}
        too_big = resource_size_problem(kind, name, pb.ByteSize())
        if too_big is not None:
            problems.append((i, too_big))
        else:
            try:
                doc = resource_to_doc(pb)
            except NonFiniteNumber as exc:
                problems.append(
                    (i, FieldError(kind, name, exc.path, f"must be a finite number, not {exc.value}"))
                )
        docs.append(doc)
        if not doc:
            continue
        found = annotation_problems(kind, name, doc["metadata"].get("annotations", {}))
        try:
            resource = parse_resource(doc)
        except ValidationError as exc:
            found += exc.errors
        if found:
            problems += [(i, e) for e in found]
        else:
            parsed.append((i, resource))
    return docs, parsed, problems


def _validation_status(errors: list[tuple[int, FieldError]]) -> tuple[str, bytes]:
    """The status message and the ValidationErrors trailer of a refused write, within their
    budgets: as many errors as fit, the rest counted in `omitted`."""
    listed = admin_pb2.ValidationErrors()
    size = 0
    for i, e in errors:
        item = admin_pb2.ValidationError(kind=e.kind, name=e.name, index=i, path=e.path, message=e.reason)
        cost = item.ByteSize() + 4  # tag and length prefix
        if size + cost > _TRAILER_BYTES:
            listed.omitted = len(errors) - len(listed.errors)
            break
        listed.errors.append(item)
        size += cost
    first = str(errors[0][1])
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    details = clip(first.encode("ascii", "backslashreplace").decode(), _DETAILS_CHARS - len(more)) + more
    return details, listed.SerializeToString()


def _merge(stored: StoredDoc | None, doc: dict[str, Any], field_manager: str, now: float) -> dict[str, Any]:
    """The request's labels, annotations and spec over the stored server-set fields (the request's
    `meshsec.io/*` annotations, checked equal by `_reserved_annotation_errors`, change nothing)."""
    old_meta: dict[str, Any] = stored.doc.get("metadata", {}) if stored else {}
    annotations = {
        k: v
        for k, v in doc["metadata"].get("annotations", {}).items()
        if not k.startswith(SYSTEM_ANNOTATION_PREFIX)
    }
    annotations.update(
        (k, v) for k, v in old_meta.get("annotations", {}).items() if k.startswith(SYSTEM_ANNOTATION_PREFIX)
    )
    if field_manager:
        annotations[LAST_APPLIED_BY] = field_manager
    spec_changed = stored is None or stored.doc.get("spec") != doc["spec"]
    metadata: dict[str, Any] = {
        "name": doc["metadata"]["name"],
        "labels": doc["metadata"].get("labels", {}),
        "annotations": annotations,
        "uid": old_meta.get("uid") or str(uuid.uuid4()),
        "generation": int(old_meta.get("generation", 0)) + (1 if spec_changed else 0),
        "creationTimestamp": old_meta.get("creationTimestamp") or _rfc3339(now),
    }
    kind = canonical_kind(doc["kind"])  # stored as the API names it, whatever the manifest said
    merged = {"apiVersion": doc["apiVersion"], "kind": kind, "metadata": metadata, "spec": doc["spec"]}
    if stored is not None and stored.doc.get("status"):
        merged["status"] = stored.doc["status"]
    return merged


class _Page:
    """A list page ends at `count` items or before `max_bytes`, but always holds one item."""

    def __init__(self, count: int, max_bytes: int) -> None:
        self._left = count
        self._max_bytes = max_bytes
        self._bytes = 0

    def admits(self, item_bytes: int) -> bool:
        cost = item_bytes + 8  # tag and length prefix
        if self._left == 0 or (self._bytes and self._bytes + cost > self._max_bytes):
            return False
        self._left -= 1
        self._bytes += cost
        return True


@dataclass(slots=True)
class _Planned:
    kind: Kind
    name: str
    action: int
    doc: dict[str, Any]


@dataclass(slots=True)
class _TunnelView:
    tunnel: Tunnel  # from the first end's point of view
    ends: list[tuple[str, common_pb2.PeerKind, str, str]]  # (name, PeerKind, site, endpoint address)


class AdminApi(RemoteAccessRpcs, admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, core: Core, *, local: bool) -> None:
        self._core = core
        self._local = local  # Unix socket: the file's permissions already decided who may call

    async def _admin(self, context: AnyContext) -> str:
        """Who is calling ("local" on the Unix socket, else "admin/<name>"), or abort: on the mTLS
        listener only an admin certificate whose serial is registered and not revoked may call."""
        if self._local:
            return "local"
        caller = caller_of(context)
        if caller is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "an admin certificate is required")
        if caller.kind != "admin":
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, f"{caller.kind} certificates may not administer"
            )
        number = serial_of(caller.certificate_pem)
        if number is None:  # fail closed: the TLS layer did not hand over the certificate
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "the admin certificate could not be read")
        serial = serial_text(number)
        try:
            record = await self._core.admins.lookup(serial)
        except StoreError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"store: {exc}")
        if record is None or record.name != caller.name:
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                f"admin certificate {serial} of {caller.name} is not registered with this controller "
                "(issue one with `meshsec-controller admin issue`)",
            )
        if record.revoked_at is not None:
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                f"admin certificate {serial} of {caller.name} was revoked at {_rfc3339(record.revoked_at)} "
                f"by {record.revoked_by}",
            )
        return f"admin/{caller.name}"

    async def _fail_validation(self, context: AnyContext, errors: list[tuple[int, FieldError]]) -> None:
        details, trailer = _validation_status(errors)
        first = errors[0][1]
        await self._core.events.emit(
            "ValidationFailed",
            first.kind,
            first.name,
            f"{len(errors)} problem(s), first: {first}",
            warning=True,
        )
        context.set_trailing_metadata(((VALIDATION_TRAILER, trailer),))
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, details)

    # --- resources -----------------------------------------------------------------------------

    async def Apply(
        self,
        request: admin_pb2.ApplyRequest,
        context: grpc.aio.ServicerContext[admin_pb2.ApplyRequest, admin_pb2.ApplyResponse],
    ) -> admin_pb2.ApplyResponse:
        await self._admin(context)
        docs, parsed, problems = await asyncio.to_thread(_read_request, request)
        where: dict[tuple[str, str], int] = {}
        for i, resource in parsed:
            where.setdefault((resource.kind.value, resource.metadata.name), i)
        if problems:
            await self._fail_validation(context, problems)
        planned: list[_Planned] = []
        state = self._core.state

        async def build() -> WritePlan:
            planned.clear()
            now = time.time()
            ops: list[Put | Delete] = []
            reserved: list[FieldError] = []
            for i, resource in parsed:
                kind, name = resource.kind, resource.metadata.name
                stored = state.doc(kind, name)
                wanted = request.resources[i].metadata.resource_version
                if wanted and (stored is None or str(stored.mod_revision) != wanted):
                    raise _Refused(
                        grpc.StatusCode.ABORTED,
                        f"{kind.value}/{name} changed since resource_version {wanted}; re-read and retry",
                    )
                reserved += _reserved_annotation_errors(stored, docs[i], request.field_manager)
                merged = _merge(stored, docs[i], request.field_manager, now)
                if stored is None:
                    action = admin_pb2.APPLY_ACTION_CREATED
                elif all(stored.doc.get(k) == merged.get(k) for k in ("spec",)) and all(
                    stored.doc.get("metadata", {}).get(k, {}) == merged["metadata"][k]
                    for k in ("labels", "annotations")
                ):
                    action = admin_pb2.APPLY_ACTION_UNCHANGED
                else:
                    action = admin_pb2.APPLY_ACTION_CONFIGURED
                planned.append(_Planned(kind, name, action, merged))
                if action != admin_pb2.APPLY_ACTION_UNCHANGED:
                    ops.append(Put(state.keys.resource(kind, name), json.dumps(merged).encode()))
                if stored is not None and isinstance(resource, RemoteAccessUser):
                    # Devices dropped from spec.devices: their certificates stay revoked even if
                    # the name comes back (marked in this transaction).
                    removed = _device_names(stored.doc) - {d.name for d in resource.spec.devices}
                    if removed:
                        ops += await self._core.credentials.revoke_ops(name, removed)
            if reserved:
                raise ValidationError(reserved)
            changes: list[Change] = [Upsert(r) for _, r in parsed]
            return WritePlan(changes, [] if request.dry_run else ops)

        try:
            await state.commit(build)
        except _Refused as exc:
            await context.abort(exc.code, str(exc))
        except ValidationError as exc:
            await self._fail_validation(context, [(where.get((e.kind, e.name), 0), e) for e in exc.errors])
        except StoreError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"store: {exc}")
        warnings = [await self._apply_warnings(p.kind, p.doc) for p in planned]
        response = self._apply_response(planned, warnings, request.dry_run)
        notes: list[tuple[str, str, str, str]] = []
        for p in planned:
            if not request.dry_run and p.action != admin_pb2.APPLY_ACTION_UNCHANGED:
                verb = "created" if p.action == admin_pb2.APPLY_ACTION_CREATED else "configured"
                notes.append(
                    ("Applied", p.kind.value, p.name, f"{verb} by {request.field_manager or 'unknown'}")
                )
        await self._core.events.emit_many(notes)
        return response

    def _apply_response(
        self, planned: list[_Planned], warnings: list[list[str]], dry_run: bool
    ) -> admin_pb2.ApplyResponse:
        """Every result's kind, name, action and warnings, and the resources as stored for as many
        results, in order, as the size budget allows. The summaries alone are smaller than the
        request that was accepted, so the response fits in the message size every client takes."""
        state = self._core.state
        response = admin_pb2.ApplyResponse(
            results=[
                admin_pb2.ApplyResult(kind=p.kind.value, name=p.name, action=p.action, warnings=w)  # type: ignore[arg-type]
                for p, w in zip(planned, warnings, strict=True)
            ]
        )
        size = response.ByteSize()
        for p, result in zip(planned, response.results, strict=True):
            stored = state.doc(p.kind, p.name)
            if dry_run or stored is None:
                resource = doc_to_resource(p.doc, stored.mod_revision if stored else 0)
            else:
                resource = doc_to_resource(stored.doc, stored.mod_revision)
            cost = resource.ByteSize() + 8  # its tag and length, and the result's longer prefix
            if size + cost > self._core.settings.max_message_bytes:
                break  # the rest go without: a client re-reads them with Get
            result.resource.CopyFrom(resource)
            size += cost
        return response

    async def Delete(
        self,
        request: admin_pb2.DeleteRequest,
        context: grpc.aio.ServicerContext[admin_pb2.DeleteRequest, admin_pb2.DeleteResponse],
    ) -> admin_pb2.DeleteResponse:
        await self._admin(context)
        state = self._core.state
        before: list[StoredDoc] = []
        released: list[Lease] = []

        async def build() -> WritePlan:
            kind = _kind(request.kind)
            stored = state.doc(kind, request.name)
            if stored is None:
                raise _Refused(grpc.StatusCode.NOT_FOUND, f"{kind.value}/{request.name} not found")
            if request.resource_version and str(stored.mod_revision) != request.resource_version:
                raise _Refused(
                    grpc.StatusCode.ABORTED,
                    f"{kind.value}/{request.name} changed since {request.resource_version}",
                )
            before[:] = [stored]
            ops: list[Put | Delete] = [Delete(state.keys.resource(kind, request.name))]
            if kind is Kind.NODE:
                ops.append(Delete(f"{state.keys.status}{request.name}"))
            if kind is Kind.REMOTE_ACCESS_USER:
                ops += self._core.credentials.forget_ops(request.name)
                ops += await self._core.credentials.revoke_ops(request.name)
                held, lease_ops = await self._core.leases.release_ops(request.name)
                released[:] = held
                ops += lease_ops
            return WritePlan([MeshDelete(kind, request.name)], [] if request.dry_run else ops)

        try:
            await state.commit(build)
        except _Refused as exc:
            await context.abort(exc.code, str(exc))
        except ValidationError as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except StoreError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"store: {exc}")
        if not request.dry_run:
            if request.kind == Kind.NODE.value:
                self._core.status.forget(request.name)
            await self._core.events.emit("Deleted", request.kind, request.name, "deleted")
            # The gateways drop these clients (their certificates are revoked now) but cannot
            # release what the deletion already gave back: the disconnect is told here.
            for lease in released:
                await self._core.events.emit(
                    "RemoteAccessDisconnected",
                    Kind.REMOTE_ACCESS_USER.value,
                    request.name,
                    f"{lease.user} ({lease.device}) left {lease.gateway}: user deleted",
                )
        return admin_pb2.DeleteResponse(resource=doc_to_resource(before[0].doc, before[0].mod_revision))

    async def Get(
        self,
        request: admin_pb2.GetRequest,
        context: grpc.aio.ServicerContext[admin_pb2.GetRequest, admin_pb2.GetResponse],
    ) -> admin_pb2.GetResponse:
        await self._admin(context)
        try:
            kind = _kind(request.kind)
        except _Refused as exc:
            await context.abort(exc.code, str(exc))
        stored = self._core.state.doc(kind, request.name)
        if stored is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"{kind.value}/{request.name} not found")
        return admin_pb2.GetResponse(resource=doc_to_resource(stored.doc, stored.mod_revision))

    async def List(
        self,
        request: admin_pb2.ListRequest,
        context: grpc.aio.ServicerContext[admin_pb2.ListRequest, admin_pb2.ListResponse],
    ) -> admin_pb2.ListResponse:
        await self._admin(context)
        try:
            kind = _kind(request.kind)
            selector = parse_selector(request.label_selector)
        except _Refused as exc:
            await context.abort(exc.code, str(exc))
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        size = request.page_size or DEFAULT_PAGE
        response = admin_pb2.ListResponse()
        page = _Page(size, self._core.settings.max_message_bytes)
        for name, stored in self._core.state.docs_of(kind):
            if request.page_token and name <= request.page_token:
                continue
            if not selector.matches(stored.doc.get("metadata", {}).get("labels", {})):
                continue
            resource = doc_to_resource(stored.doc, stored.mod_revision)
            if not page.admits(resource.ByteSize()):
                response.next_page_token = response.resources[-1].metadata.name
                break
            response.resources.append(resource)
        return response

    # --- tunnels and topology --------------------------------------------------------------------

    def _tunnel_views(self, node: str = "", site: str = "") -> Iterator[_TunnelView]:
        """Each tunnel once, from its first end (lower node name; the node for gateway tunnels)."""
        index = self._core.state.index
        if node:
            candidates = [node] if index.node(node) is not None else []
        elif site:
            candidates = sorted(index.nodes_in_site(site))
        else:
            candidates = index.nodes()
        seen: set[str] = set()
        first_views: dict[str, dict[str, Tunnel]] = {}
        for name in candidates:
            for t in index.desired_tunnels(name):
                if t.id in seen:
                    continue
                seen.add(t.id)
                mine = index.node(name)
                assert mine is not None
                if t.peer_kind is PeerKind.EXTERNAL_GATEWAY:
                    eg = index.external_gateway(t.peer)
                    yield _TunnelView(
                        t,
                        [
                            (
                                name,
                                common_pb2.PEER_KIND_NODE,
                                mine.spec.site,
                                t.local_endpoints[0] if t.local_endpoints else "",
                            ),
                            (
                                t.peer,
                                common_pb2.PEER_KIND_EXTERNAL_GATEWAY,
                                "",
                                str(eg.spec.address) if eg else "",
                            ),
                        ],
                    )
                    continue
                peer = index.node(t.peer)
                peer_site = peer.spec.site if peer else ""
                if name > t.peer:
                    if node or site:
                        views = first_views.setdefault(
                            t.peer, {x.id: x for x in index.desired_tunnels(t.peer)}
                        )
                        t = views.get(t.id, t)
                    else:
                        continue  # listed from the peer's side
                first, second = (t.local_node, t.peer)
                first_site = mine.spec.site if first == name else peer_site
                second_site = peer_site if first == name else mine.spec.site
                yield _TunnelView(
                    t,
                    [
                        (
                            first,
                            common_pb2.PEER_KIND_NODE,
                            first_site,
                            t.local_endpoints[0] if t.local_endpoints else "",
                        ),
                        (
                            second,
                            common_pb2.PEER_KIND_NODE,
                            second_site,
                            t.remote_endpoints[0] if t.remote_endpoints else "",
                        ),
                    ],
                )

    def _info(self, view: _TunnelView, now: float) -> admin_pb2.TunnelInfo:
        status = self._core.status
        ends = []
        states = []
        for name, kind, site, address in view.ends:
            end = admin_pb2.TunnelEnd(
                name=name, kind=kind, site=site, endpoint=common_pb2.Endpoint(address=address)
            )
            if kind == common_pb2.PEER_KIND_NODE:
                report = status.get(name)
                if report is not None:
                    end.reported_at.FromNanoseconds(int(report.reported_at * 1e9))
                    tunnel_status = report.tunnels.get(view.tunnel.id)
                    if tunnel_status is not None:
                        end.status.CopyFrom(tunnel_status)
                        states.append(tunnel_status.state)
                end.stale = status.stale(name, now)
            ends.append(end)
        peer_site = view.ends[1][2]
        return admin_pb2.TunnelInfo(
            tunnel_id=view.tunnel.id,
            policy=view.tunnel.source.partition("/")[2],
            ends=ends,
            state=merged_state(states),  # type: ignore[arg-type]
            desired=desired_tunnel(view.tunnel, peer_site, None, 0),
        )

    async def ListTunnels(
        self,
        request: admin_pb2.ListTunnelsRequest,
        context: grpc.aio.ServicerContext[admin_pb2.ListTunnelsRequest, admin_pb2.ListTunnelsResponse],
    ) -> admin_pb2.ListTunnelsResponse:
        await self._admin(context)
        now = time.time()
        infos = []
        for count, view in enumerate(self._tunnel_views(request.node, request.site)):
            if count % _YIELD_EVERY == _YIELD_EVERY - 1:
                await asyncio.sleep(0)  # a huge listing must not stall agents' streams and leases
            if request.policy and view.tunnel.source.partition("/")[2] != request.policy:
                continue
            if request.page_token and view.tunnel.id <= request.page_token:
                continue
            info = self._info(view, now)
            if request.state and info.state != request.state:
                continue
            infos.append(info)
        infos.sort(key=lambda i: i.tunnel_id)
        response = admin_pb2.ListTunnelsResponse()
        page = _Page(request.page_size or DEFAULT_PAGE, self._core.settings.max_message_bytes)
        for info in infos:
            if not page.admits(info.ByteSize()):
                response.next_page_token = response.tunnels[-1].tunnel_id
                break
            response.tunnels.append(info)
        return response

    async def GetTopology(
        self,
        request: admin_pb2.GetTopologyRequest,
        context: grpc.aio.ServicerContext[admin_pb2.GetTopologyRequest, admin_pb2.Topology],
    ) -> admin_pb2.Topology:
        await self._admin(context)
        index = self._core.state.index
        status = self._core.status
        now = time.time()
        topology = admin_pb2.Topology()
        for s in index.all_sites():
            if request.site and s.metadata.name != request.site:
                continue
            site = admin_pb2.TopologySite(
                name=s.metadata.name,
                prefixes=[str(p) for p in s.spec.prefixes],
                gateways=sorted(index.gateways_of(s.metadata.name)),
            )
            site.labels.update(s.metadata.labels)
            topology.sites.append(site)
        for name in index.nodes():
            n = index.node(name)
            assert n is not None
            if request.site and n.spec.site != request.site:
                continue
            item = admin_pb2.TopologyNode(
                name=name, site=n.spec.site, endpoints=node_endpoints(n), online=not status.stale(name, now)
            )
            report = status.get(name)
            if report is not None:
                item.last_seen.FromNanoseconds(int(report.reported_at * 1e9))
                if report.node is not None:
                    item.dataplane_backend = report.node.dataplane_backend
                    item.agent_version = report.node.facts.agent_version
                    item.status.CopyFrom(report.node)
                if report.sent_at is not None:
                    item.agent_clock.FromNanoseconds(int(report.sent_at * 1e9))
            topology.nodes.append(item)
        for eg in index.all_external_gateways():
            if request.site and request.site not in eg.spec.sites:
                continue
            topology.external_gateways.append(
                admin_pb2.TopologyGateway(
                    name=eg.metadata.name,
                    endpoint=common_pb2.Endpoint(address=str(eg.spec.address)),
                    prefixes=[str(p) for p in eg.spec.prefixes],
                )
            )
        if not request.omit_links:
            for count, view in enumerate(self._tunnel_views(site=request.site)):
                if count % _YIELD_EVERY == _YIELD_EVERY - 1:
                    await asyncio.sleep(0)
                info = self._info(view, now)
                a, b = view.ends
                kind_b = "ExternalGateway" if b[1] == common_pb2.PEER_KIND_EXTERNAL_GATEWAY else "Node"
                topology.links.append(
                    admin_pb2.TopologyLink(
                        tunnel_id=info.tunnel_id,
                        policy=info.policy,
                        a=common_pb2.ObjectRef(kind="Node", name=a[0]),
                        b=common_pb2.ObjectRef(kind=kind_b, name=b[0]),
                        state=info.state,
                    )
                )
        topology.computed_at.FromNanoseconds(time.time_ns())
        return topology

    # --- events ----------------------------------------------------------------------------------

    async def WatchEvents(
        self,
        request: admin_pb2.WatchEventsRequest,
        context: grpc.aio.ServicerContext[admin_pb2.WatchEventsRequest, admin_pb2.Event],
    ) -> AsyncIterator[admin_pb2.Event]:
        await self._admin(context)
        since_time = request.since_time.ToNanoseconds() if request.HasField("since_time") else None
        async for event in self._core.events.watch(
            request.since_sequence, since_time, set(request.kinds), request.name
        ):
            yield event

    # --- bootstrap tokens --------------------------------------------------------------------------

    async def CreateBootstrapToken(
        self,
        request: admin_pb2.CreateBootstrapTokenRequest,
        context: grpc.aio.ServicerContext[
            admin_pb2.CreateBootstrapTokenRequest, admin_pb2.CreateBootstrapTokenResponse
        ],
    ) -> admin_pb2.CreateBootstrapTokenResponse:
        await self._admin(context)
        if not request.site:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "site is required")
        try:
            await self._core.state.caught_up()  # the Site may have been applied on another replica
        except StoreError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"store: {exc}")
        if self._core.state.index.site(request.site) is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"site: unknown Site/{request.site}")
        if request.node_name and not valid_name(request.node_name):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"node_name {request.node_name!r} is not a DNS-1123 name"
            )
        # Checked here: every Node the token enrolls carries these labels and would be refused.
        label_errors: list[FieldError] = []
        Fields({"node_labels": dict(request.node_labels)}, "", label_errors, "BootstrapToken", "").labels(
            "node_labels"
        )
        if label_errors:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "; ".join(map(str, label_errors)))
        token, record = await self._core.tokens.create(
            site=request.site,
            node_name=request.node_name,
            ttl_s=request.ttl_seconds,
            uses=request.uses,
            labels=dict(request.node_labels),
            allow_reenroll=request.allow_reenroll,
            now=time.time(),
        )
        response = admin_pb2.CreateBootstrapTokenResponse(
            token=token.reveal().decode(),
            token_id=record.token_id,
            uses=record.uses,
            ca_cert_sha256=self._core.ca.sha256,
        )
        response.expires_at.FromNanoseconds(int(record.expires_at * 1e9))
        return response

    async def RevokeBootstrapToken(
        self,
        request: admin_pb2.RevokeBootstrapTokenRequest,
        context: grpc.aio.ServicerContext[
            admin_pb2.RevokeBootstrapTokenRequest, admin_pb2.RevokeBootstrapTokenResponse
        ],
    ) -> admin_pb2.RevokeBootstrapTokenResponse:
        await self._admin(context)
        if not request.token_id.isalnum() or not await self._core.tokens.revoke(request.token_id):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no bootstrap token {request.token_id!r}")
        return admin_pb2.RevokeBootstrapTokenResponse()

    # --- secrets -------------------------------------------------------------------------------------

    async def _apply_warnings(self, kind: Kind, doc: dict[str, Any]) -> list[str]:
        """What an accepted resource still lacks to work (the apply itself succeeds). Read from
        the store, not the secrets mirror: a Secret set a moment ago counts."""
        if kind is not Kind.EXTERNAL_GATEWAY:
            return []
        ref = str(doc.get("spec", {}).get("auth", {}).get("pskSecretRef", ""))
        try:
            if not ref or await self._core.state.store.get(self._core.state.keys.secret(ref)) is not None:
                return []
        except StoreError:  # the apply succeeded; the warning is best effort
            return []
        return [missing_psk_warning(ref)]

    def _users_of(self, secret: str) -> list[str]:
        return sorted(
            eg.metadata.name
            for eg in self._core.state.index.all_external_gateways()
            if eg.spec.psk_secret_ref == secret
        )

    async def _write_secret(self, name: str, value: bytes | None, now: float) -> int:
        """Write (None: delete) the secret and touch every gateway that uses it, in one revision,
        so each replica sends those gateways' tunnels again (`MeshState`, PSK_SET_AT)."""
        state = self._core.state
        key = state.keys.secret(name)

        async def build() -> WritePlan:
            ops: list[Put | Delete] = [Put(key, value) if value is not None else Delete(key)]
            for gateway in self._users_of(name):
                stored = state.doc(Kind.EXTERNAL_GATEWAY, gateway)
                if stored is None:
                    continue
                meta = dict(stored.doc.get("metadata", {}))
                meta["annotations"] = {**meta.get("annotations", {}), PSK_SET_AT: repr(now)}
                ops.append(
                    Put(
                        state.keys.resource(Kind.EXTERNAL_GATEWAY, gateway),
                        json.dumps({**stored.doc, "metadata": meta}).encode(),
                    )
                )
            return WritePlan([], ops)

        revision, _ = await state.commit(build)
        return revision

    async def PutSecret(
        self,
        request: admin_pb2.PutSecretRequest,
        context: grpc.aio.ServicerContext[admin_pb2.PutSecretRequest, admin_pb2.PutSecretResponse],
    ) -> admin_pb2.PutSecretResponse:
        await self._admin(context)
        if not valid_name(request.name):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"secret name {request.name!r} is not a DNS-1123 name"
            )
        problem = psk_problem(request.value)
        if problem is not None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"secret {request.name}: {problem}")
        try:
            existed = await self._core.state.store.get(self._core.state.keys.secret(request.name))
            revision = await self._write_secret(request.name, request.value, time.time())
        except StoreError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"store: {exc}")
        await self._core.events.emit("SecretSet", "Secret", request.name, f"secret {request.name} set")
        info = admin_pb2.SecretInfo(
            name=request.name, used_by=self._users_of(request.name), resource_version=str(revision)
        )
        return admin_pb2.PutSecretResponse(secret=info, created=existed is None)

    async def DeleteSecret(
        self,
        request: admin_pb2.DeleteSecretRequest,
        context: grpc.aio.ServicerContext[admin_pb2.DeleteSecretRequest, admin_pb2.DeleteSecretResponse],
    ) -> admin_pb2.DeleteSecretResponse:
        await self._admin(context)
        try:
            if not valid_name(request.name) or (
                await self._core.state.store.get(self._core.state.keys.secret(request.name)) is None
            ):
                await context.abort(grpc.StatusCode.NOT_FOUND, f"secret {request.name!r} not found")
            await self._write_secret(request.name, None, time.time())
        except StoreError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"store: {exc}")
        await self._core.events.emit(
            "SecretDeleted", "Secret", request.name, f"secret {request.name} deleted"
        )
        return admin_pb2.DeleteSecretResponse()

    async def ListSecrets(
        self,
        request: admin_pb2.ListSecretsRequest,
        context: grpc.aio.ServicerContext[admin_pb2.ListSecretsRequest, admin_pb2.ListSecretsResponse],
    ) -> admin_pb2.ListSecretsResponse:
        await self._admin(context)
        prefix = self._core.state.keys.secrets
        try:
            listing = await self._core.state.store.range(prefix)
        except StoreError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"store: {exc}")
        response = admin_pb2.ListSecretsResponse()
        for kv in listing.kvs:  # sorted by key; the values are not read
            name = kv.key.removeprefix(prefix)
            response.secrets.add(
                name=name, used_by=self._users_of(name), resource_version=str(kv.mod_revision)
            )
        return response

    async def GetVersion(
        self,
        request: admin_pb2.GetVersionRequest,
        context: grpc.aio.ServicerContext[admin_pb2.GetVersionRequest, admin_pb2.GetVersionResponse],
    ) -> admin_pb2.GetVersionResponse:
        await self._admin(context)
        return admin_pb2.GetVersionResponse(version=VERSION, replica=self._core.settings.replica)

    # --- admin certificates ------------------------------------------------------------------------

    async def IssueAdminCertificate(
        self,
        request: admin_pb2.IssueAdminCertificateRequest,
        context: grpc.aio.ServicerContext[
            admin_pb2.IssueAdminCertificateRequest, admin_pb2.IssueAdminCertificateResponse
        ],
    ) -> admin_pb2.IssueAdminCertificateResponse:
        issuer = await self._admin(context)
        if not valid_name(request.name):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"admin name {request.name!r} is not a DNS-1123 name"
            )
        try:
            issued, record = await self._core.admins.issue(
                request.name,
                request.csr_pem,
                request.ttl_seconds,
                issuer,
                datetime.datetime.now(datetime.UTC),
            )
        except CsrError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except StoreError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"store: {exc}")
        await self._core.events.emit(
            "AdminCertificateIssued",
            "Admin",
            record.name,
            f"admin certificate {record.serial} for {record.name} issued by {issuer}, "
            f"valid until {_rfc3339(record.not_after)}",
        )
        return admin_pb2.IssueAdminCertificateResponse(
            certificate=_admin_certificate(record),
            certificate_pem=issued.certificate_pem,
            ca_certificate_pem=self._core.ca.certificate_pem,
        )

    async def ListAdminCertificates(
        self,
        request: admin_pb2.ListAdminCertificatesRequest,
        context: grpc.aio.ServicerContext[
            admin_pb2.ListAdminCertificatesRequest, admin_pb2.ListAdminCertificatesResponse
        ],
    ) -> admin_pb2.ListAdminCertificatesResponse:
        await self._admin(context)
        try:
            records = await self._core.admins.all()
        except StoreError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"store: {exc}")
        return admin_pb2.ListAdminCertificatesResponse(certificates=[_admin_certificate(r) for r in records])

    async def RevokeAdminCertificates(
        self,
        request: admin_pb2.RevokeAdminCertificatesRequest,
        context: grpc.aio.ServicerContext[
            admin_pb2.RevokeAdminCertificatesRequest, admin_pb2.RevokeAdminCertificatesResponse
        ],
    ) -> admin_pb2.RevokeAdminCertificatesResponse:
        revoker = await self._admin(context)
        if bool(request.name) == bool(request.serial):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "give exactly one of name and serial")
        serial = request.serial.lower().removeprefix("0x").lstrip("0") or request.serial
        try:
            revoked = await self._core.admins.revoke(
                name=request.name, serial=serial if request.serial else "", by=revoker, now=time.time()
            )
        except StoreError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"store: {exc}")
        if not revoked:
            what = f"serial {request.serial}" if request.serial else f"name {request.name} (unrevoked)"
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no admin certificate with {what}")
        await self._core.events.emit_many(
            [
                (
                    "AdminCertificateRevoked",
                    "Admin",
                    r.name,
                    f"admin certificate {r.serial} of {r.name} revoked by {revoker}",
                )
                for r in revoked
            ]
        )
        return admin_pb2.RevokeAdminCertificatesResponse(revoked=[_admin_certificate(r) for r in revoked])


def _admin_certificate(record: AdminRecord) -> admin_pb2.AdminCertificate:
    pb = admin_pb2.AdminCertificate(
        name=record.name, serial=record.serial, issued_by=record.issued_by, revoked_by=record.revoked_by
    )
    pb.not_before.FromNanoseconds(int(record.not_before * 1e9))
    pb.not_after.FromNanoseconds(int(record.not_after * 1e9))
    if record.revoked_at is not None:
        pb.revoked_at.FromNanoseconds(int(record.revoked_at * 1e9))
    return pb


__all__ = ["VALIDATION_TRAILER", "AdminApi"]


def _device_names(doc: dict[str, Any]) -> set[str]:
    """The device names of a stored RemoteAccessUser document."""
    devices = doc.get("spec", {}).get("devices", [])
    if not isinstance(devices, list):
        return set()
    return {str(d.get("name")) for d in devices if isinstance(d, dict)}
