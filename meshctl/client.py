"""The AdminService client: where the controller is, and gRPC failures turned into meshctl errors."""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc

from meshsec.common.api import MAX_MESSAGE_BYTES, VALIDATION_TRAILER
from meshsec.common.secrets import Secret
from meshsec.meshctl.errors import (
    MeshctlError,
    Problem,
    ServerError,
    UnreachableError,
    UsageError,
    UserError,
    ValidationFailed,
)
from meshsec.v1 import admin_pb2, admin_pb2_grpc, common_pb2

# The controller's default admin socket (meshsec-controller --admin-socket).
DEFAULT_SOCKET = "/run/meshsec/admin.sock"
# `meshctl lab up` runs its controller here; used when no controller runs at the default path.
LAB_SOCKET = "/run/meshsec-lab/admin.sock"
ENV_CONTROLLER = "MESHSEC_CONTROLLER"
START_HINT = (
    "start it with `meshsec-controller --data-dir /var/lib/meshsec` (or `meshctl lab up` for the local lab), "
    f"or point meshctl at it with --controller / {ENV_CONTROLLER}"
)
_USER_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.OUT_OF_RANGE,
}
T = TypeVar("T")
# The controller accepts requests up to this size and keeps every response under it.
CHANNEL_OPTIONS = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
)


@dataclass(frozen=True)
class Target:
    """``unix:/path``, a bare path, or ``host:port`` (mTLS with an admin certificate)."""

    address: str  # what grpc dials
    socket_path: Path | None

    @classmethod
    def parse(cls, raw: str | None) -> Target:
        value = raw or os.environ.get(ENV_CONTROLLER) or default_socket()
        if value.startswith("unix://"):
            path = value[len("unix://") :]
        elif value.startswith("unix:"):
            path = value[len("unix:") :]
        elif value.startswith("/") or value.startswith("."):
            path = value
        else:
            if ":" not in value:
                raise UsageError(f"--controller {value!r}: expected unix:/path/to/admin.sock or host:port")
            return cls(value, None)
        return cls(f"unix:{os.path.abspath(path)}", Path(os.path.abspath(path)))

    def __str__(self) -> str:
        return str(self.socket_path) if self.socket_path is not None else self.address


def default_socket() -> str:
    if not os.path.exists(DEFAULT_SOCKET) and os.path.exists(LAB_SOCKET):
        return LAB_SOCKET
    return DEFAULT_SOCKET


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path
    server_name: str = ""  # the name to check in the serving certificate, when not the address's host

    def credentials(self) -> grpc.ChannelCredentials:
        def read(path: Path, what: str) -> bytes:
            try:
                return path.read_bytes()
            except OSError as exc:
                raise UsageError(f"cannot read the {what} {path}: {exc.strerror or exc}") from None

        return grpc.ssl_channel_credentials(
            root_certificates=read(self.ca, "CA bundle"),
            private_key=read(self.key, "admin key"),
            certificate_chain=read(self.cert, "admin certificate"),
        )


class AdminClient:
    """Blocking AdminService calls with meshctl's error mapping; one channel per client."""

    def __init__(self, target: Target, *, tls: TlsFiles | None = None, timeout: float = 15.0) -> None:
        self.target = target
        self.timeout = timeout
        if target.socket_path is not None:
            self._channel = grpc.insecure_channel(target.address, options=CHANNEL_OPTIONS)
        else:
            if tls is None:
                raise UsageError(
                    f"controller {target.address} is a TCP address: it needs an admin certificate",
                    hint="pass --tls-ca, --tls-cert and --tls-key, use a context (`meshctl config "
                    "set-context`), or the controller's unix socket",
                )
            options: list[tuple[str, int | str]] = [*CHANNEL_OPTIONS]
            if tls.server_name:
                options.append(("grpc.ssl_target_name_override", tls.server_name))
            self._channel = grpc.secure_channel(target.address, tls.credentials(), options=options)
        self.stub = admin_pb2_grpc.AdminServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, what: str, fn: Callable[[], T], labels: Sequence[str] = ()) -> T:
        if self.target.socket_path is not None and not self.target.socket_path.exists():
            raise UnreachableError(
                f"cannot reach the controller: {self.target.socket_path} does not exist", hint=START_HINT
            )
        try:
            return fn()
        except grpc.RpcError as exc:
            raise translate(exc, what, self.target, labels) from None

    # -- resources ----------------------------------------------------------------------------

    def apply(
        self, resources: Sequence[common_pb2.Resource], *, dry_run: bool = False, labels: Sequence[str] = ()
    ) -> admin_pb2.ApplyResponse:
        """``labels[i]`` names where resource i came from, to locate the controller's complaints."""
        request = admin_pb2.ApplyRequest(resources=resources, dry_run=dry_run, field_manager="meshctl")
        return self._call("apply", lambda: self.stub.Apply(request, timeout=self.timeout), labels)

    def delete(self, kind: str, name: str) -> admin_pb2.DeleteResponse:
        request = admin_pb2.DeleteRequest(kind=kind, name=name)
        return self._call(f"delete {kind}/{name}", lambda: self.stub.Delete(request, timeout=self.timeout))

    def get(self, kind: str, name: str) -> common_pb2.Resource:
        request = admin_pb2.GetRequest(kind=kind, name=name)
        return self._call(f"get {kind}/{name}", lambda: self.stub.Get(request, timeout=self.timeout)).resource

    def list_resources(self, kind: str, selector: str = "") -> list[common_pb2.Resource]:
        found: list[common_pb2.Resource] = []
        token = ""
        while True:
            request = admin_pb2.ListRequest(kind=kind, label_selector=selector, page_token=token)
            page = self._call(
                f"list {kind}", functools.partial(self.stub.List, request, timeout=self.timeout)
            )
            found.extend(page.resources)
            token = page.next_page_token
            if not token:
                return found

    def tunnels(self, request: admin_pb2.ListTunnelsRequest | None = None) -> list[admin_pb2.TunnelInfo]:
        base = request or admin_pb2.ListTunnelsRequest()
        found: list[admin_pb2.TunnelInfo] = []
        token = ""
        while True:
            page_request = admin_pb2.ListTunnelsRequest()
            page_request.CopyFrom(base)
            page_request.page_token = token
            page = self._call(
                "list tunnels",
                functools.partial(self.stub.ListTunnels, page_request, timeout=self.timeout),
            )
            found.extend(page.tunnels)
            token = page.next_page_token
            if not token:
                return found

    def topology(self, site: str = "") -> admin_pb2.Topology:
        request = admin_pb2.GetTopologyRequest(site=site)
        return self._call("get topology", lambda: self.stub.GetTopology(request, timeout=self.timeout))

    def create_token(
        self, request: admin_pb2.CreateBootstrapTokenRequest
    ) -> admin_pb2.CreateBootstrapTokenResponse:
        return self._call(
            "create bootstrap token", lambda: self.stub.CreateBootstrapToken(request, timeout=self.timeout)
        )

    def revoke_token(self, token_id: str) -> None:
        request = admin_pb2.RevokeBootstrapTokenRequest(token_id=token_id)
        self._call("revoke token", lambda: self.stub.RevokeBootstrapToken(request, timeout=self.timeout))

    def version(self) -> admin_pb2.GetVersionResponse:
        request = admin_pb2.GetVersionRequest()
        return self._call("get version", lambda: self.stub.GetVersion(request, timeout=self.timeout))

    # -- secrets (values go out, never come back) -------------------------------------------------

    def put_secret(self, name: str, value: Secret) -> admin_pb2.PutSecretResponse:
        request = admin_pb2.PutSecretRequest(name=name, value=value.reveal())
        return self._call("set secret", lambda: self.stub.PutSecret(request, timeout=self.timeout))

    def delete_secret(self, name: str) -> None:
        request = admin_pb2.DeleteSecretRequest(name=name)
        self._call("delete secret", lambda: self.stub.DeleteSecret(request, timeout=self.timeout))

    def list_secrets(self) -> list[admin_pb2.SecretInfo]:
        request = admin_pb2.ListSecretsRequest()
        response = self._call("list secrets", lambda: self.stub.ListSecrets(request, timeout=self.timeout))
        return list(response.secrets)

    # -- remote access -------------------------------------------------------------------------------

    def set_remote_access_password(
        self, user: str, password: str
    ) -> admin_pb2.SetRemoteAccessPasswordResponse:
        request = admin_pb2.SetRemoteAccessPasswordRequest(user=user, password=password)
        return self._call(
            "set password", lambda: self.stub.SetRemoteAccessPassword(request, timeout=self.timeout)
        )

    def leases(self, user: str = "") -> list[admin_pb2.RemoteAccessLease]:
        found: list[admin_pb2.RemoteAccessLease] = []
        token = ""
        while True:
            request = admin_pb2.ListRemoteAccessLeasesRequest(user=user, page_token=token)
            page = self._call(
                "list leases",
                functools.partial(self.stub.ListRemoteAccessLeases, request, timeout=self.timeout),
            )
            found.extend(page.leases)
            token = page.next_page_token
            if not token:
                return found

    def issue_device_certificate(
        self, user: str, device: str, csr_pem: str, ttl_seconds: int = 0
    ) -> admin_pb2.IssueDeviceCertificateResponse:
        request = admin_pb2.IssueDeviceCertificateRequest(
            user=user, device=device, csr_pem=csr_pem, ttl_seconds=ttl_seconds
        )
        return self._call(
            "issue device certificate",
            lambda: self.stub.IssueDeviceCertificate(request, timeout=self.timeout),
        )

    def remote_access_profile(self, user: str, device: str) -> admin_pb2.RemoteAccessProfile:
        request = admin_pb2.GetRemoteAccessProfileRequest(user=user, device=device)
        return self._call(
            "get remote-access profile",
            lambda: self.stub.GetRemoteAccessProfile(request, timeout=self.timeout),
        )

    # -- admin certificates (the key stays here; only its CSR goes out) -------------------------------

    def issue_admin(
        self, name: str, csr_pem: str, ttl_seconds: int = 0
    ) -> admin_pb2.IssueAdminCertificateResponse:
        request = admin_pb2.IssueAdminCertificateRequest(name=name, csr_pem=csr_pem, ttl_seconds=ttl_seconds)
        return self._call(
            "issue admin certificate", lambda: self.stub.IssueAdminCertificate(request, timeout=self.timeout)
        )

    def list_admins(self) -> list[admin_pb2.AdminCertificate]:
        request = admin_pb2.ListAdminCertificatesRequest()
        response = self._call(
            "list admin certificates", lambda: self.stub.ListAdminCertificates(request, timeout=self.timeout)
        )
        return list(response.certificates)

    def revoke_admins(self, *, name: str = "", serial: str = "") -> list[admin_pb2.AdminCertificate]:
        request = admin_pb2.RevokeAdminCertificatesRequest(name=name, serial=serial)
        response = self._call(
            "revoke admin certificate",
            lambda: self.stub.RevokeAdminCertificates(request, timeout=self.timeout),
        )
        return list(response.revoked)

    # -- events -------------------------------------------------------------------------------

    def events(
        self, request: admin_pb2.WatchEventsRequest, *, follow: bool, quiet_after: float = 0.5
    ) -> Iterator[admin_pb2.Event]:
        """Retained events (and, with ``follow``, live ones until interrupted).

        The stream never ends by itself: without ``follow`` it is cancelled once nothing arrived
        for ``quiet_after`` seconds, which is when the replay of retained events is over.
        """
        call = self._call("watch events", lambda: self.stub.WatchEvents(request))
        timer: threading.Timer | None = None

        def rearm() -> None:
            nonlocal timer
            if timer is not None:
                timer.cancel()
            if not follow:
                timer = threading.Timer(quiet_after, _cancel, (call,))
                timer.daemon = True
                timer.start()

        rearm()
        try:
            for event in call:
                rearm()
                yield event
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                raise translate(exc, "watch events", self.target) from None
        finally:
            if timer is not None:
                timer.cancel()
            _cancel(call)


def _cancel(call: object) -> None:
    cancel = getattr(call, "cancel", None)  # grpc's stream object is untyped
    if callable(cancel):
        cancel()


def translate(exc: grpc.RpcError, what: str, target: Target, labels: Sequence[str] = ()) -> MeshctlError:
    code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
    details = (exc.details() if isinstance(exc, grpc.Call) else None) or str(exc)
    if code == grpc.StatusCode.UNAVAILABLE:
        return UnreachableError(f"cannot reach the controller at {target}: {details}", hint=START_HINT)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return UnreachableError(f"{what}: the controller at {target} did not answer in time", hint=START_HINT)
    if code == grpc.StatusCode.INVALID_ARGUMENT and isinstance(exc, grpc.Call):
        problems = validation_problems(exc.trailing_metadata(), labels)
        if problems:
            return ValidationFailed(problems)
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return UserError(
            f"{what}: {code.name}: {details}",
            hint="get a new admin certificate: `meshsec-controller admin issue` on the controller host, "
            "or `meshctl admin issue` by another admin",
        )
    if code in _USER_CODES:
        return UserError(f"{what}: {details}")
    return ServerError(f"{what}: the controller failed ({code.name}): {details}")


def validation_problems(metadata: object, labels: Sequence[str] = ()) -> list[Problem]:
    """The controller's ValidationErrors trailer, each located by ``labels[index]`` when known."""
    pairs = metadata if isinstance(metadata, (list, tuple)) else ()
    raw = [value for key, value in pairs if key == VALIDATION_TRAILER]
    if not raw or not isinstance(raw[0], bytes):
        return []
    problems = []
    listed = admin_pb2.ValidationErrors.FromString(raw[0])
    for e in listed.errors:
        if e.index < len(labels):
            where = labels[e.index]
        else:
            where = f"{e.kind}/{e.name}" if e.name else f"{e.kind} (resource {e.index + 1})"
        problems.append(Problem(where, e.path, e.message))
    if problems and listed.omitted:
        problems.append(Problem("...", "", f"{listed.omitted} more problem(s) not listed"))
    return problems
