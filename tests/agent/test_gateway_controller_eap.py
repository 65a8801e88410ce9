"""A meshsec gateway's EAP-MSCHAPv2 road warriors against a running controller: the gateway has
no password table; the user's NT hash comes from AgentService GetEapCredential when the client
names its EAP identity (the IKE_AUTH round waits, then resumes), the address from AllocateLease
under the EAP identity; a wrong password, an unknown user and a certificate user are refused with
AUTHENTICATION_FAILED on both sides."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509

from meshsec.agent.gateway.controller_eap import ControllerEapUsers
from meshsec.agent.gateway.controller_leases import ControllerLeases
from meshsec.agent.ike.certs import Credentials, wall_clock
from meshsec.agent.ike.eap.users import EapClientConfig, EapServerConfig
from meshsec.agent.ike.events import IkeSaEstablished, IkeSaFailed
from meshsec.agent.ike.failures import FailureReason
from meshsec.agent.ike.sa import State
from meshsec.common.md4 import nt_password_hash
from meshsec.common.secrets import Secret
from meshsec.controller.server import Controller
from meshsec.v1 import admin_pb2, agent_pb2_grpc
from tests.controller.ctl_harness import CALL_TIMEOUT, admin_channel, admin_stub, join, running_controller
from tests.controller.test_mesh_support import site
from tests.controller.test_remote_access_resources import pool, user
from tests.ike.peers import Pair, child, ike_config, of_type, responder_config
from tests.ike.pki import Authority, credentials

pytestmark = pytest.mark.timeout(90)

GW_CA = Authority.root("gateway test CA")
GW_CERT, GW_KEY = GW_CA.issue("gw.example.test")
PASSWORD = "correct horse battery"


@pytest.fixture
async def ctl(tmp_path: Path) -> AsyncIterator[Controller]:
    async with running_controller(
        tmp_path,
        site("dc1", ["198.19.1.0/24"]),
        pool(addresses=["198.19.200.0/30"]),
        user("alice"),  # eap-mschapv2
        user("bob", auth={"method": "certificate"}, devices=[{"name": "laptop", "platform": "linux"}]),
    ) as controller:
        async with admin_channel(controller) as channel:
            await admin_stub(channel).SetRemoteAccessPassword(
                admin_pb2.SetRemoteAccessPasswordRequest(user="alice", password=PASSWORD),
                timeout=CALL_TIMEOUT,
            )
        yield controller


async def _connect(ctl: Controller, identity: str, password: str) -> tuple[Pair, ControllerLeases]:
    node = await join(ctl, "dc1", "gw1", "198.18.1.1", node_labels={"role": "ra"})
    stub = agent_pb2_grpc.AgentServiceStub(node.channel(ctl))
    ready: asyncio.Queue[object] = asyncio.Queue()
    leases = ControllerLeases(stub, ready.put_nowait)
    users = ControllerEapUsers(stub, ready.put_nowait)
    trusted = [x509.load_pem_x509_certificate(node.ca_bundle_pem)]
    gateway = responder_config(
        local_id="gw.example.test", remote_id="%any", psk=None, address_pool=leases,
        credentials=credentials([GW_CERT], GW_KEY, trusted, at=wall_clock()),
        eap=EapServerConfig(users=users.lookup),
        children=(child(local="198.19.0.0/20", remote="0.0.0.0/0"),),
    )  # fmt: skip
    client = ike_config(
        local_id="laptop.example.test", remote_id="gw.example.test", psk=None,
        credentials=Credentials((), None, (GW_CA.cert,), wall_clock),
        eap_client=EapClientConfig(identity.encode(), Secret(nt_password_hash(password))),
        request_virtual_ip="4", children=(child(local="0.0.0.0/0", remote="198.19.0.0/20"),),
    )  # fmt: skip
    pair = Pair(client, [gateway])
    pair.connect()
    for _ in range(6):  # the credential, then the lease: each round waits for one RPC
        waiting = [sa for sa in pair.table if sa.tasks.deferred]
        if not waiting:
            break
        await asyncio.wait_for(ready.get(), 10)
        waiting[0].resume_request(pair.now)
        pair.pump()
    await users.close()
    return pair, leases


async def test_eap_user_from_the_controller_gets_a_lease_under_its_eap_identity(ctl: Controller) -> None:
    pair, leases = await _connect(ctl, "alice@example.test", PASSWORD)
    assert pair.initiator.state is State.ESTABLISHED, pair.events_i + pair.events_r
    (est,) = of_type(pair.events_r, IkeSaEstablished)
    assert est.eap_identity == "alice@example.test" and est.remote_id == "laptop.example.test"
    (vip,) = pair.initiator.virtual_addresses
    assert vip in ipaddress.ip_network("198.19.200.0/30")
    assert [k for k in leases.leases] and all("alice@example.test" in k for k in leases.leases)
    gateway = next(iter(pair.table))
    assert gateway.stats["eap_user_pending"] >= 1
    await leases.settle()


@pytest.mark.parametrize(
    ("identity", "password", "why"),
    [
        ("alice@example.test", "wrong horse battery", "wrong password"),
        ("eve@example.test", PASSWORD, "unknown user"),
        ("bob@example.test", PASSWORD, "unknown user"),  # a certificate user has no EAP password
    ],
)
async def test_wrong_password_unknown_and_certificate_users_are_refused(
    ctl: Controller, identity: str, password: str, why: str
) -> None:
    pair, leases = await _connect(ctl, identity, password)
    (fail_r,) = of_type(pair.events_r, IkeSaFailed)
    (fail_i,) = of_type(pair.events_i, IkeSaFailed)
    assert fail_r.code is fail_i.code is FailureReason.AUTHENTICATION_FAILED
    assert why in fail_r.reason, fail_r.reason
    assert not leases.leases
    await leases.settle()
