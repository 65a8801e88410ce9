"""MOBIKE between two standalone agents on the userspace data plane (TUN, ESP-in-UDP over a
veth link): the initiator's address changes (a new one added, the old one removed) under a
10 ms ping. Unlike strongSwan's kernel-libipsec, both ends move the CHILD_SA in place
(`migrate_sa`), so the same IKE SA *and* CHILD_SA SPIs carry on, and the packet counters and
sequence numbers continue: were the moved outbound SA to start again at sequence number 1, the
peer's moved inbound SA (its replay window carried over) would drop everything as replays."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.harness.netns import Lab, parse_ping
from tests.interop.meshsec_agent import MeshsecAgent

PSK = "mobike-roaming-psk"
UNDER = {"a": "198.18.75.1", "b": "198.18.75.2"}
A_ROAMED = "198.18.75.11"
INNER = {"a": "198.19.75.1", "b": "198.19.75.2"}


def config(me: str, peer: str, start: str) -> dict[str, object]:
    initiator = start == "initiate"
    return {
        # The initiator binds the wildcard and picks its source address: the new one needs a socket.
        "agent": {"bind": ["0.0.0.0"] if initiator else [UNDER[me]], "dataplane": "userspace"},
        "connections": {
            "tun": {
                "local_addrs": [] if initiator else [UNDER[me]],
                "remote_addrs": [UNDER[peer]] if initiator else [],
                "local": {"id": f"{me}.test"}, "remote": {"id": f"{peer}.test"}, "psk": PSK,
                "start_action": start, "mobike": True,
                "children": {"net": {"local_ts": [f"{INNER[me]}/32"], "remote_ts": [f"{INNER[peer]}/32"]}},
            }
        },
    }  # fmt: skip


def sa_of(agent: MeshsecAgent) -> dict[str, Any]:
    sa = agent.established("tun")
    assert sa is not None, agent.log_text()[-3000:]
    return sa


def spis(sa: dict[str, Any]) -> tuple[str, ...]:
    return (sa["initiator_spi"], sa["responder_spi"], *(c["spi_in"] for c in sa["child_sas"]))


@pytest.mark.netns
@pytest.mark.timeout(90)
def test_initiator_roams_and_both_ends_keep_the_same_sas(lab: Lab) -> None:
    ha, hb = lab.host("a"), lab.host("b")
    lab.link(ha, hb, f"{UNDER['a']}/24", f"{UNDER['b']}/24")
    ha.sysctl("net.ipv4.conf.all.promote_secondaries", "1")
    ha.sysctl("net.ipv4.conf.to-b.promote_secondaries", "1")
    ha.add_loopback_address(f"{INNER['a']}/32")
    hb.add_loopback_address(f"{INNER['b']}/32")
    b = MeshsecAgent(hb, config("b", "a", "wait")).start()
    a = MeshsecAgent(ha, config("a", "b", "initiate")).start()
    before_a = a.wait_for(lambda s: a.established("tun"))
    before_b = b.wait_for(lambda s: b.established("tun"))
    assert before_a["engine_stats"].get("address_updates_sent", 0) == 0
    assert ha.ping(INNER["b"], src=INNER["a"], count=10, interval=0.01).ok

    log = lab.workdir / "ping.log"
    ping = ha.popen(["ping", "-n", "-q", "-c", "500", "-i", "0.01", "-W", "1", "-I", INNER["a"], INNER["b"]],
                    log=log)  # fmt: skip
    time.sleep(1.5)
    ha.add_address("to-b", f"{A_ROAMED}/24")
    ha.ip("addr", "del", f"{UNDER['a']}/24", "dev", "to-b")
    ping.wait(timeout=40)
    result = parse_ping(log.read_text())
    lost = result.transmitted - result.received
    print(f"MOBIKE move (meshsec <-> meshsec) under a 10 ms ping: {result.transmitted} sent, {lost} lost")

    def moved(status: dict[str, Any]) -> dict[str, Any] | None:
        sa = b.established("tun")
        return sa if sa is not None and sa["remote"].startswith(A_ROAMED + ":") else None

    after_b = b.wait_for(moved)
    after_a = sa_of(a)
    assert after_a["local"].startswith(A_ROAMED + ":")
    assert spis(after_a) == spis(before_a) and spis(after_b) == spis(before_b)  # no new SA of any kind
    assert after_a["engine_stats"]["address_updates_done"] == 1
    assert after_b["engine_stats"]["address_updates_received"] == 1
    assert lost <= 150, result.output
    # Sequence numbers and replay windows carried over: traffic passes both ways at once.
    assert ha.ping(INNER["b"], src=INNER["a"], count=20, interval=0.01).ok
    assert hb.ping(INNER["a"], src=INNER["b"], count=20, interval=0.01).ok
    counters = sa_of(b)["child_sas"][0]["counters"]
    assert counters["packets_in"] >= result.received + 30  # one counter across the move
    assert a.stop() == 0 and b.stop() == 0
