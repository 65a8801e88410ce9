"""Hitless agent restarts on the kernel data plane (issue 15), in the qemu kernel lane: a controller
and two node agents (`meshsec-agent run --dataplane kernel`) in namespaces, a 10 ms ping from n1
to n2 through their tunnel, and n2 restarted three times: SIGTERM then start, kill -9 then start,
and an upgrade to a build whose IKE state version is one higher (it reads the previous version
through its migration). Each time n2 resumes its IKE SA from the state dir: nothing lost, the
peer sees no DELETE and no new IKE SA, IKE and CHILD SPIs stay until the CHILD_SA's scheduled
rekey, which then comes on time. Then the state file is removed between stop and start: the
make-before-break fallback, its loss printed (target 0)."""

from __future__ import annotations

import json
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshsec.agent.node.statedir import IKE_STATE_VERSION
from tests.agent.meshlab import MeshLab, resource, wait_for
from tests.harness.netns import Lab, PingResult, parse_ping

pytestmark = pytest.mark.kernelvm

CHILD_LIFETIME = 300  # the controller's minimum: the CHILD_SA rekeys a little before it
SLOW = 150.0  # an agent's start in the software-emulated guest
UPGRADED = [sys.executable, "-c",
            "import sys\n"
            "from meshsec.agent.node import statedir\n"
            "statedir.IKE_STATE_MIGRATIONS[statedir.IKE_STATE_VERSION] = lambda sas: sas\n"
            "statedir.IKE_STATE_VERSION += 1\n"
            "from meshsec.agent.cli import main\n"
            "sys.argv[0] = 'meshsec-agent'\n"
            "sys.exit(main())\n"]  # fmt: skip


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[MeshLab]:
    with Lab(prefix="kr-", workdir=tmp_path) as lab:
        m = MeshLab(lab)
        m.dataplane = "kernel"
        m.start_controller(timeout=SLOW)
        m.apply(resource("MeshPolicy", "mesh", {
            "topology": "full-mesh", "scope": "site", "members": {}, "auth": {"method": "psk"},
            "crypto": {"ikeProposals": ["aes256gcm16-prfsha256-x25519"], "espProposals": ["aes256gcm16"],
                       "pfs": False, "ikeLifetimeSeconds": 3 * CHILD_LIFETIME,
                       "childLifetimeSeconds": CHILD_LIFETIME,
                       "dpd": {"delaySeconds": 5, "timeoutSeconds": 30, "action": "restart"}},
        }))  # fmt: skip
        try:
            yield m
        finally:  # the agents' logs to the host (the guest's /tmp goes with it; 9p takes no sockets)
            results = Path("/lane-results")
            if results.is_dir():
                (results / "logs").mkdir(exist_ok=True)
                for log in tmp_path.glob("*.log"):
                    shutil.copy(log, results / "logs" / log.name)


def spis(m: MeshLab, name: str) -> tuple[list[str], set[tuple[str, str]]]:
    doc = m.status(name)
    return sorted(sa["initiator_spi"] for sa in doc["ike_sas"]), m.child_spis(name).get(
        "n1" if name == "n2" else "n2", set())


def deleted_by_peer(m: MeshLab, name: str) -> list[dict[str, Any]]:
    return [r for r in m.status(name)["recent"] if "by peer" in str(r.get("outcome"))]


def restart(m: MeshLab, sig: int, program: list[str] | None = None, between: Any = None) -> float:
    """Stops n2 with `sig`, starts it again; returns seconds from the start until its status
    shows the IKE SA resumed (or, after a fallback, a tunnel up)."""
    m.stop_agent("n2", sig)
    if between is not None:
        between()
    t0 = time.monotonic()
    m.start_agent("n2", program)
    wait_for("n2's status", lambda: bool(m.status("n2")["resumed_at_start"]), SLOW)
    return time.monotonic() - t0


@pytest.mark.timeout(1300)  # the emulated guest: agents start in 15-45 s, the rekey comes at ~5 min
def test_three_restarts_lose_nothing_then_the_rekey_comes_on_time(mesh: MeshLab) -> None:
    mesh.add_node(1)
    mesh.add_node(2)
    mesh.wait_mesh(timeout=SLOW)
    wait_for("one CHILD_SA each", lambda: all(spis(mesh, n)[1] for n in ("n1", "n2")), SLOW)
    established = time.monotonic()
    before = {n: spis(mesh, n) for n in ("n1", "n2")}
    # (a duplicate of the start, both ends having initiated, was deleted by its peer already)
    earlier = len(deleted_by_peer(mesh, "n1"))
    ping_log = mesh.work / "ping-10ms.log"
    ping = mesh.nodes["n1"].popen(["ping", "-n", "-q", "-i", "0.01", "-W", "1", "-I", "198.19.1.1",
                                   "198.19.2.1"], log=ping_log)  # fmt: skip
    back: dict[str, float] = {}
    try:
        time.sleep(2)
        for label, sig, program in (("SIGTERM", signal.SIGTERM, None), ("kill -9", signal.SIGKILL, None),
                                    ("upgrade", signal.SIGTERM, UPGRADED)):  # fmt: skip
            back[label] = restart(mesh, sig, program)
            doc = mesh.status("n2")
            assert doc["resumed_at_start"]["resumed"] == 1, (label, doc["resumed_at_start"])
            assert {n: spis(mesh, n) for n in ("n1", "n2")} == before, label
            assert len(deleted_by_peer(mesh, "n1")) == earlier, label
            time.sleep(3)  # traffic and the peer's DPD reach the resumed SA
        state = json.loads((mesh.state_dir("n2") / "ike-sas.json").read_text())
        assert state["version"] == IKE_STATE_VERSION + 1  # written by the upgraded build
    finally:
        ping.send_signal(signal.SIGINT)
        ping.wait(15)
    result: PingResult = parse_ping(ping_log.read_text())
    lost = result.transmitted - result.received
    print(f"\n10 ms ping across 3 restarts: {result.transmitted} sent, {lost} lost; n2 back (status up, "
          f"IKE SA resumed) after {back}")  # fmt: skip
    assert result.transmitted > 300 and result.received == result.transmitted, result.output
    log = (mesh.work / "n2.log").read_text()
    assert log.count("resumed 1 IKE SA(s) of 1") == 3
    assert f"state version {IKE_STATE_VERSION}" in log  # the upgraded build read what this one wrote
    n1_ike = spis(mesh, "n1")[0]

    # The CHILD_SA rekey comes when it was scheduled before the restarts (a little before the
    # lifetime, less the controller's jitter), on the same IKE SA.
    def rekeyed() -> set[tuple[str, str]]:
        now = spis(mesh, "n1")[1]
        return now if now and not now & before["n1"][1] else set()  # the old pair gone too

    changed = wait_for("the CHILD_SA rekey", rekeyed, CHILD_LIFETIME + 60, interval=1.0)
    at = time.monotonic() - established
    print(f"CHILD_SA rekeyed {at:.0f} s after it was established (lifetime {CHILD_LIFETIME} s)")
    assert 0.5 * CHILD_LIFETIME < at < CHILD_LIFETIME + 10 and len(changed) == 1
    assert spis(mesh, "n1")[0] == n1_ike and len(deleted_by_peer(mesh, "n1")) == earlier

    # The state file gone between stop and start: a new IKE SA, make-before-break; loss reported.
    ping_log = mesh.work / "ping-10ms-fallback.log"  # (a log of its own: popen appends)
    ping = mesh.nodes["n1"].popen(["ping", "-n", "-q", "-i", "0.01", "-W", "1", "-I", "198.19.1.1",
                                   "198.19.2.1"], log=ping_log)  # fmt: skip
    try:
        time.sleep(2)
        restart(mesh, signal.SIGTERM, between=lambda: (mesh.state_dir("n2") / "ike-sas.json").unlink())
        wait_for("a new IKE SA with n2", lambda: spis(mesh, "n1")[0] not in (n1_ike, []), SLOW)
        time.sleep(3)
    finally:
        ping.send_signal(signal.SIGINT)
        ping.wait(15)
    fallback = parse_ping(ping_log.read_text())
    lost = fallback.transmitted - fallback.received
    print(f"state file removed: fallback to a new IKE SA, {fallback.transmitted} sent, {lost} lost")
    assert "no IKE SA resumed" in (mesh.work / "n2.log").read_text()
    assert fallback.received > 0
