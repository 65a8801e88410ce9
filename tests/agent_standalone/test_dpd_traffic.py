"""Inbound ESP counts as proof of life (RFC 7296 2.4): two standalone agents on the userspace data
plane (TUN, ESP over a veth link) with a 1 s DPD delay send no DPD probe while a ping runs
through the tunnel, and probe again once it stops."""

from __future__ import annotations

import time

import pytest

from tests.harness.netns import Lab, stop_process
from tests.interop.meshsec_agent import MeshsecAgent

PSK = "dpd-traffic-psk"
UNDER = {"a": "198.18.74.1", "b": "198.18.74.2"}
INNER = {"a": "198.19.74.1", "b": "198.19.74.2"}


def config(me: str, peer: str, start: str) -> dict[str, object]:
    return {
        "agent": {"bind": [UNDER[me]], "dataplane": "userspace"},
        "connections": {
            "tun": {
                "local_addrs": [UNDER[me]], "remote_addrs": [UNDER[peer]],
                "local": {"id": f"{me}.test"}, "remote": {"id": f"{peer}.test"}, "psk": PSK,
                "start_action": start, "dpd": {"delay": 1, "action": "clear"},
                "children": {"net": {"local_ts": [f"{INNER[me]}/32"], "remote_ts": [f"{INNER[peer]}/32"]}},
            }
        },
    }  # fmt: skip


def probes(agent: MeshsecAgent) -> int:
    sa = agent.established("tun")
    assert sa is not None, agent.log_text()[-3000:]
    return int(sa["engine_stats"].get("dpd_probes", 0))


@pytest.mark.netns
@pytest.mark.timeout(90)
def test_no_dpd_while_esp_arrives_and_dpd_again_when_it_stops(lab: Lab) -> None:
    ha, hb = lab.host("a"), lab.host("b")
    lab.link(ha, hb, f"{UNDER['a']}/24", f"{UNDER['b']}/24")
    ha.add_loopback_address(f"{INNER['a']}/32")
    hb.add_loopback_address(f"{INNER['b']}/32")
    b = MeshsecAgent(hb, config("b", "a", "wait")).start()
    a = MeshsecAgent(ha, config("a", "b", "initiate")).start()
    agents = (a, b)
    a.wait_for(lambda s: a.established("tun"))
    b.wait_for(lambda s: b.established("tun"))
    assert ha.ping(INNER["b"], src=INNER["a"], count=3, interval=0.1).ok

    ping = ha.popen(["ping", "-n", "-q", "-i", "0.1", "-I", INNER["a"], INNER["b"]],
                    log=lab.workdir / "ping.log")  # fmt: skip
    try:
        time.sleep(2.0)  # a probe sent before the traffic started has been answered by now
        during = [probes(x) for x in agents]
        time.sleep(4.0)  # four DPD delays of steady traffic
        assert [probes(x) for x in agents] == during
    finally:
        stop_process(ping)

    # Silence: each end probes again within a few DPD delays.
    for x, before in zip(agents, during, strict=True):
        x.wait_for(lambda s, x=x, before=before: probes(x) >= before + 2, timeout=10)
        assert x.established("tun")  # the peer answered its probes
    assert a.stop() == 0 and b.stop() == 0
