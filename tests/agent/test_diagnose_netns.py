"""`meshctl diagnose`, `get -w` and `wait` against a real controller and real agents in namespaces.

Planted faults, each found by diagnose from what the agents report: UDP 500/4500 dropped by
nftables at n3 (PEER_UNREACHABLE), n1's underlay MTU lowered to 1400 below the 1500 its data plane
is sized for (PATH_MTU), node certificates issued for 30 minutes (CERTIFICATE_EXPIRING), and two
ExternalGateways pointing n1 and n2 at each other with disjoint proposals (PROPOSAL_MISMATCH from
the desired state, NO_PROPOSAL_CHOSEN from the agents). The first two are also found by
`diagnose n1 --probe` run in n1's namespace (PEER_UNREACHABLE_PROBE, PATH_MTU_PROBE).
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshsec.v1 import admin_pb2, common_pb2
from tests.agent.meshlab import BIN, MeshLab, resource, wait_for
from tests.harness.netns import Host, Lab

pytestmark = [pytest.mark.netns, pytest.mark.timeout(240)]

BLOCK_IKE = """table inet diag {
  chain in {
    type filter hook input priority 0;
    udp dport { 500, 4500 } drop
  }
}
"""


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[MeshLab]:
    with Lab(prefix="dg-", workdir=tmp_path) as lab:
        m = MeshLab(lab)
        m.start_controller("--node-cert-hours", "0.5")
        m.mesh_policy()
        yield m


def meshctl(m: MeshLab, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "meshctl"), "--controller", f"unix:{m.admin_socket}", *args],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def findings(m: MeshLab, *args: str) -> list[dict[str, Any]]:
    result = meshctl(m, "diagnose", *args, "-o", "json")
    assert result.returncode in (0, 1), result.stderr
    doc = json.loads(result.stdout)
    assert result.returncode == (1 if any(f["severity"] == "error" for f in doc["findings"]) else 0)
    return list(doc["findings"])


def has(m: MeshLab, code: str, *args: str, where: str = "") -> list[dict[str, Any]]:
    return [f for f in findings(m, *args) if f["code"] == code and where in f["message"]]


def tunnel_between(m: MeshLab, a: str, b: str) -> str:
    for t in m.tunnels():
        if {e.name for e in t.ends} == {a, b}:
            return str(t.tunnel_id)
    raise AssertionError(f"no tunnel {a} <-> {b}")


def test_watch_and_wait_follow_a_tunnel_coming_up(mesh: MeshLab) -> None:
    mesh.add_node(1)
    log = mesh.work / "watch.out"
    with open(log, "w") as out:
        watch = subprocess.Popen(
            [str(BIN / "meshctl"), "--controller", f"unix:{mesh.admin_socket}", "get", "tunnels", "-w",
             "--timeout", "120s", "--interval", "0.5"],
            stdout=out, stderr=subprocess.STDOUT,
            # A runner started in the background has SIGINT ignored, and a child inherits that:
            # the watch must see the Ctrl-C this test sends whatever launched pytest.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )  # fmt: skip
    try:
        wait_for("the watch's header", lambda: "TUNNEL" in log.read_text(), 20)
        mesh.add_node(2)
        tid = wait_for("the n1-n2 tunnel", lambda: tunnel_between(mesh, "n1", "n2"), 20)
        done = meshctl(mesh, "wait", "--for=condition=Established", f"tunnel/{tid}", "--timeout", "60s")
        assert done.returncode == 0, done.stderr
        assert f"tunnel/{tid} condition met (Established)" in done.stdout
        wait_for("the watch to print the change", lambda: "ESTABLISHED" in log.read_text(), 20)
    finally:
        watch.send_signal(signal.SIGINT)
        assert watch.wait(10) == 130
    lines = log.read_text().splitlines()
    assert lines[0].split()[:3] == ["TUNNEL", "POLICY", "STATE"]
    assert any("n1 <-> n2" in line and "ESTABLISHED" in line for line in lines[1:]), lines

    # Nothing will bring an unknown tunnel up: exit 1 with what is still pending.
    late = meshctl(mesh, "wait", "--for=condition=Established", "tunnel/nope", "--timeout", "2s")
    assert late.returncode == 1
    assert "still pending tunnel/nope (NOT FOUND)" in late.stderr
    bad = meshctl(mesh, "wait", "--for=condition=Sleeping", "--all")
    assert bad.returncode == 2


def test_diagnose_finds_each_planted_fault(mesh: MeshLab) -> None:
    mesh.add_node(1)
    mesh.add_node(2)
    mesh.wait_mesh()
    up = common_pb2.TUNNEL_STATE_ESTABLISHED
    wait_for("n1-n2 established", lambda: any(t.state == up for t in mesh.tunnels()), 20)

    # The healthy mesh: only the short-lived certificates (30 min < 1 h) are worth a warning.
    got = wait_for("certificate expiry reported", lambda: has(mesh, "CERTIFICATE_EXPIRING"), 30)
    assert {f["object"] for f in got} == {"node/n1", "node/n2"}
    assert all(f["severity"] == "warning" for f in got)
    assert not [f for f in findings(mesh) if f["severity"] == "error"]

    # UDP 500/4500 dropped at n3 before its agent starts: nothing reaches it.
    def block(host: Host) -> None:
        host.run(["nft", "-f", "-"], input=BLOCK_IKE)

    mesh.add_node(3, before_agent=block)
    unreachable = wait_for("PEER_UNREACHABLE for n3", lambda: has(mesh, "PEER_UNREACHABLE", "n3"), 90)
    assert all(f["severity"] == "error" and "UDP 500 and 4500" in f["action"] for f in unreachable)
    assert {f["object"] for f in unreachable} <= {
        f"tunnel/{tunnel_between(mesh, 'n1', 'n3')}", f"tunnel/{tunnel_between(mesh, 'n2', 'n3')}"
    }
    assert not has(mesh, "PEER_UNREACHABLE", "--tunnel", tunnel_between(mesh, "n1", "n2"))

    # n1's underlay lowered to 1400: below the 1500 the userspace data plane is sized for.
    n1 = mesh.nodes["n1"]
    link = json.loads(n1.run(["ip", "-j", "route", "get", "198.18.0.2"]).stdout)[0]["dev"]
    n1.run(["ip", "link", "set", "dev", link, "mtu", "1400"])
    mtu = wait_for("PATH_MTU on n1", lambda: has(mesh, "PATH_MTU", "n1", where="is 1400, below the 1500"), 40)
    assert mtu[0]["severity"] == "error"
    assert not has(mesh, "PATH_MTU", "n2", where=": n2: ")  # n2 kept its 1500

    # The same two faults found by probing from n1 itself: an IKE_SA_INIT per peer, DF pings.
    run = n1.run([str(BIN / "meshctl"), "--controller", f"unix:{mesh.admin_socket}", "diagnose", "n1",
                  "--probe", "-o", "json"], check=False, timeout=90)  # fmt: skip
    assert run.returncode == 1, run.stderr
    probed = json.loads(run.stdout)["findings"]
    to_n2, to_n3 = tunnel_between(mesh, "n1", "n2"), tunnel_between(mesh, "n1", "n3")
    silent = [f for f in probed if f["code"] == "PEER_UNREACHABLE_PROBE"]
    assert [(f["object"], f["message"]) for f in silent] == [
        (f"tunnel/{to_n3}", "no IKE answer from 198.18.0.3:500 in 2 s")
    ]
    assert "check UDP 500/4500 firewalls between 198.18.0.1 and 198.18.0.3" in silent[0]["action"]
    sizes = {f["object"]: f for f in probed if f["code"] == "PATH_MTU_PROBE"}
    assert set(sizes) == {f"tunnel/{to_n2}", f"tunnel/{to_n3}"}
    assert "passes is 1400, below the 1500" in sizes[f"tunnel/{to_n2}"]["message"]
    assert sizes[f"tunnel/{to_n2}"]["severity"] == "error"
    # From a host that is not n1 (the test's own namespace), the probes say where to run them.
    away = meshctl(mesh, "diagnose", "n1", "--probe", "-o", "json")
    assert {f["code"] for f in json.loads(away.stdout)["findings"]} & {"PROBE_SKIPPED"}

    # Two gateways sending n1 and n2 at each other with nothing in common.
    channel, stub = mesh.admin()
    with channel:
        stub.PutSecret(admin_pb2.PutSecretRequest(name="eg-psk", value=b"k" * 32), timeout=10)
    mesh.apply(
        resource("ExternalGateway", "eg-a", {
            "address": "198.18.0.2", "ikeId": "198.18.0.2", "auth": {"pskSecretRef": "eg-psk"},
            "prefixes": ["198.19.102.0/24"], "sites": ["s1"],
            "crypto": {"ikeProposals": ["aes128-sha256-modp2048"],
                       "espProposals": ["aes128-sha256-modp2048"]}}),
        resource("ExternalGateway", "eg-b", {
            "address": "198.18.0.1", "ikeId": "198.18.0.1", "auth": {"pskSecretRef": "eg-psk"},
            "prefixes": ["198.19.101.0/24"], "sites": ["s2"],
            "crypto": {"ikeProposals": ["aes256gcm16-prfsha384-ecp384"],
                       "espProposals": ["aes256gcm16-ecp384"]}}),
    )  # fmt: skip
    mismatch = wait_for("PROPOSAL_MISMATCH", lambda: has(mesh, "PROPOSAL_MISMATCH"), 20)
    texts = " ".join(f["message"] for f in mismatch)
    assert "n1 offers IKE aes128-sha256-prfsha256-modp2048 to eg-a (n2)" in texts
    assert "which accepts only aes256gcm16-prfsha384-ecp384" in texts
    assert {f["code"] for f in has(mesh, "PROPOSAL_MISMATCH", "n1")} == {"PROPOSAL_MISMATCH"}
    # The agents' own failure, with its RFC 7296 notify name.
    refused = wait_for("NO_PROPOSAL_CHOSEN", lambda: has(mesh, "NO_PROPOSAL_CHOSEN"), 90)
    assert "offered IKE" in refused[0]["message"]

    # The table form: one line per finding, severity first.
    table = meshctl(mesh, "diagnose", "n1")
    assert table.returncode == 1
    rows = table.stdout.splitlines()
    assert rows[0].split()[:3] == ["SEVERITY", "OBJECT", "FINDING"]
    assert any(r.startswith("error") and "PATH_MTU" in r for r in rows[1:])
