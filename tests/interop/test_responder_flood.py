"""A meshsec responder under an IKE_SA_INIT flood in network namespaces (issue 18): spoofed
IKE_SA_INITs from 200 addresses plus one address that answers every COOKIE and holds half-open
SAs. A real peer (another meshsec agent) must still establish before its retransmissions run
out (3 of them); before the per-address limit the one address held every half-open slot."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from tests.harness.netns import Lab, stop_process
from tests.interop.meshsec_agent import MeshsecAgent

pytestmark = [pytest.mark.netns, pytest.mark.timeout(150)]

MS, PEER, ATK = "198.18.44.1", "198.18.44.2", "198.18.44.3"
FLOOD_NET = "198.18.45.0/24"  # AnyIP-local on the attacker: every address of it is "ours" there
ANSWERING = "198.18.45.1"
SPOOFED = [f"198.18.45.{n}" for n in range(10, 210)]
PROPOSAL = "aes256gcm16-prfsha256-x25519"
PSK = "flood-test-psk-0123456789"
REPO = Path(__file__).resolve().parents[2]


def _connection(local: str, remote: str | None, local_id: str, remote_id: str, inner: tuple[str, str],
                start_action: str) -> dict[str, object]:  # fmt: skip
    conn: dict[str, object] = {
        "local_addrs": [local], "local": {"id": local_id, "auth": "psk"},
        "remote": {"id": remote_id, "auth": "psk"}, "psk": PSK, "proposals": [PROPOSAL],
        "start_action": start_action,
        # The peer's patience: the first try plus 3 retransmissions (2 + 3.6 + 6.5 + 11.7 s).
        "retransmit": {"timeout": 2, "base": 1.8, "tries": 3},
        "children": {"net": {"local_ts": [f"{inner[0]}/32"], "remote_ts": [f"{inner[1]}/32"],
                             "esp_proposals": ["aes256gcm16"]}},
    }  # fmt: skip
    if remote is not None:
        conn["remote_addrs"] = [remote]
    return conn


def test_peer_establishes_during_a_cookie_answering_flood(lab: Lab) -> None:
    switch = lab.switch("sw")
    ms, peer, atk = lab.host("ms"), lab.host("peer"), lab.host("atk")
    for host, addr in ((ms, MS), (peer, PEER), (atk, ATK)):
        switch.attach(host, f"{addr}/24")
    atk.ip("route", "add", "local", FLOOD_NET, "dev", "lo")
    ms.add_route(FLOOD_NET, via=ATK)
    ms.add_loopback_address("198.19.44.1/32")
    peer.add_loopback_address("198.19.44.2/32")
    responder = MeshsecAgent(ms, {
        # A small global limit, so that one address can fill it within seconds without the fix.
        "agent": {"bind": [MS], "dataplane": "none", "log_level": "info",
                  "responder": {"cookie_threshold": 10, "block_threshold": 100}},
        "connections": {"any": _connection(MS, None, "ms.test", "%any", ("198.19.44.1", "198.19.44.2"),
                                           "wait")},
    }).start()  # fmt: skip
    stop_file = lab.workdir / "flood.stop"
    stats_file = lab.workdir / "flood.json"
    flood = atk.popen(
        [sys.executable, "-m", "tests.interop.flood_script", "--target", MS, "--answering", ANSWERING,
         "--spoofed", *SPOOFED, "--proposal", PROPOSAL, "--duration", "90",
         "--stop-file", str(stop_file), "--stats", str(stats_file)],
        cwd=REPO, log=lab.workdir / "flood.log",
    )  # fmt: skip
    try:
        # The flood has saturated what it can: its address is at a limit (per address, or globally).
        front = responder.wait_for(
            lambda s: s["stats"]["responder"]
            if s["stats"]["responder"].get("dropped_overload_address", 0)
            + s["stats"]["responder"].get("dropped_overload", 0) > 0 else None,
            timeout=40,
        )  # fmt: skip
        assert front.get("cookie_sent", 0) > 0
        conn = _connection(PEER, MS, "peer.test", "ms.test", ("198.19.44.2", "198.19.44.1"), "initiate")
        initiator = MeshsecAgent(peer, {
            "agent": {"bind": [PEER], "dataplane": "none", "log_level": "info"}, "connections": {"ms": conn},
        }, name="peer").start()  # fmt: skip
        # Generous: the peer gives up after its 3rd retransmission (~24 s), which fails this wait.
        initiator.wait_for(lambda s: initiator.established("ms"), timeout=60)
        assert flood.poll() is None, "the flood must still be running while the peer connects"
        front = responder.status()["stats"]["responder"]
        assert front.get("dropped_overload_address", 0) > 0 and front.get("dropped_overload", 0) == 0
    finally:
        stop_file.touch()
        deadline = time.monotonic() + 10
        while flood.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        stop_process(flood)
    flood_stats = json.loads(stats_file.read_text())
    assert flood_stats["half_open_made"] >= 5 and flood_stats["spoofed_sent"] > 100, flood_stats
