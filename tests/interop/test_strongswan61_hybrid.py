"""meshsec against strongSwan 6.1 with post-quantum hybrid key exchanges (RFC 9370 over RFC 9242
IKE_INTERMEDIATE, IKE fragmentation of it), meshsec in both roles, ping through the tunnel
(meshsec's userspace data plane against kernel-libipsec). Against strongSwan 5.9.8 (no ML-KEM)
a hybrid-only meshsec fails with NO_PROPOSAL_CHOSEN, and one with a classical second proposal
falls back to it, exactly as configured."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from meshsec.common.secrets import Secret
from tests.harness.netns import Lab
from tests.harness.strongswan import CharonFactory, Child, Connection, IkeSa, Psk
from tests.interop.meshsec_agent import MeshsecAgent
from tests.interop.topology import (
    MS_ID,
    MS_INNER,
    MS_UNDER,
    PSK,
    SW_ID,
    SW_INNER,
    SW_UNDER,
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


@pytest.mark.parametrize("suite", sorted(HYBRIDS))
@pytest.mark.parametrize("role", ["initiator", "responder"])
def test_hybrid_with_strongswan61(
    lab: Lab, charons: CharonFactory, root: Path, suite: str, role: str
) -> None:
    proposal, dh, ake1 = HYBRIDS[suite]
    pair = build(lab)
    if role == "initiator":
        sw = charons.start(pair.sw, [_swan((proposal,))], swan_settings(), root=root)
        agent = MeshsecAgent(pair.ms, _config([proposal], "initiate")).start()
    else:
        agent = MeshsecAgent(pair.ms, _config([proposal], "wait")).start()
        sw = charons.start(pair.sw, [_swan((proposal,))], swan_settings(), root=root)
        sw.initiate("peer", "net", timeout=15)
    ms_sa = agent.wait_for(lambda s: agent.established("peer"))
    sw_sa = sw.wait_for(_swan_child_up)
    assert (sw_sa.dh_group, sw_sa.additional_ke) == (dh, (ake1,))
    assert (ms_sa["dh_group"], ms_sa.get("ake1")) == (dh, ake1)
    assert ms_sa["initiator_spi"] == sw_sa.initiator_spi and ms_sa["responder_spi"] == sw_sa.responder_spi
    assert "IKE_INTERMEDIATE" in sw.log_text()
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


def test_strongswan61_ike_rekey_with_mlkem_is_refused_and_the_sa_keeps_working(
    lab: Lab, charons: CharonFactory, root: Path
) -> None:
    """IKE_FOLLOWUP_KE (RFC 9370 2.2.4) is not implemented yet: the rekey fails closed, by name
    (NO_PROPOSAL_CHOSEN to the peer), and the existing SA carries on; it is not re-keyed
    without its additional key exchange."""
    proposal = HYBRIDS["x25519-mlkem768"][0]
    pair = build(lab)
    agent = MeshsecAgent(pair.ms, _config([proposal], "wait")).start()
    sw = charons.start(pair.sw, [_swan((proposal,))], swan_settings(), root=root)
    sw.initiate("peer", "net", timeout=15)
    first = sw.wait_for(_swan_child_up)
    sw.swanctl("--rekey", "--ike", "peer")
    sw.wait_for(lambda sas: "IKE_SA rekeying failed" in sw.log_text() or None)
    assert "received NO_PROPOSAL_CHOSEN" in sw.log_text()
    ping = pair.ms.ping(SW_INNER, src=MS_INNER, count=5, interval=0.05)
    assert ping.ok, ping.output
    (sa,) = sw.list_sas()
    assert (sa.initiator_spi, sa.responder_spi, sa.state) == (
        first.initiator_spi,
        first.responder_spi,
        "ESTABLISHED",
    )
    ms = agent.established("peer")
    assert ms is not None and ms["responder_spi"] == first.responder_spi
