"""Hitless agent restart against strongSwan 5.9.8, in the userspace lane (issue 15): the real
node agent (`meshsec-agent run`, controller-connected, userspace data plane in its own process)
with strongSwan as an ExternalGateway of its site. The agent is restarted twice under a 10 ms
ping, once as a rollout does (SIGTERM) and once by kill -9; each time:

- strongSwan sees nothing: no DELETE in its log, still exactly one IKE SA with the same SPIs and
  the same CHILD_SA (the agent resumed its IKE SA from the state dir, and the data-plane daemon
  kept the CHILD_SA forwarding meanwhile);
- the ping loses nothing.
"""

from __future__ import annotations

import signal
import time

import pytest

from meshsec.common.secrets import Secret
from meshsec.v1 import admin_pb2
from tests.agent.meshlab import MeshLab, resource, wait_for
from tests.harness.netns import Lab, parse_ping
from tests.harness.strongswan import Charon, CharonFactory, CharonSettings, Child, Connection, IkeSa, Psk

pytestmark = [pytest.mark.netns, pytest.mark.strongswan, pytest.mark.timeout(240)]

SW, SW_INNER, SW_NET = "198.18.0.200", "198.19.200.1", "198.19.200.0/24"
N1, N1_INNER, N1_NET = "198.18.0.1", "198.19.1.1", "198.19.1.0/24"
PSK = "restart-interop-psk-0123456789abcdef"
IKE, ESP = "aes256gcm16-prfsha256-x25519", "aes256gcm16"


@pytest.fixture
def netns_prefix() -> str:
    return "sr-"


def established(charon: Charon) -> list[IkeSa]:
    return [sa for sa in charon.list_sas() if sa.state == "ESTABLISHED"]


def installed_child(charon: Charon) -> tuple[str, str, str, str] | None:
    """(IKE SPIi, IKE SPIr, CHILD spi_in, spi_out) of the one IKE SA and its installed CHILD_SA."""
    sas = established(charon)
    if len(sas) != 1:
        return None
    child = sas[0].child("net")
    if child is None or child.state != "INSTALLED":
        return None
    return sas[0].initiator_spi, sas[0].responder_spi, child.spi_in, child.spi_out


def test_agent_restarts_under_a_10ms_ping_strongswan_sees_nothing(lab: Lab, charons: CharonFactory) -> None:
    mesh = MeshLab(lab)
    mesh.start_controller()
    mesh.mesh_policy()
    channel, stub = mesh.admin()
    with channel:
        stub.PutSecret(admin_pb2.PutSecretRequest(name="sw-psk", value=PSK.encode()), timeout=10)
    mesh.add_node(1)
    sw_host = lab.host("swan")
    mesh.sw.attach(sw_host, f"{SW}/24")
    sw_host.add_loopback_address(f"{SW_INNER}/32")
    conn = Connection(
        name="mesh", local_addrs=(SW,), remote_addrs=(N1,), local_id=SW, remote_id="%any",
        auth=Psk(Secret(PSK)), proposals=(IKE,),
        children=(Child("net", local_ts=(SW_NET,), remote_ts=(N1_NET,), esp_proposals=(ESP,)),),
    )  # fmt: skip
    charon = charons.start(sw_host, [conn], CharonSettings())
    mesh.apply(resource("ExternalGateway", "sw", {
        "address": SW, "ikeId": SW, "auth": {"pskSecretRef": "sw-psk"}, "prefixes": [SW_NET],
        "sites": ["s1"], "crypto": {"ikeProposals": [IKE], "espProposals": [f"{ESP}-x25519"]}}))  # fmt: skip
    before = wait_for("strongSwan's IKE SA and CHILD_SA with n1", lambda: installed_child(charon), 60)
    # strongSwan, the responder, installs its CHILD_SA before the agent has read the IKE_AUTH
    # response; a ping sent in between is lost, so wait for the agent's own side of that CHILD_SA.
    sw_spi_in, sw_spi_out = before[2], before[3]
    wait_for("the agent's side of that CHILD_SA", lambda: any(
        (sw_spi_out, sw_spi_in) in spis for spis in mesh.child_spis("n1").values()), 30)  # fmt: skip
    assert mesh.nodes["n1"].ping(SW_INNER, src=N1_INNER, count=3, wait=2.0).ok

    for how in (signal.SIGTERM, signal.SIGKILL):
        ping_log = mesh.work / f"ping-{how.name}.log"
        count = 800  # 8 s at 10 ms
        ping = mesh.nodes["n1"].popen(["ping", "-n", "-q", "-c", str(count), "-i", "0.01", "-W", "2",
                                       "-I", N1_INNER, SW_INNER], log=ping_log)  # fmt: skip
        time.sleep(1.0)
        mesh.stop_agent("n1", how)
        time.sleep(0.5)
        mesh.start_agent("n1")
        wait_for("the restarted agent's status", lambda: mesh.status("n1"), 30)
        ping.wait(40)
        result = parse_ping(ping_log.read_text())
        log = charon.log_text()
        print(f"{how.name} restart against strongSwan: {result.transmitted - result.received} of "
              f"{result.transmitted} lost; strongSwan SAs {installed_child(charon)} (before {before})")
        assert "received DELETE" not in log and "deleting IKE_SA" not in log, how.name
        assert installed_child(charon) == before, how.name  # no new IKE SA, no new CHILD_SA
        assert result.transmitted == count and result.received == count, (how.name, ping_log.read_text())
