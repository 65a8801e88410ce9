"""A bulk TCP transfer between two sites behind kernel-data-plane gateways, over an underlay whose
narrowest link (router r to gateway b, 1400 bytes) neither gateway a nor the client sees, with
every ICMP "fragmentation needed" dropped: PMTU discovery is dead, so only the agents' route MTU
and TCP MSS clamping (docs/kernel.md, "Path MTU and MSS") keep the transfer from stalling.

    c (198.19.95.10) -- a ==== r ---- b -- s (198.19.96.10)     ==== 1500, ---- 1400
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from pyroute2 import netns as pr_netns

from tests.dataplane.kernel.conftest import IN_LANE
from tests.harness.netns import Host, Lab
from tests.interop.meshsec_agent import MeshsecAgent, Status

PSK = "kv-mtu-psk-never-logged"
SLOW = 150.0 if IN_LANE else 20.0
SITE_A, SITE_B = "198.19.95.0/24", "198.19.96.0/24"
CLIENT, SERVER, PORT = "198.19.95.10", "198.19.96.10", 5201
PAYLOAD = 4 * 1024 * 1024
DROP_FRAG_NEEDED = """\
table inet kvblackhole {
  chain output {
    type filter hook output priority 0; policy accept;
    icmp type destination-unreachable icmp code frag-needed drop
  }
}
"""


@pytest.fixture
def netns_prefix() -> str:
    return "kv-"


def agent_config(me: str, peer: str, local: str, remote: str, initiate: bool) -> dict[str, Any]:
    conn = {
        "local_addrs": [me], "remote_addrs": [peer], "local": {"id": f"{me}.test"},
        "remote": {"id": f"{peer}.test"}, "psk": PSK, "proposals": ["aes256gcm16-prfsha256-x25519"],
        "start_action": "initiate" if initiate else "wait",
        "children": {"site": {"local_ts": [local], "remote_ts": [remote], "esp_proposals": ["aes256gcm16"]}},
    }  # fmt: skip
    agent = {"bind": [me], "dataplane": "kernel", "log_level": "info"}
    return {"agent": agent, "connections": {"sites": conn}}


def up(status: Status) -> bool:
    return any(sa["state"] == "ESTABLISHED" and sa["child_sas"]
               and all(c["state"] == "INSTALLED" for c in sa["child_sas"]) for sa in status["ike_sas"])


def topology(lab: Lab) -> dict[str, Host]:
    c, a, r, b, s = (lab.host("c"), lab.router("a"), lab.router("r"), lab.router("b"), lab.host("s"))
    lab.link(c, a, f"{CLIENT}/24", "198.19.95.1/24")
    lab.link(a, r, "198.18.95.1/24", "198.18.95.2/24")
    lab.link(r, b, "198.18.96.2/24", "198.18.96.1/24", mtu=1400)
    lab.link(b, s, "198.19.96.1/24", f"{SERVER}/24")
    c.add_route("default", via="198.19.95.1")
    s.add_route("default", via="198.19.96.1")
    a.add_route("198.18.96.0/24", via="198.18.95.2")
    b.add_route("198.18.95.0/24", via="198.18.96.2")
    for host in (a, r, b):
        host.nft(DROP_FRAG_NEEDED)
    return {"c": c, "a": a, "r": r, "b": b, "s": s}


def transfer(client: Host, server: Host) -> int:
    """Sends PAYLOAD bytes from the client to the server; returns what the server received. A
    stalled connection ends in the sender's socket timeout."""
    listener = pr_netns.create_socket(server.ns, socket.AF_INET, socket.SOCK_STREAM)
    conn = pr_netns.create_socket(client.ns, socket.AF_INET, socket.SOCK_STREAM)
    received = [0]

    def serve() -> None:
        listener.settimeout(SLOW)
        with contextlib.suppress(OSError):  # a stalled connection times out: received tells
            accepted, _ = listener.accept()
            with accepted:
                accepted.settimeout(30)
                while chunk := accepted.recv(65536):
                    received[0] += len(chunk)

    try:
        listener.bind((SERVER, PORT))
        listener.listen(1)
        reader = threading.Thread(target=serve)
        reader.start()
        conn.settimeout(30)
        conn.connect((SERVER, PORT))
        try:
            conn.sendall(b"m" * PAYLOAD)
            conn.shutdown(socket.SHUT_WR)
        except OSError:  # timed out: stalled
            pass
        conn.close()
        reader.join(60)
    finally:
        conn.close()
        listener.close()
    return received[0]


@pytest.mark.kernelvm
@pytest.mark.netns
@pytest.mark.timeout(420)
def test_bulk_tcp_crosses_a_narrow_underlay_with_icmp_dropped(lab: Lab) -> None:
    h = topology(lab)
    b = MeshsecAgent(h["b"], agent_config("198.18.96.1", "198.18.95.1", SITE_B, SITE_A, False))
    a = MeshsecAgent(h["a"], agent_config("198.18.95.1", "198.18.96.1", SITE_A, SITE_B, True))
    with ThreadPoolExecutor(1) as pool:
        b_started = pool.submit(b.start, SLOW)
        a.start(SLOW)
        b_started.result()
    for agent in (a, b):
        agent.wait_for(up, SLOW)
    assert h["c"].ping(SERVER, count=2, interval=0.2, wait=5).received == 2
    assert transfer(h["c"], h["s"]) == PAYLOAD
    # b sizes its route to site a from its 1400-byte link, with the negotiated AES-GCM's overhead
    # (20 + 8 + 8 + 16 and 4-byte padding: 1346) rather than the worst case (1306).
    route = h["b"].ip("route", "show", "table", "220")
    assert re.search(rf"^{re.escape(SITE_A)} via 198.18.96.2 .* mtu 1346", route, re.M), route
    for name in ("a", "b"):
        table = h[name].run(["nft", "list", "table", "inet", "meshsec"]).stdout
        assert table.count("maxseg size set rt mtu") == 2, table
    assert a.stop() == 0 and b.stop() == 0
    for name in ("a", "b"):
        assert h[name].run(["nft", "list", "table", "inet", "meshsec"], check=False).returncode != 0
        assert PSK not in (a if name == "a" else b).log_text()
