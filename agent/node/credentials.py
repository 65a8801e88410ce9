"""Node credentials: a key generated here (it never leaves the node), a CSR for it, and the
certificate the controller issued. Enrollment uses the bootstrap listener with a token; renewal
the mTLS listener with the current certificate, after two thirds of its lifetime."""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass

import grpc
from cryptography import x509

from meshsec.agent.node.statedir import CA, CERT, KEY, StateDir
from meshsec.common.pki import ca_sha256, make_csr, new_key
from meshsec.common.secrets import Secret
from meshsec.v1 import agent_pb2, agent_pb2_grpc

log = logging.getLogger(__name__)
CALL_TIMEOUT = 15.0
RENEW_FRACTION = 2 / 3


class EnrollmentError(Exception):
    """Enrollment failed for a reason retrying will not fix (bad token, name taken, bad CA pin)."""


@dataclass(frozen=True)
class Credentials:
    key_pem: Secret
    certificate_pem: bytes
    ca_pem: bytes
    received: datetime.datetime  # when the certificate arrived (the file's mtime after a restart)

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.certificate_pem)

    def renew_at(self) -> datetime.datetime:
        """Two thirds into the lifetime, counted from issuance: the controller backdates
        not_before for clock skew, so a short-lived certificate counted from not_before would
        be due for renewal the moment it arrives."""
        cert = self.certificate
        start = max(cert.not_valid_before_utc, min(self.received, cert.not_valid_after_utc))
        return start + (cert.not_valid_after_utc - start) * RENEW_FRACTION

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_pem,
            private_key=self.key_pem.reveal(),
            certificate_chain=self.certificate_pem,
        )


def load(state: StateDir) -> Credentials | None:
    key, cert, ca = state.key(), state.read(CERT), state.read(CA)
    if key is None or cert is None or ca is None:
        return None
    mtime = state.file(CERT).stat().st_mtime
    return Credentials(key, cert, ca, datetime.datetime.fromtimestamp(mtime, datetime.UTC))


def store(state: StateDir, key: Secret, response: agent_pb2.EnrollResponse) -> Credentials:
    # The key goes last: `load` needs all three, and a crash in between leaves an
    # un-enrolled directory that enrolls again rather than a key that matches no certificate.
    state.write(CERT, response.certificate_pem.encode())
    state.write(CA, response.ca_bundle_pem.encode())
    state.write(KEY, key.reveal())
    return Credentials(
        key,
        response.certificate_pem.encode(),
        response.ca_bundle_pem.encode(),
        datetime.datetime.now(datetime.UTC),
    )


async def enroll(
    state: StateDir,
    bootstrap: str,
    node: str,
    token: Secret,
    ca_pem: bytes,
    facts: agent_pb2.NodeFacts,
    *,
    pin: str | None = None,
    server_name: str | None = None,
) -> Credentials:
    """Enrolls over the bootstrap listener, verified against `ca_pem` (and `pin` if given)."""
    if pin is not None and ca_sha256(ca_pem) != pin.lower():
        raise EnrollmentError(f"the CA file does not match the pinned SHA-256 {pin}")
    key = new_key()
    options: list[tuple[str, str | int]] = [("grpc.enable_http_proxy", 0)]
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    creds = grpc.ssl_channel_credentials(root_certificates=ca_pem)
    async with grpc.aio.secure_channel(bootstrap, creds, options=options) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        request = agent_pb2.EnrollRequest(
            bootstrap_token=token.reveal().decode(), node_name=node, csr_pem=make_csr(key, node), facts=facts
        )
        try:
            response = await stub.Enroll(request, timeout=CALL_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (
                grpc.StatusCode.UNAUTHENTICATED,
                grpc.StatusCode.PERMISSION_DENIED,
                grpc.StatusCode.INVALID_ARGUMENT,
                grpc.StatusCode.ALREADY_EXISTS,
            ):
                raise EnrollmentError(f"enrollment refused: {exc.code().name}: {exc.details()}") from exc
            raise
    log.info("enrolled as %s; certificate valid until %s", node, response.not_after.ToJsonString())
    return store(state, key, response)


async def renew(state: StateDir, channel: grpc.aio.Channel, node: str) -> Credentials:
    """A fresh key and certificate over mTLS; the old ones stay valid until they expire."""
    key = new_key()
    stub = agent_pb2_grpc.AgentServiceStub(channel)
    response = await stub.RenewCertificate(
        agent_pb2.RenewCertificateRequest(csr_pem=make_csr(key, node)), timeout=CALL_TIMEOUT
    )
    log.info("certificate renewed; valid until %s", response.not_after.ToJsonString())
    return store(state, key, response)
