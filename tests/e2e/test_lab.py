"""The lab as the system-test bed: `meshctl lab up` builds the namespace world, starts the real
controller, strongSwan and one agent per gateway node, and proves traffic across every connected
site pair (through the cloud VPC's masquerading NAT and to the external strongSwan gateway); a
policy removed and re-added under traffic changes exactly its own tunnel; `lab down` leaves
nothing behind.

One lab serves the whole module (bringing it up takes ~20 s). If a lab is already running on this
machine (someone's `meshctl lab up`), the module is skipped rather than tearing it down.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from meshsec.meshctl.lab.plan import HOST_IF, PREFIX
from meshsec.meshctl.lab.state import DATA_DIR, RUN_DIR, STATE_FILE, LabState

pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.timeout(400)]

MESHCTL = str(Path(sys.executable).parent / "meshctl")
EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "examples" / "lab-mesh.yaml"
SOCKET = RUN_DIR / "admin.sock"


def meshctl(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MESHSEC_CONTROLLER": str(SOCKET), "NO_COLOR": "1"}
    return subprocess.run(
        [MESHCTL, *args], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


def namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def host_routes() -> str:
    return subprocess.run(["ip", "route", "show"], capture_output=True, text=True, check=True).stdout


def tunnels() -> dict[str, dict[str, object]]:
    """{"a <-> b": TunnelInfo as JSON} from the lab's controller."""
    got = meshctl("get", "tunnels", "-o", "json")
    assert got.returncode == 0, got.stderr
    return {" <-> ".join(e["name"] for e in t["ends"]): t for t in json.loads(got.stdout)["items"]}


def wait_for(what: str, predicate: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")


def ping(src_ns: str, dst: str, count: int = 2) -> bool:
    argv = ["ip", "netns", "exec", src_ns, "ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", "1", dst]
    return subprocess.run(argv, capture_output=True, timeout=30, check=False).returncode == 0


@dataclass
class UpLab:
    output: str
    seconds: float
    state: LabState


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpLab]:
    if STATE_FILE.exists() or any(ns.startswith(PREFIX) for ns in namespaces()):
        pytest.skip("a meshsec lab is already running on this machine; not tearing it down")
    routes_before = host_routes()
    start = time.monotonic()
    up = meshctl("lab", "up", "--timeout", "90", timeout=300)
    seconds = time.monotonic() - start
    state = LabState.load()
    try:
        assert up.returncode == 0, f"lab up exited {up.returncode}\n{up.stdout}\n{up.stderr}"
        assert state is not None
        yield UpLab(up.stdout + up.stderr, seconds, state)
    finally:
        if LabState.load() is not None:
            keep = tmp_path_factory.mktemp("lab-logs")
            shutil.copytree(DATA_DIR / "logs", keep / "logs", dirs_exist_ok=True)
            sys.stderr.write(f"\nlab logs kept in {keep}\n")
            meshctl("lab", "down")
        assert host_routes() == routes_before


def test_lab_up_proves_traffic_across_every_connected_site_pair(lab: UpLab) -> None:
    out = lab.output
    assert "tunnels up 4/4" in out or "tunnels up 3/3" in out
    probes = [line for line in out.splitlines() if " -> " in line and ("ok" in line or "FAILED" in line)]
    assert len(probes) >= 6 and all(line.rstrip().endswith("ok") for line in probes), "\n".join(probes)
    assert "dc1 -> vpc" in out and "vpc -> dc1" in out and "dc1 -> dc2" in out
    current = tunnels()
    assert {"dc1-gw1 <-> dc2-gw1", "dc1-gw1 <-> vpc-gw1"} <= set(current)
    assert all(t["state"] == "TUNNEL_STATE_ESTABLISHED" for t in current.values())
    # The VPC gateway sits behind a masquerading NAT box: its tunnel runs NAT-T.
    vpc = current["dc1-gw1 <-> vpc-gw1"]
    assert any(e.get("status", {}).get("ikeSa", {}).get("natDetected") for e in vpc["ends"])  # type: ignore[union-attr,attr-defined]
    assert (DATA_DIR / "topology.svg").read_text().lstrip().startswith("<?xml")
    status = meshctl("lab", "status")
    assert status.returncode == 0
    assert "9/9 present" in status.stdout or "8/8 present" in status.stdout
    sys.stderr.write(f"\nlab up took {lab.seconds:.1f}s\n")


def test_removing_a_policy_under_traffic_touches_only_its_tunnels(lab: UpLab) -> None:
    """Delete the hub-and-spoke policy while dc1 pings dc2: the dc1-vpc tunnel goes away and the
    VPC becomes unreachable, dc1-dc2 (another policy) keeps its SPIs and loses no packet; applying
    the policy again brings the VPC back."""
    before = tunnels()
    spis = [e["status"]["childSas"][0]["spiIn"] for e in before["dc1-gw1 <-> dc2-gw1"]["ends"]]  # type: ignore[index]
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
        policy = [doc for doc in EXAMPLE.read_text().split("\n---\n") if "name: cloud-attach" in doc]
        path = RUN_DIR / "cloud-attach.yaml"
        path.write_text(policy[0])
        applied = meshctl("apply", "-f", str(path))
        assert applied.returncode == 0 and "created" in applied.stdout, applied.stderr
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
    assert [e["status"]["childSas"][0]["spiIn"] for e in after["ends"]] == spis  # type: ignore[index]


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
