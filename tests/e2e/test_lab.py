"""The lab as the system-test bed: `meshctl lab up` builds the namespace world, starts the real
controller, strongSwan and one agent per gateway node, and proves traffic across every connected
site pair (through the cloud VPC's masquerading NAT and to the external strongSwan gateway); a
policy removed and re-added under traffic changes exactly its own tunnel; `lab down` leaves
nothing behind.

One lab serves the whole module (bringing it up takes ~20 s). If a lab is already running on this
machine (someone's `meshctl lab up`), the module is skipped rather than tearing it down.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshsec.meshctl.lab.plan import HOST_IF, PREFIX
from meshsec.meshctl.lab.state import DATA_DIR, RUN_DIR, LabState
from tests.e2e.lab_driver import (
    UpLab,
    apply_yaml,
    example_document,
    meshctl,
    namespaces,
    ping,
    running_lab,
    tunnels,
    wait_for,
)

pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.timeout(400)]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpLab]:
    with running_lab(["--timeout", "90"], tmp_path_factory.mktemp("lab-logs")) as up:
        yield up


def test_lab_up_proves_traffic_across_every_connected_site_pair(lab: UpLab) -> None:
    out = lab.output
    assert "tunnels up 4/4" in out or "tunnels up 3/3" in out
    probes = [line for line in out.splitlines() if " -> " in line and ("ok" in line or "FAILED" in line)]
    assert len(probes) >= 6 and all(line.rstrip().endswith("ok") for line in probes), "\n".join(probes)
    assert "dc1 -> vpc" in out and "vpc -> dc1" in out and "dc1 -> dc2" in out
    if "tunnels up 4/4" in out:  # with strongSwan: bob's laptop too, a controller lease
        assert "road warrior bob/laptop -> dc1" in out and "got 198.19.60." in out, out
        leases = meshctl("get", "leases")
        assert "bob" in leases.stdout and "dc1-gw1" in leases.stdout, leases.stdout
    current = tunnels()
    assert {"dc1-gw1 <-> dc2-gw1", "dc1-gw1 <-> vpc-gw1"} <= set(current)
    assert all(t["state"] == "TUNNEL_STATE_ESTABLISHED" for t in current.values())
    # The VPC gateway sits behind a masquerading NAT box: its tunnel runs NAT-T.
    vpc = current["dc1-gw1 <-> vpc-gw1"]
    assert any(e.get("status", {}).get("ikeSa", {}).get("natDetected") for e in vpc["ends"])
    assert (DATA_DIR / "topology.svg").read_text().lstrip().startswith("<?xml")
    status = meshctl("lab", "status")
    assert status.returncode == 0
    assert "10/10 present" in status.stdout or "8/8 present" in status.stdout
    sys.stderr.write(f"\nlab up took {lab.seconds:.1f}s\n")


def test_removing_a_policy_under_traffic_touches_only_its_tunnels(lab: UpLab) -> None:
    """Delete the hub-and-spoke policy while dc1 pings dc2: the dc1-vpc tunnel goes away and the
    VPC becomes unreachable, dc1-dc2 (another policy) keeps its SPIs and loses no packet; applying
    the policy again brings the VPC back."""
    before = tunnels()
    spis = [e["status"]["childSas"][0]["spiIn"] for e in before["dc1-gw1 <-> dc2-gw1"]["ends"]]
    ping_log = RUN_DIR / "e2e-ping.log"
    with open(ping_log, "w") as log:
        pinger = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                f"{PREFIX}dc1-host",
                "ping",
                "-n",
                "-i",
                "0.1",
                "-w",
                "60",
                "198.19.2.10",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deleted = meshctl("delete", "policy", "cloud-attach")
        assert deleted.returncode == 0, deleted.stderr
        wait_for("the dc1-vpc tunnel to be removed", lambda: "dc1-gw1 <-> vpc-gw1" not in tunnels(), 30)
        wait_for(
            "the VPC to become unreachable", lambda: not ping(f"{PREFIX}dc1-host", "198.19.30.10", 1), 30
        )
        applied = apply_yaml(example_document("MeshPolicy", "cloud-attach"), RUN_DIR / "cloud-attach.yaml")
        assert "meshpolicy/cloud-attach created" in applied
        wait_for(
            "the dc1-vpc tunnel to come back",
            lambda: tunnels().get("dc1-gw1 <-> vpc-gw1", {}).get("state") == "TUNNEL_STATE_ESTABLISHED",
            60,
        )
        wait_for("the VPC to answer again", lambda: ping(f"{PREFIX}dc1-host", "198.19.30.10"), 30)
    finally:
        os.kill(pinger.pid, signal.SIGINT)  # ping prints its summary on SIGINT
        pinger.wait(10)
    summary = ping_log.read_text()
    assert " 0% packet loss" in summary, summary[-400:]
    after = tunnels()["dc1-gw1 <-> dc2-gw1"]
    assert [e["status"]["childSas"][0]["spiIn"] for e in after["ends"]] == spis


def test_lab_restart_restarts_an_agent_like_a_rollout_and_reports_loss_per_pair(lab: UpLab) -> None:
    """`meshctl lab restart dc2-gw1` (peers dc1 and strongSwan): a new agent process (SIGTERM
    was a restart, its log says so), ready with every tunnel up again, and a row of packets lost
    per pinging pair; the exit status is 0 exactly when no pair lost a packet."""
    before = LabState.load()
    assert before is not None
    old = before.process("agent/dc2-gw1")
    assert old is not None and old.argv
    done = meshctl("lab", "restart", "dc2-gw1", timeout=180)
    out = done.stdout + done.stderr
    assert "restarting agent dc2-gw1" in out and "every tunnel up" in out, out
    rows = [line.split() for line in done.stdout.splitlines() if " -> " in line]
    assert {(r[0], r[2]) for r in rows} >= {("dc1", "198.19.2.10"), ("dc2", "198.19.1.10")}, done.stdout
    lost = [int(r[-1]) for r in rows]
    assert all(int(r[-3]) > 0 for r in rows)  # every pair pinged throughout
    assert done.returncode == (0 if sum(lost) == 0 else 1), out
    after = LabState.load()
    assert after is not None
    new = after.process("agent/dc2-gw1")
    assert new is not None and new.pid != old.pid and new.is_ours() and new.argv == old.argv
    assert "restart: data plane left forwarding, only peers that initiate told" in Path(old.log).read_text()
    established = lambda: all(t["state"] == "TUNNEL_STATE_ESTABLISHED" for t in tunnels().values())  # noqa: E731
    wait_for("every tunnel ESTABLISHED in the controller", established, 30)
    sys.stderr.write(f"\nlab restart dc2-gw1: {sum(lost)} lost over {len(rows)} pairs\n{out}")


def test_lab_down_removes_everything_it_created(lab: UpLab) -> None:
    pids = [p.pid for p in lab.state.processes]
    down = meshctl("lab", "down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert [ns for ns in namespaces() if ns.startswith(PREFIX)] == []
    link = subprocess.run(["ip", "link", "show", HOST_IF], capture_output=True, check=False)
    assert link.returncode != 0
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    assert not RUN_DIR.exists() and not DATA_DIR.exists()
    again = meshctl("lab", "down")
    assert again.returncode == 0 and "nothing to remove" in again.stderr
