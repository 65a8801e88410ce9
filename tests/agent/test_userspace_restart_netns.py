"""The real agent (`meshsec-agent run`, userspace data plane) restarted by kill -9 under a 10 ms
ping: the data-plane daemon it started (`meshsec-dataplane`, its own session) forwards on while
no agent runs, and the next agent adopts exactly what the daemon holds (and is handed its UDP
4500 socket back).

- With its IKE state file the new agent resumes the IKE SA on the adopted CHILD_SAs: the same
  SPIs everywhere, nothing lost.
- Without it (removed between stop and start), or with it corrupted (cut short, as a crash
  during a non-atomic copy would leave it), it falls back to a new IKE SA, make-before-break:
  nothing lost while no agent ran, the reason logged, and the SAs its new CHILD_SAs make stale
  are removed from the daemon by the sweeper, nothing else. The loss of each restart is printed
  (target 0; docs/benchmarks.md records it).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshsec.agent.dataplane.userspace.daemon import query
from tests.agent.meshlab import MeshLab, wait_for
from tests.harness.netns import Lab, lost_at, parse_ping

pytestmark = [pytest.mark.netns, pytest.mark.timeout(300)]


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[MeshLab]:
    with Lab(prefix="ur-", workdir=tmp_path) as lab:
        m = MeshLab(lab)
        m.start_controller()
        m.mesh_policy()
        yield m


def held(m: MeshLab, name: str) -> dict[str, Any]:
    """What node `name`'s data-plane daemon holds, read beside the agent's connection."""
    return query(m.state_dir(name) / "dataplane.sock")


def held_spis(m: MeshLab, name: str) -> set[str]:
    return {f"{sa['spi']:08x}" for sa in held(m, name)["sas"]}


def live_spis(m: MeshLab, name: str) -> set[str]:
    return {s for spis in m.child_spis(name).values() for pair in spis for s in pair}


def restart_under_ping(mesh: MeshLab, tag: str, between: Any = None) -> tuple[list[float], float, float]:
    """kill -9 n2's agent 1 s into a 20 s ping from n1, 1 s without an agent (`between` runs
    then), start it again; returns when each lost request was sent, the kill and when the new
    agent was up (its log's clock)."""
    ping_log = mesh.work / f"ping-{tag}.log"
    count = 2000
    ping = mesh.nodes["n1"].popen(["ping", "-n", "-D", "-c", str(count), "-i", "0.01", "-W", "1",
                                   "-I", "198.19.1.1", "198.19.2.1"], log=ping_log)  # fmt: skip
    time.sleep(1.0)
    killed = time.time()
    mesh.stop_agent("n2", signal.SIGKILL)
    if between is not None:
        between()
    time.sleep(1.0)  # no agent at all: the daemon forwards alone
    started = time.time()
    mesh.start_agent("n2")
    # Generous: on this shared 2-core machine a loaded start took up to 10 s.
    wait_for("the restarted agent's status", lambda: mesh.status("n2"), 60)
    agent_up = last_up(mesh.work / "n2.log")
    ping.wait(90)
    text = ping_log.read_text()
    result = parse_ping(text)
    assert result.transmitted == count, text[-500:]
    lost = lost_at(text, count)
    print(f"kill -9 restart ({tag}), userspace daemon: {len(lost)} of {count} lost "
          f"({', '.join(f'{t - killed:+.2f} s' for t in lost)} from the kill; agent up "
          f"{agent_up - killed:.2f} s after it, {agent_up - started:.2f} s after its start)")
    return lost, killed, agent_up


def test_kill_9_under_a_10ms_ping_loses_nothing_and_the_agent_adopts(mesh: MeshLab) -> None:
    for n in (1, 2):
        mesh.add_node(n)
    mesh.wait_mesh()
    wait_for("n2's daemon holds exactly its live CHILD_SAs",
             lambda: held_spis(mesh, "n2") == live_spis(mesh, "n2") != set(), 40)  # fmt: skip
    before = held(mesh, "n2")
    daemon_pid = before["hello"]["pid"]
    spis = {name: mesh.child_spis(name) for name in mesh.nodes}

    # Resumed: the daemon kept the CHILD_SAs, the state file the IKE SA.
    lost, _, _ = restart_under_ping(mesh, "resume")
    doc = mesh.status("n2")
    assert doc["adopted_at_start"] == len(before["sas"]) + len(before["policies"]) > 0
    assert held(mesh, "n2")["hello"]["pid"] == daemon_pid
    assert "1 UDP socket(s) kept from an earlier run" in (mesh.work / "n2.log").read_text()
    assert {name: mesh.child_spis(name) for name in mesh.nodes} == spis  # nothing renegotiated
    assert held_spis(mesh, "n2") == {f"{sa['spi']:08x}" for sa in before["sas"]}
    assert lost == []

    # Fallback: no state file, so a new IKE SA; the adopted CHILD_SAs carry the traffic until
    # the new ones are installed, and the sweeper removes them from the daemon afterwards.
    state_file = mesh.state_dir("n2") / "ike-sas.json"
    lost, killed, agent_up = restart_under_ping(mesh, "fallback", lambda: state_file.unlink(missing_ok=True))
    assert not [t for t in lost if killed - 0.1 <= t <= agent_up], lost  # the daemon alone lost nothing
    wait_for("n2 with new CHILD_SAs", lambda: live_spis(mesh, "n2") and not
             live_spis(mesh, "n2") & {f"{sa['spi']:08x}" for sa in before["sas"]}, 60)  # fmt: skip
    wait_for("stale SAs gone from n2's daemon", lambda: held_spis(mesh, "n2") == live_spis(mesh, "n2"), 60)
    assert held(mesh, "n2")["hello"]["pid"] == daemon_pid
    # The make-before-break switch itself (takeover.py): target 0; measured 0 of 2000 in 6 runs,
    # 1-5 before the answering peer held its new outbound SA (docs/benchmarks.md); printed above,
    # not asserted (a loss budget would be a timing assert).
    assert mesh.ping("n2", "n1")

    # Corrupted: the file cut short. The same fallback, the reason logged (never the content).
    fallback_spis = held_spis(mesh, "n2")
    text = state_file.read_bytes()
    assert text

    def corrupt() -> None:
        state_file.write_bytes(text[: len(text) // 2])

    lost, killed, agent_up = restart_under_ping(mesh, "corrupt", corrupt)
    log = (mesh.work / "n2.log").read_text()
    assert log.count("ike-sas.json is unreadable or not JSON") == 1, log[-2000:]
    assert mesh.status("n2")["resumed_at_start"]["resumed"] == 0
    assert not [t for t in lost if killed - 0.1 <= t <= agent_up], lost
    wait_for("n2 with new CHILD_SAs again", lambda: live_spis(mesh, "n2") and not
             live_spis(mesh, "n2") & fallback_spis, 60)  # fmt: skip
    wait_for("stale SAs gone again", lambda: held_spis(mesh, "n2") == live_spis(mesh, "n2"), 60)
    assert held(mesh, "n2")["hello"]["pid"] == daemon_pid
    assert mesh.ping("n2", "n1")


def last_up(log: Path) -> float:
    """When the agent last logged that it is up (its log's timestamps are local time)."""
    import datetime

    line = [x for x in log.read_text().splitlines() if "meshsec agent n2 up" in x][-1]
    return datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
