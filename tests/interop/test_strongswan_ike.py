"""meshsec's IKEv2 against real strongSwan 5.9.8 (charon with kernel-libipsec) in namespaces.

Both roles, both proposal styles of issue 3, PSK, tunnel mode. strongSwan's `swanctl
--list-sas` is the oracle: its IKE_SA must be ESTABLISHED and its CHILD_SA INSTALLED with the
very SPIs and algorithms meshsec reports on its status socket. Negative cases check that each
side reports the failure the other side caused (AUTHENTICATION_FAILED, NO_PROPOSAL_CHOSEN)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.harness.netns import Lab, run, stop_process
from tests.harness.strongswan import CharonFactory, IkeSa, SwanctlError
from tests.interop.meshsec_agent import MeshsecAgent
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

pytestmark = [pytest.mark.netns, pytest.mark.strongswan, pytest.mark.timeout(90)]


def _swan_established(sas: list[IkeSa]) -> IkeSa | None:
    for sa in sas:
        child = sa.child("net")
        if sa.state == "ESTABLISHED" and child is not None and child.state == "INSTALLED":
            return sa
    return None


def _assert_same_sa(
    ms_sa: dict[str, Any], sw_sa: IkeSa, ike_alg: dict[str, Any], esp_alg: dict[str, Any]
) -> None:
    # IKE SA: identical SPIs, identities, algorithms on both sides.
    assert ms_sa["initiator_spi"] == sw_sa.initiator_spi
    assert ms_sa["responder_spi"] == sw_sa.responder_spi
    assert (ms_sa["local_id"], ms_sa["remote_id"]) == (MS_ID, SW_ID)
    assert (sw_sa.local_id, sw_sa.remote_id) == (SW_ID, MS_ID)
    for key, value in ike_alg.items():
        assert ms_sa.get(key) == value, key
    assert sw_sa.encr_alg == ike_alg["encr_alg"]
    assert sw_sa.encr_keysize == ike_alg.get("encr_keysize")
    assert sw_sa.integ_alg == ike_alg.get("integ_alg")
    assert sw_sa.prf_alg == ike_alg["prf_alg"]
    assert sw_sa.dh_group == ike_alg["dh_group"]
    # CHILD_SA: our inbound SPI is its outbound one and vice versa.
    (ms_child,) = ms_sa["child_sas"]
    sw_child = sw_sa.child("net")
    assert sw_child is not None
    assert ms_child["spi_in"] == sw_child.spi_out
    assert ms_child["spi_out"] == sw_child.spi_in
    assert ms_child["protocol"] == sw_child.protocol == "ESP"
    assert ms_child["mode"] == sw_child.mode == "TUNNEL"
    for key, value in esp_alg.items():
        assert ms_child.get(key) == value, key
    assert sw_child.encr_alg == esp_alg["encr_alg"]
    assert sw_child.encr_keysize == esp_alg.get("encr_keysize")
    assert sw_child.integ_alg == esp_alg.get("integ_alg")
    assert sw_child.local_ts == (f"{SW_INNER}/32",)
    assert sw_child.remote_ts == (f"{MS_INNER}/32",)
    # libipsec forces NAT-T: both ends must have floated to 4500 with UDP-encapsulated ESP.
    assert sw_child.encap and ms_child["udp_encap"]
    assert sw_sa.local_port == sw_sa.remote_port == 4500
    assert ms_sa["local"].endswith(":4500") and ms_sa["remote"].endswith(":4500")


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_meshsec_initiates(lab: Lab, charons: CharonFactory, suite: str) -> None:
    ike, esp, ike_alg, esp_alg = SUITES[suite]
    pair = build(lab)
    sw = charons.start(pair.sw, [swan_connection(ike, esp)], swan_settings())
    agent = MeshsecAgent(pair.ms, meshsec_config(ike, esp, start_action="initiate")).start()
    ms_sa = agent.wait_for(lambda s: agent.established("peer"))
    sw_sa = sw.wait_for(_swan_established)
    assert ms_sa["initiator"] is True and sw_sa.initiator is False
    _assert_same_sa(ms_sa, sw_sa, ike_alg, esp_alg)


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_strongswan_initiates(lab: Lab, charons: CharonFactory, suite: str) -> None:
    ike, esp, ike_alg, esp_alg = SUITES[suite]
    pair = build(lab)
    agent = MeshsecAgent(pair.ms, meshsec_config(ike, esp)).start()
    sw = charons.start(pair.sw, [swan_connection(ike, esp)], swan_settings())
    sw.initiate("peer", "net", timeout=10)
    sw_sa = sw.wait_for(_swan_established)
    ms_sa = agent.wait_for(lambda s: agent.established("peer"))
    assert ms_sa["initiator"] is False and sw_sa.initiator is True
    _assert_same_sa(ms_sa, sw_sa, ike_alg, esp_alg)


def _recent_outcome(agent: MeshsecAgent) -> str | None:
    def find(status: dict[str, Any]) -> str | None:
        for sa in status["recent"]:
            if sa["name"] == "peer" and sa["outcome"]:
                return str(sa["outcome"])
        return None

    return agent.wait_for(find)


def test_wrong_psk_meshsec_initiator(lab: Lab, charons: CharonFactory) -> None:
    ike, esp, _, _ = SUITES["gcm-x25519"]
    pair = build(lab)
    sw = charons.start(pair.sw, [swan_connection(ike, esp)], swan_settings())
    config = meshsec_config(ike, esp, start_action="initiate", psk="not-the-psk")
    agent = MeshsecAgent(pair.ms, config).start()
    outcome = _recent_outcome(agent)
    assert outcome == "failed: peer reported AUTHENTICATION_FAILED"
    assert "generating IKE_AUTH response 1 [ N(AUTH_FAILED) ]" in sw.log_text()
    assert sw.list_sas() == []
    assert agent.status()["ike_sas"] == []


def test_wrong_psk_strongswan_initiator(lab: Lab, charons: CharonFactory) -> None:
    ike, esp, _, _ = SUITES["gcm-x25519"]
    pair = build(lab)
    agent = MeshsecAgent(pair.ms, meshsec_config(ike, esp, psk="not-the-psk")).start()
    sw = charons.start(pair.sw, [swan_connection(ike, esp)], swan_settings())
    with pytest.raises(SwanctlError):
        sw.initiate("peer", "net", timeout=8)
    outcome = _recent_outcome(agent)
    assert outcome.startswith("failed: AUTH from strongswan.test did not verify")
    assert "parsed IKE_AUTH response 1 [ N(AUTH_FAILED) ]" in sw.log_text()
    assert sw.list_sas() == []
    assert agent.status()["ike_sas"] == []


def test_proposal_mismatch_meshsec_initiator(lab: Lab, charons: CharonFactory) -> None:
    pair = build(lab)
    sw = charons.start(pair.sw, [swan_connection("aes128-sha256-ecp256", "aes128-sha256")], swan_settings())
    agent = MeshsecAgent(
        pair.ms, meshsec_config("aes256gcm16-prfsha256-x25519", "aes256gcm16", start_action="initiate")
    ).start()
    assert _recent_outcome(agent) == "failed: IKE_SA_INIT refused: NO_PROPOSAL_CHOSEN"
    assert "N(NO_PROP)" in sw.log_text()
    assert sw.list_sas() == []


def test_proposal_mismatch_strongswan_initiator(lab: Lab, charons: CharonFactory) -> None:
    pair = build(lab)
    agent = MeshsecAgent(pair.ms, meshsec_config("aes256gcm16-prfsha256-x25519", "aes256gcm16")).start()
    sw = charons.start(pair.sw, [swan_connection("aes128-sha256-ecp256", "aes128-sha256")], swan_settings())
    with pytest.raises(SwanctlError):
        sw.initiate("peer", "net", timeout=8)
    assert "received NO_PROPOSAL_CHOSEN notify error" in sw.log_text()
    assert _recent_outcome(agent) == "failed: IKE_SA_INIT rejected: NO_PROPOSAL_CHOSEN"


def test_capture_decodes_as_ikev2(lab: Lab, charons: CharonFactory) -> None:
    """tshark, an independent decoder, reads the whole exchange as IKEv2: IKE_SA_INIT on 500,
    IKE_AUTH on 4500 behind the non-ESP marker, INFORMATIONAL (DELETE) when the agent stops."""
    ike, esp, _, _ = SUITES["gcm-x25519"]
    pair = build(lab)
    pcap = lab.workdir / "ike.pcap"
    tcpdump = ["tcpdump", "-n", "-U", "--immediate-mode", "-Z", "root", "-i", "to-sw", "-w", str(pcap), "udp"]
    dump = pair.ms.popen(tcpdump, log=lab.workdir / "tcpdump.log")
    deadline = time.monotonic() + 10
    while "listening on" not in (lab.workdir / "tcpdump.log").read_text():
        assert time.monotonic() < deadline and dump.poll() is None, "tcpdump did not start"
        time.sleep(0.05)
    sw = charons.start(pair.sw, [swan_connection(ike, esp)], swan_settings())
    agent = MeshsecAgent(pair.ms, meshsec_config(ike, esp, start_action="initiate")).start()
    ms_sa = agent.wait_for(lambda s: agent.established("peer"))
    assert agent.stop() == 0  # graceful: deletes the IKE SA
    sw.wait_for(lambda sas: not sas)
    time.sleep(0.2)  # let tcpdump write the last packets before it is stopped
    stop_process(dump)
    fields = run(
        ["tshark", "-r", str(pcap), "-Y", "isakmp", "-T", "fields", "-E", "separator=,",
         "-e", "udp.srcport", "-e", "isakmp.ispi", "-e", "isakmp.rspi", "-e", "isakmp.exchangetype",
         "-e", "isakmp.flags", "-e", "isakmp.version"],
    ).stdout  # fmt: skip
    rows = [line.split(",") for line in fields.splitlines() if line]
    exchanges = [(int(r[0]), int(r[3])) for r in rows]
    assert exchanges[:4] == [(500, 34), (500, 34), (4500, 35), (4500, 35)], rows
    assert (4500, 37) in exchanges, rows
    assert all(r[5] in ("0x20", "2.0", "32") for r in rows), rows
    assert {r[1].replace(":", "") for r in rows} == {ms_sa["initiator_spi"]}
    assert {r[2].replace(":", "") for r in rows[1:]} == {ms_sa["responder_spi"]}


def test_strongswan_honours_meshsec_cookie(lab: Lab, charons: CharonFactory) -> None:
    """meshsec's responder demands a COOKIE for every IKE_SA_INIT (threshold 0); strongSwan
    repeats its request with the cookie and the tunnel comes up (RFC 7296 2.6)."""
    ike, esp, ike_alg, esp_alg = SUITES["gcm-x25519"]
    pair = build(lab)
    config = meshsec_config(ike, esp)
    config["agent"]["responder"] = {"cookie_threshold": 0}
    agent = MeshsecAgent(pair.ms, config).start()
    sw = charons.start(pair.sw, [swan_connection(ike, esp)], swan_settings())
    sw.initiate("peer", "net", timeout=10)
    sw_sa = sw.wait_for(_swan_established)
    ms_sa = agent.wait_for(lambda s: agent.established("peer"))
    _assert_same_sa(ms_sa, sw_sa, ike_alg, esp_alg)
    front = agent.status()["stats"]["responder"]
    assert front["cookie_sent"] == 1 and front["cookie_accepted"] == 1
    assert "received COOKIE notify" in sw.log_text()
