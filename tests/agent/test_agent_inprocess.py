"""NodeAgent against a real in-process controller (embedded store) on 127.0.0.1, IKE between two
agents on 127.77.1.x, with the recording data plane (no namespaces: nothing here encrypts
packets; test_mesh_netns.py does). Proves enrollment (key generated locally, files 0600, the
certificate's key is the local one), status reaching the controller, certificate renewal before
expiry with reconnection on the new certificate, /metrics, and a refused token."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import stat
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from meshsec.agent.node.agent import NodeAgent, NodeAgentConfig
from meshsec.agent.node.credentials import EnrollmentError
from meshsec.agent.node.statedir import CA, CERT, DESIRED, KEY
from meshsec.agent.standalone.status import format_status
from meshsec.controller.server import Controller
from meshsec.v1 import admin_pb2, common_pb2
from tests.controller.ctl_harness import (
    admin_channel,
    admin_stub,
    core_of,
    create_token,
    running_controller,
)
from tests.controller.test_mesh_support import policy, site

pytestmark = pytest.mark.timeout(90)
LIFETIME = datetime.timedelta(seconds=12)


@pytest.fixture
async def ctl(tmp_path: Path) -> AsyncIterator[Controller]:
    async with running_controller(
        tmp_path,
        site("sa", ["198.19.1.0/24"]),
        site("sb", ["198.19.2.0/24"]),
        policy("mesh", "full-mesh", "site", {}, auth={"method": "psk"}),
        cert_lifetime=LIFETIME,
    ) as controller:
        yield controller


async def agent_for(
    ctl: Controller, tmp_path: Path, name: str, addr: str, token: str, pin: str | None = None
) -> NodeAgent:
    token_file = tmp_path / f"{name}.token"
    token_file.write_text(token + "\n")
    config = NodeAgentConfig(
        controller=f"127.0.0.1:{ctl.mtls_port}",
        bootstrap=f"127.0.0.1:{ctl.bootstrap_port}",
        node=name,
        state_dir=tmp_path / name,
        token_file=token_file,
        ca_file=tmp_path / "ctl" / "ca.pem",
        ca_sha256=pin,
        server_name="127.0.0.1",
        dataplane="none",
        ike_port=15600,
        bind=(addr,),
        addresses=(addr,),
        metrics="127.0.0.1:0",
        responder_grace=2.0,
    )
    agent = NodeAgent(config)
    await agent.start()
    return agent


async def until(what: str, check, timeout: float = 20.0):  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def controller_states(ctl: Controller) -> list[int]:
    async with admin_channel(ctl) as channel:
        response = await admin_stub(channel).ListTunnels(admin_pb2.ListTunnelsRequest(), timeout=5)
    return [t.state for t in response.tunnels]


def serial(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


async def test_enroll_report_renew_and_metrics(ctl: Controller, tmp_path: Path) -> None:
    agents = []
    try:
        for name, addr, site_name in (("na", "127.77.1.1", "sa"), ("nb", "127.77.1.2", "sb")):
            token = await create_token(ctl, site_name, name, node_labels={"role": "gateway"})
            agents.append(await agent_for(ctl, tmp_path, name, addr, token, pin=core_of(ctl).ca.sha256))
        a, _b = agents
        await until(
            "the controller to see the tunnel established by both ends",
            lambda: _established(ctl),
        )
        state = tmp_path / "na"
        for f in (KEY, CERT, CA, DESIRED):
            assert stat.S_IMODE((state / f).stat().st_mode) == 0o600, f
        key = serialization.load_pem_private_key((state / KEY).read_bytes(), None)
        cert = x509.load_pem_x509_certificate((state / CERT).read_bytes())
        spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        assert cert.public_key().public_bytes(*spki) == key.public_key().public_bytes(*spki)
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "na"

        doc = await a.status()
        assert doc["controller"]["connected"] and doc["tunnels"][0]["state"] == "ESTABLISHED"  # type: ignore[index]
        assert doc["reconciler"]["stats"].get("reconcile_errors", 0) == 0  # type: ignore[index]
        table = format_status(json.loads(json.dumps(doc)))  # what `meshsec-agent status` prints
        assert doc["tunnels"][0]["tunnel_id"] in table  # type: ignore[index]

        # Renewal two thirds into the 12 s lifetime, then the watch continues on the new certificate.
        first = serial(state / CERT)
        await until("a renewed certificate", lambda: serial(state / CERT) != first, 20)
        await until("reconnected with it", lambda: a.session is not None and a.session.connected, 10)
        acked = a.session.last_ack_seq if a.session else 0
        await until("reports acknowledged after renewal", lambda: a.session.last_ack_seq > acked, 10)  # type: ignore[union-attr]

        assert a.metrics_port is not None
        body = await asyncio.to_thread(
            lambda: (
                urllib.request.urlopen(f"http://127.0.0.1:{a.metrics_port}/metrics", timeout=5)
                .read()
                .decode()
            )
        )
        assert 'meshsec_agent_tunnels{state="established"} 1.0' in body
        assert "meshsec_agent_controller_connected 1.0" in body
    finally:
        for agent in agents:
            await agent.stop()


async def _established(ctl: Controller) -> bool:
    states = await controller_states(ctl)
    return states == [common_pb2.TUNNEL_STATE_ESTABLISHED]


async def test_a_refused_token_stops_the_agent(ctl: Controller, tmp_path: Path) -> None:
    agent = await agent_for(ctl, tmp_path, "nc", "127.77.1.3", "not-a-token")
    try:
        task = agent.controller_task
        assert task is not None
        with pytest.raises(EnrollmentError, match="UNAUTHENTICATED"):
            await asyncio.wait_for(task, 15)
        assert not (tmp_path / "nc" / KEY).exists()
    finally:
        with contextlib.suppress(Exception):
            await agent.stop()


async def test_a_wrong_ca_pin_refuses_to_enroll(ctl: Controller, tmp_path: Path) -> None:
    token = await create_token(ctl, "sa", "nd")
    agent = await agent_for(ctl, tmp_path, "nd", "127.77.1.4", token, pin="00" * 32)
    try:
        assert agent.controller_task is not None
        with pytest.raises(EnrollmentError, match="pinned"):
            await asyncio.wait_for(agent.controller_task, 15)
        assert not (tmp_path / "nd" / KEY).exists()
    finally:
        with contextlib.suppress(Exception):
            await agent.stop()
