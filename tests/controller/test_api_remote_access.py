"""AdminService remote-access RPCs on a running controller: passwords are kept as NT hashes only,
device certificates are issued from CSRs and are no API identity, leases are listed, and
deleting a user takes its password and leases with it."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509

from meshsec.common.md4 import nt_password_hash
from meshsec.common.pki import make_csr, new_key
from meshsec.controller.resources import parse_resource
from meshsec.controller.resources.model import RemoteAccessPool
from meshsec.controller.server import Controller
from meshsec.controller.service.status import NodeReport
from meshsec.v1 import admin_pb2, agent_pb2
from tests.controller.ctl_harness import (
    CALL_TIMEOUT,
    admin_channel,
    admin_stub,
    apply,
    ca_pem,
    core_of,
    retained_events,
    running_controller,
)
from tests.controller.test_mesh_support import site
from tests.controller.test_remote_access_resources import pool, user

pytestmark = pytest.mark.timeout(60)

PASSWORD = "hunter2-but-longer"


@pytest.fixture
async def ctl(tmp_path: Path) -> AsyncIterator[Controller]:
    async with running_controller(
        tmp_path,
        site("dc1", ["198.19.1.0/24"]),
        pool(auth={"methods": ["certificate", "eap-mschapv2"]}),
        user("alice"),  # eap-mschapv2, device phone
        user("bob", auth={"method": "certificate"}, devices=[{"name": "laptop", "platform": "linux"}]),
    ) as controller:
        yield controller


async def _error(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    return info.value


async def test_password_is_stored_as_its_nt_hash_only(ctl: Controller) -> None:
    core = core_of(ctl)
    async with admin_channel(ctl) as channel:
        admin = admin_stub(channel)
        set_ = await admin.SetRemoteAccessPassword(
            admin_pb2.SetRemoteAccessPasswordRequest(user="alice", password=PASSWORD), timeout=CALL_TIMEOUT
        )
        assert set_.created
        again = await admin.SetRemoteAccessPassword(
            admin_pb2.SetRemoteAccessPasswordRequest(user="alice", password=PASSWORD + "!"),
            timeout=CALL_TIMEOUT,
        )
        assert not again.created
        short = await _error(
            admin.SetRemoteAccessPassword(
                admin_pb2.SetRemoteAccessPasswordRequest(user="alice", password="short"), timeout=CALL_TIMEOUT
            )
        )
        assert short.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert short.details() == "RemoteAccessUser/alice: a password must be at least 8 characters (got 5)"
        wrong = await _error(
            admin.SetRemoteAccessPassword(
                admin_pb2.SetRemoteAccessPasswordRequest(user="bob", password=PASSWORD), timeout=CALL_TIMEOUT
            )
        )
        assert wrong.code() is grpc.StatusCode.FAILED_PRECONDITION
        missing = await _error(
            admin.SetRemoteAccessPassword(
                admin_pb2.SetRemoteAccessPasswordRequest(user="carol", password=PASSWORD),
                timeout=CALL_TIMEOUT,
            )
        )
        assert missing.code() is grpc.StatusCode.NOT_FOUND
    stored = await core.state.store.range(core.state.keys.prefix)
    everything = b"".join(kv.value for kv in stored.kvs)
    assert PASSWORD.encode() not in everything and PASSWORD.encode("utf-16-le") not in everything
    nt = await core.credentials.nt_hash("alice")
    assert nt is not None and nt.reveal() == nt_password_hash(PASSWORD + "!")
    events = [e for e in await retained_events(ctl) if e.reason == "PasswordSet"]
    assert [e.message for e in events] == ["password of alice set by local"] * 2
    assert all(PASSWORD not in e.message for e in events)


async def test_device_certificates_name_the_identity_and_are_no_api_caller(ctl: Controller) -> None:
    key = new_key()
    async with admin_channel(ctl) as channel:
        admin = admin_stub(channel)
        issued = await admin.IssueDeviceCertificate(
            admin_pb2.IssueDeviceCertificateRequest(
                user="bob", device="laptop", csr_pem=make_csr(key, "laptop.bob")
            ),
            timeout=CALL_TIMEOUT,
        )
        cert = x509.load_pem_x509_certificate(issued.certificate_pem.encode())
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert sans.get_values_for_type(x509.RFC822Name) == ["bob@example.test"]
        assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [
            "meshsec://remote-access/bob/laptop"
        ]
        assert format(cert.serial_number, "x") == issued.serial
        assert issued.ca_certificate_pem.encode() == ca_pem(ctl)

        def issue(user: str, device: str, cn: str) -> admin_pb2.IssueDeviceCertificateRequest:
            return admin_pb2.IssueDeviceCertificateRequest(
                user=user, device=device, csr_pem=make_csr(key, cn)
            )

        for request, code in [
            (issue("bob", "phone", "phone.bob"), grpc.StatusCode.FAILED_PRECONDITION),  # not in spec.devices
            (
                issue("alice", "phone", "phone.alice"),
                grpc.StatusCode.FAILED_PRECONDITION,
            ),  # eap-mschapv2 user
            (issue("bob", "laptop", "laptop.eve"), grpc.StatusCode.INVALID_ARGUMENT),  # CN is <device>.<user>
        ]:
            assert (await _error(admin.IssueDeviceCertificate(request, timeout=CALL_TIMEOUT))).code() is code
    # The same CA signs admin certificates, but a device certificate opens no admin session.
    creds = grpc.ssl_channel_credentials(
        root_certificates=ca_pem(ctl),
        private_key=key.reveal(),
        certificate_chain=issued.certificate_pem.encode(),
    )
    async with grpc.aio.secure_channel(f"127.0.0.1:{ctl.mtls_port}", creds) as channel:
        refused = await _error(
            admin_stub(channel).GetVersion(admin_pb2.GetVersionRequest(), timeout=CALL_TIMEOUT)
        )
    assert refused.code() is grpc.StatusCode.UNAUTHENTICATED
    registered = await core_of(ctl).credentials.certificates()
    assert [(c.serial, c.user, c.device) for c in registered] == [(issued.serial, "bob", "laptop")]


async def test_leases_are_listed_and_go_with_their_user(ctl: Controller) -> None:
    core = core_of(ctl)
    parsed = parse_resource(pool(auth={"methods": ["certificate", "eap-mschapv2"]}))
    assert isinstance(parsed, RemoteAccessPool)
    alice = await core.leases.allocate(parsed, "alice", "phone", "gw1", 1700000000.0)
    await core.leases.allocate(parsed, "bob", "laptop", "gw1", 1700000001.0)
    async with admin_channel(ctl) as channel:
        admin = admin_stub(channel)
        await admin.SetRemoteAccessPassword(
            admin_pb2.SetRemoteAccessPasswordRequest(user="alice", password=PASSWORD), timeout=CALL_TIMEOUT
        )
        listed = await admin.ListRemoteAccessLeases(
            admin_pb2.ListRemoteAccessLeasesRequest(), timeout=CALL_TIMEOUT
        )
        assert [(x.user, x.device, x.gateway) for x in listed.leases] == [
            ("alice", "phone", "gw1"),
            ("bob", "laptop", "gw1"),
        ]
        assert list(listed.leases[0].addresses) == [str(alice.addresses[0])]
        assert listed.leases[0].connected_since.seconds == 1700000000
        first = await admin.ListRemoteAccessLeases(
            admin_pb2.ListRemoteAccessLeasesRequest(page_size=1), timeout=CALL_TIMEOUT
        )
        assert [x.user for x in first.leases] == ["alice"] and first.next_page_token == "alice/phone"
        second = await admin.ListRemoteAccessLeases(
            admin_pb2.ListRemoteAccessLeasesRequest(page_size=1, page_token=first.next_page_token),
            timeout=CALL_TIMEOUT,
        )
        assert [x.user for x in second.leases] == ["bob"] and second.next_page_token == ""
        await admin.Delete(
            admin_pb2.DeleteRequest(kind="RemoteAccessUser", name="alice"), timeout=CALL_TIMEOUT
        )
        after = await admin.ListRemoteAccessLeases(
            admin_pb2.ListRemoteAccessLeasesRequest(), timeout=CALL_TIMEOUT
        )
        assert [x.user for x in after.leases] == ["bob"]
    assert await core.credentials.nt_hash("alice") is None
    taken = await core.state.store.range(f"{core.state.keys.remote_access}addresses/")
    assert [json.loads(kv.value)["user"] for kv in taken.kvs] == ["bob"]


def _traffic_report(seq: int, *clients: tuple[str, str, int]) -> agent_pb2.StatusReport:
    return agent_pb2.StatusReport(
        agent_instance_id="i1", seq=seq, full=True,
        remote_access_clients=[
            agent_pb2.RemoteAccessClientTraffic(user=u, device=d, bytes_in=n, bytes_out=2 * n,
                                                packets_in=n // 100, packets_out=n // 50)
            for u, d, n in clients
        ],
    )  # fmt: skip


async def test_leases_show_the_traffic_their_own_gateway_reports(ctl: Controller) -> None:
    core = core_of(ctl)
    parsed = parse_resource(pool(auth={"methods": ["certificate", "eap-mschapv2"]}))
    assert isinstance(parsed, RemoteAccessPool)
    await core.leases.allocate(parsed, "alice", "phone", "gw1", 1700000000.0)
    await core.leases.allocate(parsed, "bob", "laptop", "gw2", 1700000001.0)
    await core.status.accept("gw1", _traffic_report(1, ("alice", "phone", 1200)), 1700000100.0)
    # gw3 holds no lease of alice's: what it says of her is not hers to say.
    await core.status.accept("gw3", _traffic_report(1, ("alice", "phone", 999999)), 1700000100.0)

    async def listed() -> dict[str, admin_pb2.RemoteAccessLease]:
        async with admin_channel(ctl) as channel:
            response = await admin_stub(channel).ListRemoteAccessLeases(
                admin_pb2.ListRemoteAccessLeasesRequest(), timeout=CALL_TIMEOUT
            )
        return {x.user: x for x in response.leases}

    leases = await listed()
    alice, bob = leases["alice"], leases["bob"]
    assert (alice.bytes_in, alice.bytes_out, alice.packets_in, alice.packets_out) == (1200, 2400, 12, 24)
    assert alice.traffic_at.seconds == 1700000100
    assert not bob.HasField("traffic_at") and bob.bytes_in == 0  # gw2 has not reported yet
    # Every report carries the whole list: a later one replaces the numbers, and the status kept
    # in the store (what another replica reads) holds them too.
    await core.status.accept("gw1", _traffic_report(2, ("alice", "phone", 5000)), 1700000130.0)
    assert (await listed())["alice"].bytes_in == 5000
    report = core.status.get("gw1")
    assert report is not None
    stored = NodeReport.decode(report.encode())
    assert stored.clients[("alice", "phone")].bytes_out == 10000


async def test_deleted_users_and_devices_put_their_certificates_on_the_revocation_list(
    ctl: Controller,
) -> None:
    core = core_of(ctl)
    exists = core.state.index.has_device

    async with admin_channel(ctl) as channel:
        admin = admin_stub(channel)

        async def issue(device: str) -> str:
            request = admin_pb2.IssueDeviceCertificateRequest(
                user="bob", device=device, csr_pem=make_csr(new_key(), f"{device}.bob")
            )
            return str((await admin.IssueDeviceCertificate(request, timeout=CALL_TIMEOUT)).serial)

        devices = [{"name": "laptop", "platform": "linux"}, {"name": "phone", "platform": "android"}]
        await apply(ctl, user("bob", auth={"method": "certificate"}, devices=devices))
        laptop, phone = await issue("laptop"), await issue("phone")
        assert await core.credentials.revoked(exists, time.time()) == []
        # Dropping a device from the user revokes that device's certificate only.
        await apply(ctl, user("bob", auth={"method": "certificate"}, devices=devices[1:]))
        assert [c.serial for c in await core.credentials.revoked(exists, time.time())] == [laptop]
        await admin.Delete(admin_pb2.DeleteRequest(kind="RemoteAccessUser", name="bob"), timeout=CALL_TIMEOUT)
    assert sorted(c.serial for c in await core.credentials.revoked(exists, time.time())) == sorted(
        [laptop, phone]
    )
