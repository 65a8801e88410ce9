"""meshsec against strongSwan 6.1 with post-quantum hybrid key exchanges (RFC 9370 over RFC 9242
IKE_INTERMEDIATE, IKE fragmentation of it), meshsec in both roles, ping through the tunnel
(meshsec's userspace data plane against kernel-libipsec). Against strongSwan 5.9.8 (no ML-KEM)
a hybrid-only meshsec fails with NO_PROPOSAL_CHOSEN, and one with a classical second proposal
falls back to it, exactly as configured: for the IKE SA and for CHILD_SA rekeys with PFS."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from meshsec.common.secrets import Secret
from tests.harness.netns import Lab
from tests.harness.strongswan import Charon, CharonFactory, Child, ChildSa, Connection, IkeSa, Psk
from tests.interop.meshsec_agent import MeshsecAgent
from tests.interop.topology import (
    MS_ID,
    MS_INNER,
    MS_UNDER,
    PSK,
    SW_ID,
    SW_INNER,
    SW_UNDER,
    Pair,
    build,
    meshsec_config,
    swan_settings,
)

pytestmark = [pytest.mark.netns, pytest.mark.strongswan, pytest.mark.timeout(120)]

HYBRIDS = {
    # name: (IKE proposal, strongSwan's dh-group, its ake1)
    "x25519-mlkem768": ("aes256gcm16-prfsha256-x25519-ke1_mlkem768", "CURVE_25519", "ML_KEM_768"),
    "ecp384-mlkem1024": ("aes256gcm16-prfsha384-ecp384-ke1_mlkem1024", "ECP_384", "ML_KEM_1024"),
}
CLASSIC = "aes256gcm16-prfsha256-x25519"


def _swan(proposals: tuple[str, ...]) -> Connection:
    return Connection(
        name="peer", local_addrs=(SW_UNDER,), remote_addrs=(MS_UNDER,), local_id=SW_ID, remote_id=MS_ID,
        auth=Psk(Secret(PSK)), proposals=proposals,
        children=(Child("net", local_ts=(f"{SW_INNER}/32",), remote_ts=(f"{MS_INNER}/32",)),),
    )  # fmt: skip


def _swan_child_up(sas: list[IkeSa]) -> IkeSa | None:
    for sa in sas:
        child = sa.child("net")
        if sa.state == "ESTABLISHED" and child is not None and child.state == "INSTALLED":
            return sa
    return None


def _config(proposals: list[str], start: str) -> dict[str, Any]:
    config = meshsec_config(proposals[0], "aes256gcm16", start_action=start, dataplane="userspace")
    config["connections"]["peer"]["proposals"] = proposals
    return config


def _start(
    charons: CharonFactory, root: Path, pair: Pair, conn: Connection, config: dict[str, Any], role: str
) -> tuple[Charon, MeshsecAgent]:
    """strongSwan 6.1 and the meshsec agent, in the order `role` (meshsec's) needs: the
    responder first, and strongSwan told to initiate when meshsec answers."""
    if role == "initiator":
        sw = charons.start(pair.sw, [conn], swan_settings(), root=root)
        return sw, MeshsecAgent(pair.ms, config).start()
    agent = MeshsecAgent(pair.ms, config).start()
    sw = charons.start(pair.sw, [conn], swan_settings(), root=root)
    sw.initiate("peer", "net", timeout=15)
    return sw, agent


@pytest.mark.parametrize("suite", sorted(HYBRIDS))
@pytest.mark.parametrize("role", ["initiator", "responder"])
def test_hybrid_with_strongswan61(
    lab: Lab, charons: CharonFactory, root: Path, suite: str, role: str
) -> None:
    proposal, dh, ake1 = HYBRIDS[suite]
    pair = build(lab)
    start = "initiate" if role == "initiator" else "wait"
    sw, agent = _start(charons, root, pair, _swan((proposal,)), _config([proposal], start), role)
    ms_sa = agent.wait_for(lambda s: agent.established("peer"))
    sw_sa = sw.wait_for(_swan_child_up)
    assert (sw_sa.dh_group, sw_sa.additional_ke) == (dh, (ake1,))
    assert (ms_sa["dh_group"], ms_sa.get("ake1")) == (dh, ake1)
    assert ms_sa["initiator_spi"] == sw_sa.initiator_spi and ms_sa["responder_spi"] == sw_sa.responder_spi
    swan_log = sw.log_text()
    assert "IKE_INTERMEDIATE" in swan_log
    # The ML-KEM encapsulation key does not fit one datagram at the initiator's fragment size
    # (meshsec 1200, strongSwan 1280 bytes): the IKE_INTERMEDIATE request goes as RFC 7383
    # fragments (strongSwan logs "EF(1/2)"), reassembled by the other end.
    fragmented = re.search(r"IKE_INTERMEDIATE request 1 \[ EF\(\d+/\d+\) \]", swan_log)
    if role == "initiator" or suite == "ecp384-mlkem1024":
        assert fragmented, swan_log[-3000:]
    ping = pair.ms.ping(SW_INNER, src=MS_INNER, count=5, interval=0.05)
    assert ping.ok, ping.output


def test_hybrid_only_against_598_fails_as_configured(lab: Lab, charons: CharonFactory) -> None:
    proposal = HYBRIDS["x25519-mlkem768"][0]
    pair = build(lab)
    sw = charons.start(pair.sw, [_swan((CLASSIC,))], swan_settings())
    agent = MeshsecAgent(pair.ms, _config([proposal], "initiate")).start()

    def failed(status: dict[str, Any]) -> str | None:
        for sa in status["recent"]:
            if sa["name"] == "peer" and sa["outcome"]:
                return str(sa["outcome"])
        return None

    assert "NO_PROPOSAL_CHOSEN" in agent.wait_for(failed)
    assert sw.list_sas() == []


def test_hybrid_with_classical_fallback_against_598(lab: Lab, charons: CharonFactory) -> None:
    proposal = HYBRIDS["x25519-mlkem768"][0]
    pair = build(lab)
    sw = charons.start(pair.sw, [_swan((CLASSIC,))], swan_settings())
    agent = MeshsecAgent(pair.ms, _config([proposal, CLASSIC], "initiate")).start()
    ms_sa = agent.wait_for(lambda s: agent.established("peer"))
    assert ms_sa["dh_group"] == "CURVE_25519" and "ake1" not in ms_sa
    assert sw.wait_for(_swan_child_up).additional_ke == ()


PING_COUNT = 1000  # 10 s of pings every 10 ms: at least two IKE rekeys at a 3 s rekey time
REKEY = 3


@pytest.mark.parametrize("rekeyer", ["meshsec", "strongswan"])
@pytest.mark.parametrize("role", ["initiator", "responder"])
def test_hybrid_ike_rekey_with_followup_ke_under_traffic_loses_nothing(
    lab: Lab, charons: CharonFactory, root: Path, role: str, rekeyer: str
) -> None:
    """The IKE SA is rekeyed with X25519 in CREATE_CHILD_SA and ML-KEM-768 in IKE_FOLLOWUP_KE
    (RFC 9370 2.2.4) while a 10 ms ping runs through the CHILD_SA: nothing lost, both ends agree
    on the newest SPIs, and a CHILD_SA rekey under the newest IKE SA works (same SK_d)."""
    proposal = HYBRIDS["x25519-mlkem768"][0]
    pair = build(lab)
    config = _config([proposal], "initiate" if role == "initiator" else "wait")
    conn = _swan((proposal,))
    if rekeyer == "meshsec":
        config["connections"]["peer"]["rekey_time"] = REKEY
    else:
        conn = Connection(
            **{**conn.__dict__, "rekey_time": f"{REKEY}s", "rand_time": "0s", "over_time": "30s"}
        )
    sw, agent = _start(charons, root, pair, conn, config, role)
    agent.wait_for(lambda s: agent.established("peer"))
    first = sw.wait_for(_swan_child_up)
    ping = pair.ms.ping(SW_INNER, src=MS_INNER, count=PING_COUNT, interval=0.01, wait=2.0)
    log = agent.log_text()
    assert len(re.findall(r"IKE SA \S+_i \S+_r REKEYED", log)) >= 2, log[-3000:]
    assert "IKE_FOLLOWUP_KE" in sw.log_text()
    assert ping.transmitted == PING_COUNT and ping.received == ping.transmitted, (ping, log[-3000:])
    # Rekeys go on every 3 s (and may cross the CHILD_SA rekey below): wait generously.
    last = sw.wait_for(_swan_child_up, timeout=30)
    assert (last.initiator_spi, last.responder_spi) != (first.initiator_spi, first.responder_spi)
    assert last.additional_ke == ("ML_KEM_768",)
    ms = agent.wait_for(lambda s: agent.established("peer"))
    assert (ms["initiator_spi"], ms["responder_spi"]) == (last.initiator_spi, last.responder_spi)
    sw.swanctl("--rekey", "--child", "net")
    old_child = last.child("net")
    assert old_child is not None
    sw.wait_for(
        lambda sas: (sa := _swan_child_up(sas)) and sa.child("net").spi_in != old_child.spi_in,  # type: ignore[union-attr]
        timeout=30,
    )
    assert pair.ms.ping(SW_INNER, src=MS_INNER, count=20, interval=0.05).ok
    assert "FAILED" not in agent.log_text()


HYBRID_ESP = "aes256gcm16-x25519-ke1_mlkem768"
CHILD_REKEY = 2  # 10 s of pings: at least three CHILD_SA rekeys


def _newest_installed_child(sas: list[IkeSa]) -> ChildSa | None:
    """strongSwan's newest INSTALLED "net" pair (mid-rekey the old one is listed too)."""
    installed = [c for sa in sas for c in sa.children if c.name == "net" and c.state == "INSTALLED"]
    return installed[-1] if installed else None


def _child_rekeys_logged(agent: MeshsecAgent) -> int:
    return len(re.findall(r"CHILD_SA net REKEYED", agent.log_text()))


@pytest.mark.parametrize("rekeyer", ["meshsec", "strongswan"])
@pytest.mark.parametrize("role", ["initiator", "responder"])
def test_hybrid_child_rekey_with_followup_ke_under_traffic_loses_nothing(
    lab: Lab, charons: CharonFactory, root: Path, role: str, rekeyer: str
) -> None:
    """CHILD_SAs are rekeyed with PFS X25519 in CREATE_CHILD_SA and ML-KEM-768 in IKE_FOLLOWUP_KE
    (RFC 9370 2.2.4) every 2 s while a 10 ms ping runs through them: nothing lost, and strongSwan
    reports the additional key exchange on the CHILD_SA it ends up with."""
    proposal = HYBRIDS["x25519-mlkem768"][0]
    pair = build(lab)
    config = _config([proposal], "initiate" if role == "initiator" else "wait")
    child = config["connections"]["peer"]["children"]["net"]
    child["esp_proposals"] = [HYBRID_ESP]
    swan_child = Child("net", (f"{SW_INNER}/32",), (f"{MS_INNER}/32",), (HYBRID_ESP,),
                       rekey_time="300s", life_time="330s", rand_time="0s")  # fmt: skip
    if rekeyer == "meshsec":
        child.update(rekey_time=CHILD_REKEY, life_time=CHILD_REKEY + 30, rand_time=0)
    else:
        child.update(rekey_time=300, life_time=330)
        swan_child = Child(**{**swan_child.__dict__, "rekey_time": f"{CHILD_REKEY}s",
                              "life_time": f"{CHILD_REKEY + 30}s"})  # fmt: skip
    conn = Connection(**{**_swan((proposal,)).__dict__, "children": (swan_child,)})
    sw, agent = _start(charons, root, pair, conn, config, role)
    agent.wait_for(lambda s: agent.established("peer"))
    first = sw.wait_for(_swan_child_up).child("net")
    assert first is not None
    ping = pair.ms.ping(SW_INNER, src=MS_INNER, count=PING_COUNT, interval=0.01, wait=2.0)
    log = agent.log_text()
    assert _child_rekeys_logged(agent) >= 3, log[-3000:]
    assert ping.transmitted == PING_COUNT and ping.received == ping.transmitted, (ping, log[-3000:])
    swan_log = sw.log_text()
    assert "IKE_FOLLOWUP_KE" in swan_log and "STATE_NOT_FOUND" not in swan_log
    try:
        last = sw.wait_for(_newest_installed_child, timeout=10)
    except TimeoutError:
        raise AssertionError([(c.spi_in, c.state) for sa in sw.list_sas() for c in sa.children]) from None
    assert {last.spi_in, last.spi_out}.isdisjoint({first.spi_in, first.spi_out})
    assert (last.dh_group, last.raw.get("ake1")) == ("CURVE_25519", "ML_KEM_768"), last.raw
    assert "FAILED" not in agent.log_text()


CLASSIC_ESP = "aes256gcm16-x25519"


@pytest.mark.parametrize("fallback", [False, True], ids=["hybrid-only", "classical-fallback"])
@pytest.mark.parametrize("rekeyer", ["meshsec", "strongswan"])
def test_hybrid_child_pfs_against_598_fails_or_falls_back_as_configured(
    lab: Lab, charons: CharonFactory, rekeyer: str, fallback: bool
) -> None:
    """strongSwan 5.9.8 (no ML-KEM) with X25519 PFS for its CHILD_SA. The first CHILD_SA, made
    in IKE_AUTH, has no key exchange of its own and comes up either way. Its rekeys, by either
    side: a hybrid-only ESP proposal never makes a pair without ML-KEM (the rekey is refused with
    NO_PROPOSAL_CHOSEN, the first pair goes on), and one with a classical second proposal rekeys
    with X25519 PFS alone."""
    pair = build(lab)
    config = _config([CLASSIC], "initiate")
    child = config["connections"]["peer"]["children"]["net"]
    child["esp_proposals"] = [HYBRID_ESP, CLASSIC_ESP] if fallback else [HYBRID_ESP]
    swan_child = Child("net", (f"{SW_INNER}/32",), (f"{MS_INNER}/32",), (CLASSIC_ESP,),
                       rekey_time="300s", life_time="330s", rand_time="0s")  # fmt: skip
    if rekeyer == "meshsec":
        child.update(rekey_time=CHILD_REKEY, life_time=120, rand_time=0)
    else:
        child.update(rekey_time=300, life_time=330)
        swan_child = Child(**{**swan_child.__dict__, "rekey_time": f"{CHILD_REKEY}s", "life_time": "120s"})
    conn = Connection(**{**_swan((CLASSIC,)).__dict__, "children": (swan_child,)})
    sw = charons.start(pair.sw, [conn], swan_settings())
    agent = MeshsecAgent(pair.ms, config).start()
    agent.wait_for(lambda s: agent.established("peer"))
    first = sw.wait_for(_swan_child_up).child("net")
    assert first is not None
    ping = pair.ms.ping(SW_INNER, src=MS_INNER, count=300, interval=0.02, wait=2.0)
    assert ping.transmitted == ping.received == 300, ping
    log, swan_log = agent.log_text(), sw.log_text()
    if fallback:
        assert _child_rekeys_logged(agent) >= 2, log[-3000:]
        last = sw.wait_for(_newest_installed_child, timeout=10)
        assert {last.spi_in, last.spi_out}.isdisjoint({first.spi_in, first.spi_out})
        assert last.dh_group == "CURVE_25519" and "ake1" not in last.raw, last.raw
        assert "IKE_FOLLOWUP_KE" not in swan_log and "FAILED" not in log
    else:
        assert _child_rekeys_logged(agent) == 0, log[-3000:]
        # 5.9.8 refuses the proposal with the ADDKE transform it does not know (meshsec
        # rekeying), or meshsec refuses 5.9.8's X25519-only one (strongSwan rekeying).
        refused = log if rekeyer == "meshsec" else swan_log
        assert "NO_PROPOSAL_CHOSEN" in refused, (log[-3000:], swan_log[-3000:])
        (only,) = [c for sa in sw.list_sas() for c in sa.children if c.name == "net"]
        assert (only.spi_in, only.spi_out) == (first.spi_in, first.spi_out) and only.state == "INSTALLED"
