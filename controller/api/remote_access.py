"""AdminService's remote-access RPCs: passwords (stored as NT hashes), leases, device certificates.

A mixin of `AdminApi`, which supplies `_core` and `_admin` (the caller check every RPC makes).
"""

from __future__ import annotations

import abc
import datetime
import time

import grpc

from meshsec.controller.api.identity import AnyContext
from meshsec.controller.ca import CsrError
from meshsec.controller.remoteaccess.credentials import password_problem
from meshsec.controller.resources.model import CERTIFICATE_METHODS, RemoteAccessUser, RemoteAuthMethod
from meshsec.controller.service.core import Core
from meshsec.controller.store import StoreError
from meshsec.v1 import admin_pb2

DEFAULT_LEASE_PAGE = 500
MAX_LEASE_PAGE = 5000


class RemoteAccessRpcs(abc.ABC):
    _core: Core

    @abc.abstractmethod
    async def _admin(self, context: AnyContext) -> str: ...

    async def _user(self, context: AnyContext, name: str) -> RemoteAccessUser:
        try:
            await self._core.state.caught_up()
        except StoreError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"store: {exc}")
        user = self._core.state.index.user(name)
        if user is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"RemoteAccessUser/{name} not found")
        assert user is not None
        return user

    async def SetRemoteAccessPassword(
        self,
        request: admin_pb2.SetRemoteAccessPasswordRequest,
        context: grpc.aio.ServicerContext[
            admin_pb2.SetRemoteAccessPasswordRequest, admin_pb2.SetRemoteAccessPasswordResponse
        ],
    ) -> admin_pb2.SetRemoteAccessPasswordResponse:
        caller = await self._admin(context)
        user = await self._user(context, request.user)
        if user.spec.auth_method is not RemoteAuthMethod.EAP_MSCHAPV2:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"RemoteAccessUser/{request.user} authenticates with {user.spec.auth_method.value}; "
                "only eap-mschapv2 users have a password",
            )
        problem = password_problem(request.password)
        if problem is not None:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"RemoteAccessUser/{request.user}: {problem}"
            )
        try:
            created = await self._core.credentials.set_password(request.user, request.password, time.time())
        except StoreError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"store: {exc}")
        await self._core.events.emit(
            "PasswordSet", user.kind.value, request.user, f"password of {request.user} set by {caller}"
        )
        return admin_pb2.SetRemoteAccessPasswordResponse(created=created)

    async def ListRemoteAccessLeases(
        self,
        request: admin_pb2.ListRemoteAccessLeasesRequest,
        context: grpc.aio.ServicerContext[
            admin_pb2.ListRemoteAccessLeasesRequest, admin_pb2.ListRemoteAccessLeasesResponse
        ],
    ) -> admin_pb2.ListRemoteAccessLeasesResponse:
        await self._admin(context)
        size = min(request.page_size or DEFAULT_LEASE_PAGE, MAX_LEASE_PAGE)
        try:
            leases = await self._core.leases.leases(request.user)
        except StoreError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"store: {exc}")
        # A token is the last "user/device" of the previous page: the listing is ordered by it.
        after = [x for x in leases if f"{x.user}/{x.device}" > request.page_token]
        page, rest = after[:size], after[size:]
        response = admin_pb2.ListRemoteAccessLeasesResponse()
        if rest:
            response.next_page_token = f"{page[-1].user}/{page[-1].device}"
        for lease in page:
            pb = response.leases.add(
                pool=lease.pool,
                user=lease.user,
                device=lease.device,
                addresses=[str(a) for a in lease.addresses],
                gateway=lease.gateway,
            )
            pb.connected_since.FromNanoseconds(int(lease.connected_since * 1e9))
            self._add_traffic(pb)
        return response

    def _add_traffic(self, lease: admin_pb2.RemoteAccessLease) -> None:
        """The lease's bytes from its gateway's last status report (only the gateway that holds
        the lease speaks for it: a report of another node naming the same client is ignored)."""
        report = self._core.status.get(lease.gateway)
        traffic = report.clients.get((lease.user, lease.device)) if report is not None else None
        if report is None or traffic is None:
            return
        lease.bytes_in, lease.bytes_out = traffic.bytes_in, traffic.bytes_out
        lease.packets_in, lease.packets_out = traffic.packets_in, traffic.packets_out
        lease.traffic_at.FromNanoseconds(int(report.reported_at * 1e9))

    async def IssueDeviceCertificate(
        self,
        request: admin_pb2.IssueDeviceCertificateRequest,
        context: grpc.aio.ServicerContext[
            admin_pb2.IssueDeviceCertificateRequest, admin_pb2.IssueDeviceCertificateResponse
        ],
    ) -> admin_pb2.IssueDeviceCertificateResponse:
        caller = await self._admin(context)
        user = await self._user(context, request.user)
        if user.spec.auth_method not in CERTIFICATE_METHODS:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"RemoteAccessUser/{request.user} authenticates with {user.spec.auth_method.value}; "
                "device certificates are for certificate and eap-tls users",
            )
        if request.device not in {d.name for d in user.spec.devices}:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"RemoteAccessUser/{request.user} lists no device {request.device!r} in spec.devices",
            )
        try:
            issued = await self._core.credentials.issue_device_certificate(
                request.user,
                request.device,
                user.spec.identity,
                request.csr_pem,
                request.ttl_seconds,
                datetime.datetime.now(datetime.UTC),
            )
        except CsrError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except StoreError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"store: {exc}")
        serial = format(issued.serial, "x")
        await self._core.events.emit(
            "DeviceCertificateIssued",
            user.kind.value,
            request.user,
            f"certificate {serial} for device {request.device} of {request.user} issued by {caller}",
        )
        return admin_pb2.IssueDeviceCertificateResponse(
            certificate_pem=issued.certificate_pem,
            ca_certificate_pem=self._core.ca.certificate_pem,
            serial=serial,
        )

    async def GetRemoteAccessProfile(
        self,
        request: admin_pb2.GetRemoteAccessProfileRequest,
        context: grpc.aio.ServicerContext[
            admin_pb2.GetRemoteAccessProfileRequest, admin_pb2.RemoteAccessProfile
        ],
    ) -> admin_pb2.RemoteAccessProfile:
        await self._admin(context)
        user = await self._user(context, request.user)
        device = next((d for d in user.spec.devices if d.name == request.device), None)
        if device is None:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"RemoteAccessUser/{request.user} lists no device {request.device!r} in spec.devices",
            )
        assert device is not None
        index = self._core.state.index
        pool = index.pool(user.spec.pool)
        assert pool is not None  # validation keeps a user's pool in existence
        spec = pool.spec
        profile = admin_pb2.RemoteAccessProfile(
            pool=pool.metadata.name,
            identity=user.spec.identity,
            auth_method=user.spec.auth_method.value,
            platform=device.platform.value,
            ike_proposals=list(spec.crypto.ike_proposals),
            esp_proposals=list(spec.crypto.esp_proposals),
            ike_lifetime_seconds=spec.crypto.ike_lifetime_s,
            child_lifetime_seconds=spec.crypto.child_lifetime_s,
            routes=[str(p) for p in spec.routes.selectors()],
            dns=[str(a) for a in spec.dns],
            ca_certificate_pem=self._core.ca.certificate_pem,
        )
        for node in sorted(index.all_nodes(), key=lambda n: n.metadata.name):
            if spec.gateways.matches(node.metadata.labels):
                endpoints = node.spec.endpoints
                profile.gateways.add(
                    name=node.metadata.name,
                    addresses=[str(a) for a in (*endpoints.public, *endpoints.private)],
                    ike_id=node.spec.identity.ike_id,
                )
        return profile
