"""EAP in IKE_AUTH against real strongSwan 5.9.8 as the road warrior, in namespaces: the meshsec
gateway signs with its certificate and checks strongSwan's EAP-MSCHAPv2 (eap-identity and
eap-mschapv2 plugins) or EAP-TLS (eap-tls, a client certificate from the same CA); the tunnel
carries a ping; a wrong password and an unknown user fail on both sides with
AUTHENTICATION_FAILED. The client brings its own fixed inner address (no virtual IP). And the
other way round: a meshsec road warrior (EAP-MSCHAPv2, only the CA to trust) connects to a
strongSwan gateway, and is refused with a wrong password."""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from typing import Any

import pytest

from meshsec.common.secrets import Secret
from meshsec.meshctl.profiles import swanctl
from meshsec.meshctl.profiles.model import ProfileInput
from tests.harness.netns import Lab
from tests.harness.strongswan import (
    DEFAULT_PLUGINS,
    EAP_PLUGINS,
    CharonFactory,
    CharonSettings,
    EapAuth,
    EapGatewayAuth,
    IkeSa,
)
from tests.interop import remote_access as ra
from tests.interop.meshsec_agent import MeshsecAgent
from tests.interop.test_strongswan_cert import Pki
from tests.interop.topology import (
    MS_ID,
    MS_INNER,
    SUITES,
    SW_ID,
    SW_INNER,
    build,
    meshsec_config,
    swan_connection,
    swan_settings,
)

pytestmark = [pytest.mark.netns, pytest.mark.strongswan, pytest.mark.timeout(60)]

USER, PASSWORD = "carol", "correct horse battery"


@pytest.fixture
def netns_prefix() -> str:
    return "ieap-"


def _gateway(pki: Pki, method: str) -> dict[str, Any]:
    ike, esp, _, _ = SUITES["gcm-x25519"]
    config = meshsec_config(ike, esp, start_action="wait", dataplane="userspace")
    cert, key = pki.leaf("gateway", MS_ID)
    conn = config["connections"]["peer"]
    del conn["psk"]
    conn["local"] = {"id": MS_ID, "auth": "pubkey", "cert": str(cert), "key": str(key)}
    conn["remote"] = {"id": "%any", "auth": method, "cas": [str(pki.ca_path)]}
    config["secrets"] = {"eap-carol": {"id": USER, "secret": PASSWORD}}
    return config


def _client(auth: EapAuth) -> Any:
    ike, esp, _, _ = SUITES["gcm-x25519"]
    return replace(swan_connection(ike, esp), auth=auth)


def _established(sas: list[IkeSa]) -> IkeSa | None:
    for sa in sas:
        child = sa.child("net")
        if sa.state == "ESTABLISHED" and child is not None and child.state == "INSTALLED":
            return sa
    return None


def _start(lab: Lab, charons: CharonFactory, config: dict[str, Any], auth: EapAuth) -> tuple[Any, Any, Any]:
    pair = build(lab)
    agent = MeshsecAgent(pair.ms, config).start()
    settings = replace(swan_settings(), plugins=DEFAULT_PLUGINS + EAP_PLUGINS)
    sw = charons.start(pair.sw, [_client(auth)], settings)
    sw.swanctl("--initiate", "--ike", "peer", "--child", "net", "--timeout", "10", check=False)
    return agent, sw, pair


def test_eap_mschapv2_road_warrior_connects_and_carries_a_ping(lab: Lab, charons: CharonFactory) -> None:
    pki = Pki(lab.workdir, "ecdsa256")
    auth = EapAuth("eap-mschapv2", USER, pki.ca_path, password=Secret(PASSWORD))
    agent, sw, pair = _start(lab, charons, _gateway(pki, "eap-mschapv2"), auth)
    sw_sa = sw.wait_for(_established)
    ms_sa = agent.wait_for(lambda s: agent.established("peer"))
    assert (ms_sa["initiator_spi"], ms_sa["responder_spi"]) == (sw_sa.initiator_spi, sw_sa.responder_spi)
    assert (ms_sa["remote_id"], ms_sa["eap_id"]) == (SW_ID, USER)  # IDi, and who proved it with EAP
    ping = pair.ms.ping(SW_INNER, src=MS_INNER, count=5, interval=0.05)
    assert ping.ok, ping
    log = sw.log_text()
    assert "EAP method EAP_MSCHAPV2 succeeded, MSK established" in log, log[-3000:]
    # strongSwan checked our signature first, then our AUTH from the MSK.
    assert f"authentication of '{MS_ID}' with ECDSA_WITH_SHA256_DER successful" in log, log[-3000:]
    assert f"authentication of '{MS_ID}' with EAP successful" in log, log[-3000:]
    assert PASSWORD not in agent.log_text()


@pytest.mark.parametrize(("password", "user", "reason"), [
    ("wrong horse battery", USER, "wrong password"),
    (PASSWORD, "mallory", "unknown user"),
])  # fmt: skip
def test_wrong_password_and_unknown_user_fail_cleanly_on_both_sides(
    lab: Lab, charons: CharonFactory, password: str, user: str, reason: str
) -> None:
    pki = Pki(lab.workdir, "ecdsa256")
    auth = EapAuth("eap-mschapv2", user, pki.ca_path, password=Secret(password))
    agent, sw, _ = _start(lab, charons, _gateway(pki, "eap-mschapv2"), auth)
    agent.wait_for(lambda s: " FAILED: " in agent.log_text() or None, timeout=15)
    log = agent.log_text()
    assert reason in log, log[-3000:]
    assert agent.established("peer") is None
    sw.wait_for(lambda sas: "N(AUTH_FAILED)" in sw.log_text() or None, timeout=10)
    # strongSwan read our E=691 as a wrong password and told us so (INFORMATIONAL N(AUTH_FAILED)).
    assert "EAP-MS-CHAPv2 failed with error ERROR_AUTHENTICATION_FAILURE" in sw.log_text(), sw.log_text()[
        -3000:
    ]
    assert "EAP_MSCHAPV2 method failed" in sw.log_text()
    assert "(peer reported AUTHENTICATION_FAILED)" in log
    assert not sw.list_sas()  # strongSwan gave the SA up as well
    assert password not in log


def test_eap_tls_with_a_ca_issued_client_certificate(lab: Lab, charons: CharonFactory) -> None:
    pki = Pki(lab.workdir, "ecdsa256")
    cert, key = pki.leaf("client", SW_ID)
    auth = EapAuth("eap-tls", SW_ID, pki.ca_path, cert=cert, key=key)
    agent, sw, pair = _start(lab, charons, _gateway(pki, "eap-tls"), auth)
    sw.wait_for(_established)
    agent.wait_for(lambda s: agent.established("peer"))
    ping = pair.ms.ping(SW_INNER, src=MS_INNER, count=3, interval=0.05)
    assert ping.ok, ping
    assert "EAP method EAP_TLS succeeded, MSK established" in sw.log_text(), sw.log_text()[-3000:]


def _road_warrior(pki: Pki, password: str) -> dict[str, Any]:
    ike, esp, _, _ = SUITES["gcm-x25519"]
    config = meshsec_config(ike, esp, start_action="initiate", dataplane="userspace")
    conn = config["connections"]["peer"]
    del conn["psk"]
    conn["local"] = {"id": MS_ID, "auth": "eap-mschapv2", "eap_id": USER}
    conn["remote"] = {"id": SW_ID, "auth": "pubkey", "cas": [str(pki.ca_path)]}
    config["secrets"] = {"eap-carol": {"id": USER, "secret": password}}
    return config


@pytest.mark.parametrize("password", [PASSWORD, "wrong horse battery"])
def test_meshsec_road_warrior_against_a_strongswan_gateway(
    lab: Lab, charons: CharonFactory, password: str
) -> None:
    pki = Pki(lab.workdir, "ecdsa256")
    cert, key = pki.leaf("gateway", SW_ID)
    ike, esp, _, _ = SUITES["gcm-x25519"]
    gateway = replace(
        swan_connection(ike, esp), remote_id="%any",
        auth=EapGatewayAuth(cert, key, pki.ca_path, {USER: Secret(PASSWORD)}),
    )  # fmt: skip
    pair = build(lab)
    settings = replace(swan_settings(), plugins=DEFAULT_PLUGINS + EAP_PLUGINS)
    sw = charons.start(pair.sw, [gateway], settings)
    agent = MeshsecAgent(pair.ms, _road_warrior(pki, password)).start()
    if password == PASSWORD:
        agent.wait_for(lambda s: agent.established("peer"))
        sw.wait_for(_established)
        ping = pair.ms.ping(SW_INNER, src=MS_INNER, count=3, interval=0.05)
        assert ping.ok, ping
        log = sw.log_text()
        assert "EAP method EAP_MSCHAPV2 succeeded, MSK established" in log, log[-3000:]
        assert f"authentication of '{MS_ID}' with EAP successful" in log
    else:
        agent.wait_for(lambda s: " FAILED: " in agent.log_text() or None, timeout=15)
        assert "refused the password" in agent.log_text(), agent.log_text()[-3000:]
        assert agent.established("peer") is None
        sw.wait_for(lambda sas: "EAP method EAP_MSCHAPV2 failed" in sw.log_text() or None, timeout=10)
    assert password not in agent.log_text()


@pytest.mark.timeout(120)
def test_eap_mschapv2_road_warrior_gets_a_virtual_address_from_the_pool(
    lab: Lab, charons: CharonFactory
) -> None:
    """vips = 0.0.0.0 behind the NAT box with the meshctl-rendered EAP-MSCHAPv2 profile (the
    password put into its secrets section), against a pooled standalone gateway connection."""
    site = ra.build(lab)
    config = ra.gateway_config(site)
    config["connections"]["rw"]["remote"]["auth"] = "eap-mschapv2"
    config["secrets"] = {"eap-alice": {"id": "alice@example.test", "secret": PASSWORD}}
    agent = ra.start_gateway(site, config)
    files = swanctl.render(
        ProfileInput(
            name=ra.CONNECTION, server=ra.GW_OUTER, server_id=ra.GW_ID, identity="alice@example.test",
            auth="eap-mschapv2", ca=site.ca.certificate,
            ike_proposals=("aes256gcm16-prfsha384-ecp384",), esp_proposals=("aes256gcm16-ecp384",),
            routes=("198.19.50.0/24",),
        )
    )  # fmt: skip
    conf = files["swanctl.conf"].decode()
    assert "# secret = <your password>" in conf
    files["swanctl.conf"] = conf.replace("# secret = <your password>", f'secret = "{PASSWORD}"').encode()
    host = site.client_host()
    settings = CharonSettings(
        plugins=(*DEFAULT_PLUGINS, *EAP_PLUGINS), retransmit_tries=2, retransmit_timeout=2.0
    )
    client = charons.start(host, [], settings)
    for rel, data in files.items():
        path = client.swanctl_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    client.swanctl("--load-all", "--noprompt")
    client.initiate(ra.CONNECTION, ra.CONNECTION, timeout=20)
    sa = ra.client_sa(client)
    assert sa is not None, client.log_text()[-3000:]
    (vip,) = sa["local-vips"]
    assert ipaddress.ip_address(vip) in ipaddress.ip_network(ra.POOL)
    assert "EAP method EAP_MSCHAPV2 succeeded, MSK established" in client.log_text()
    ping = host.ping(ra.SRV, src=vip, count=3, interval=0.05)
    assert ping.ok, ping
    status = agent.status()
    (lease,) = status["leases"]
    assert lease["client"] == "alice@example.test" and lease["addresses"] == [vip]  # named by EAP identity
    (ms_sa,) = [s for s in status["ike_sas"] if s.get("eap_id")]
    assert ms_sa["eap_id"] == "alice@example.test"
    assert PASSWORD not in agent.log_text()
