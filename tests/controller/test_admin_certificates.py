"""Admin certificates: issued from a CSR over the admin socket, accepted on the mTLS listener only
while registered, revoked by name or serial for every replica at once (the registration is in the
store), and collected by the leader once expired."""

from __future__ import annotations

import datetime
import time
from pathlib import Path

import grpc
import pytest

from meshsec.common.pki import make_csr, new_key
from meshsec.common.secrets import Secret
from meshsec.controller.ca import load_csr
from meshsec.controller.server import Controller
from meshsec.controller.store import EmbeddedStore
from meshsec.v1 import admin_pb2
from tests.controller.ctl_harness import (
    CALL_TIMEOUT,
    admin_channel,
    admin_stub,
    ca_pem,
    core_of,
    start_controller,
)

pytestmark = pytest.mark.timeout(60)


async def _issue(controller: Controller, name: str) -> tuple[Secret, admin_pb2.IssueAdminCertificateResponse]:
    key = new_key()
    async with admin_channel(controller) as channel:
        response = await admin_stub(channel).IssueAdminCertificate(
            admin_pb2.IssueAdminCertificateRequest(name=name, csr_pem=make_csr(key, name)),
            timeout=CALL_TIMEOUT,
        )
    return key, response


async def _list_sites(controller: Controller, key: Secret, cert_pem: str) -> tuple[grpc.StatusCode, str]:
    """AdminService.List over mTLS with this certificate: the status code and its details."""
    creds = grpc.ssl_channel_credentials(
        root_certificates=ca_pem(controller), private_key=key.reveal(), certificate_chain=cert_pem.encode()
    )
    async with grpc.aio.secure_channel(f"127.0.0.1:{controller.mtls_port}", creds) as channel:
        try:
            await admin_stub(channel).List(admin_pb2.ListRequest(kind="Site"), timeout=CALL_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


async def test_issued_certificate_works_until_revoked_on_every_replica(tmp_path: Path) -> None:
    store = await EmbeddedStore.open(tmp_path / "store.log")
    a = await start_controller(store, tmp_path / "a", replica="ctl-a")
    b = await start_controller(store, tmp_path / "b", replica="ctl-b")
    try:
        key, issued = await _issue(a, "alice")
        assert issued.ca_certificate_pem == ca_pem(a).decode()
        assert issued.certificate.name == "alice" and issued.certificate.issued_by == "local"
        for replica in (a, b):
            assert await _list_sites(replica, key, issued.certificate_pem) == (grpc.StatusCode.OK, "")
        async with admin_channel(b) as channel:
            listed = await admin_stub(channel).ListAdminCertificates(
                admin_pb2.ListAdminCertificatesRequest(), timeout=CALL_TIMEOUT
            )
            assert [(c.name, c.serial) for c in listed.certificates] == [("alice", issued.certificate.serial)]
            revoked = await admin_stub(channel).RevokeAdminCertificates(
                admin_pb2.RevokeAdminCertificatesRequest(name="alice"), timeout=CALL_TIMEOUT
            )
        assert [c.serial for c in revoked.revoked] == [issued.certificate.serial]
        for replica in (a, b):
            code, details = await _list_sites(replica, key, issued.certificate_pem)
            assert code == grpc.StatusCode.UNAUTHENTICATED
            assert f"admin certificate {issued.certificate.serial} of alice was revoked" in details
            assert "by local" in details
    finally:
        await b.stop()
        await a.stop()
        await store.close()


async def test_an_admin_may_issue_and_revoke_by_serial_over_mtls(tmp_path: Path) -> None:
    store = await EmbeddedStore.open(tmp_path / "store.log")
    ctl = await start_controller(store, tmp_path / "a")
    try:
        key, alice = await _issue(ctl, "alice")
        creds = grpc.ssl_channel_credentials(
            root_certificates=ca_pem(ctl),
            private_key=key.reveal(),
            certificate_chain=alice.certificate_pem.encode(),
        )
        bob_key = new_key()
        async with grpc.aio.secure_channel(f"127.0.0.1:{ctl.mtls_port}", creds) as channel:
            bob = await admin_stub(channel).IssueAdminCertificate(
                admin_pb2.IssueAdminCertificateRequest(name="bob", csr_pem=make_csr(bob_key, "bob")),
                timeout=CALL_TIMEOUT,
            )
            assert bob.certificate.issued_by == "admin/alice"
            with pytest.raises(grpc.aio.AioRpcError) as wrong:
                await admin_stub(channel).IssueAdminCertificate(
                    admin_pb2.IssueAdminCertificateRequest(name="carol", csr_pem=make_csr(bob_key, "bob")),
                    timeout=CALL_TIMEOUT,
                )
            assert wrong.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "CN=carol" in (wrong.value.details() or "")
            await admin_stub(channel).RevokeAdminCertificates(
                admin_pb2.RevokeAdminCertificatesRequest(serial=bob.certificate.serial), timeout=CALL_TIMEOUT
            )
        code, details = await _list_sites(ctl, bob_key, bob.certificate_pem)
        assert code == grpc.StatusCode.UNAUTHENTICATED and "by admin/alice" in details
        assert await _list_sites(ctl, key, alice.certificate_pem) == (grpc.StatusCode.OK, "")
    finally:
        await ctl.stop()
        await store.close()


async def test_a_certificate_the_ca_signed_without_registration_is_refused(tmp_path: Path) -> None:
    store = await EmbeddedStore.open(tmp_path / "store.log")
    ctl = await start_controller(store, tmp_path / "a")
    try:
        key = new_key()
        csr = load_csr(make_csr(key, "mallory"), "mallory")
        now = datetime.datetime.now(datetime.UTC)
        stray = core_of(ctl).ca.sign_admin(csr, "mallory", datetime.timedelta(hours=1), now)
        code, details = await _list_sites(ctl, key, stray.certificate_pem)
        assert code == grpc.StatusCode.UNAUTHENTICATED and "not registered" in details
    finally:
        await ctl.stop()
        await store.close()


async def test_expired_registrations_are_collected(tmp_path: Path) -> None:
    store = await EmbeddedStore.open(tmp_path / "store.log")
    ctl = await start_controller(store, tmp_path / "a")
    try:
        admins = core_of(ctl).admins
        key = new_key()
        _, record = await admins.issue(
            "alice", make_csr(key, "alice"), 60, "test", datetime.datetime.now(datetime.UTC)
        )
        assert await admins.collect_garbage(time.time()) == 0
        assert await admins.collect_garbage(record.not_after + 1) == 1
        assert await admins.all() == []
    finally:
        await ctl.stop()
        await store.close()
