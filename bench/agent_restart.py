"""Agent restart: how soon the restarted agent's control plane is back, and what restarting the
userspace data-plane daemon itself (its upgrade) costs.

A controller and two node agents in network namespaces (tests/agent/meshlab.py: real
`meshsec-controller`, `meshsec-agent run`, `meshsec-dataplane` started by each agent), the
userspace data plane, DPD after 2 s of silence, CHILD_SA lifetime 300 s (the smallest a
MeshPolicy takes).

1. Control plane back (no traffic, so DPD runs): n2 restarted by SIGTERM a few seconds after its
   CHILD_SA came up. From the new process's start: its status socket answering with the IKE SA
   resumed; the first IKE exchange on the resumed SA (a datagram received and one sent: n1's DPD
   answered or n2's own probe answered); the first CHILD_SA rekey done on the same IKE SA (new
   CHILD SPIs), with the CHILD_SA's age then (first seen by this script), so it can be compared
   with its schedule.
2. Daemon restart (`--daemon`, as deleting the daemon's pod does): n2's `meshsec-dataplane`
   stopped by SIGTERM under a 10 ms ping n1 -> n2; the agent exits (it lost the daemon: its view
   of the data plane would be wrong), is started again at once (as the kubelet restarts a
   container), starts a new daemon and re-establishes. Prints the packets lost and the outage.

Usage (root, a few minutes because of the rekey): python bench/agent_restart.py [--daemon]
[--no-rekey] [--json FILE]. Print `uptime` beside the numbers: on a shared machine the process
start dominates.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from meshsec.agent.dataplane.userspace.daemon import query  # noqa: E402
from tests.agent.meshlab import MeshLab, resource, wait_for  # noqa: E402
from tests.harness.netns import Lab, parse_ping  # noqa: E402

CHILD_LIFETIME = 300


def spis(m: MeshLab, name: str) -> tuple[list[str], set[tuple[str, str]]]:
    doc = m.status(name)
    children = {pair for pairs in m.child_spis(name).values() for pair in pairs}
    return sorted(sa["initiator_spi"] for sa in doc["ike_sas"]), children


def adapter_stats(m: MeshLab, name: str) -> dict[str, int]:
    return {k: int(v) for k, v in m.status(name)["stats"]["adapter"].items()}


def control_back(m: MeshLab, rekey: bool) -> dict[str, Any]:
    wait_for("a CHILD_SA on n2", lambda: spis(m, "n2")[1], 60)
    child_seen = time.monotonic()
    ike, children = spis(m, "n2")
    time.sleep(5.0)  # a few seconds of the CHILD_SA's life pass before the restart
    m.stop_agent("n2", signal.SIGTERM)
    started = time.monotonic()
    m.start_agent("n2")
    out: dict[str, Any] = {}

    def resumed() -> bool:
        return bool(m.status("n2")["resumed_at_start"])

    wait_for("n2's status after the restart", resumed, 60, 0.02)
    out["status_up_s"] = round(time.monotonic() - started, 3)
    out["resumed_at_start"] = m.status("n2")["resumed_at_start"]

    def exchanged() -> bool:
        s = adapter_stats(m, "n2")  # a new process: its counters start at 0
        return s.get("datagrams_received", 0) > 0 and s.get("datagrams_sent", 0) > 0

    wait_for("the first IKE exchange of the new process", exchanged, 60, 0.02)
    out["first_exchange_s"] = round(time.monotonic() - started, 3)
    out["same_ike_and_child_spis"] = spis(m, "n2") == (ike, children)
    if rekey:

        def rekeyed() -> bool:
            now_ike, now_children = spis(m, "n2")
            return now_ike == ike and bool(now_children) and not now_children & children

        wait_for("the first CHILD_SA rekey", rekeyed, CHILD_LIFETIME + 60, 0.1)
        out["first_rekey_s"] = round(time.monotonic() - started, 3)
        out["child_age_at_rekey_s"] = round(time.monotonic() - child_seen, 1)
    return out


def daemon_restart(m: MeshLab) -> dict[str, Any]:
    count, interval = 3000, 0.01
    ping_log = m.work / "ping-daemon.log"
    ping = m.nodes["n1"].popen(["ping", "-n", "-D", "-c", str(count), "-i", str(interval), "-W", "1",
                                "-I", "198.19.1.1", "198.19.2.1"], log=ping_log)  # fmt: skip
    time.sleep(2.0)
    pid = int(query(m.state_dir("n2") / "dataplane.sock")["hello"]["pid"])
    stopped = time.time()
    os.kill(pid, signal.SIGTERM)  # the daemon this run's n2 agent started
    agent = m.agents.pop("n2")
    code = agent.wait(60)  # it exits on losing the daemon
    exited = time.time()
    m.start_agent("n2")
    ping.wait(count * interval + 60)
    text = ping_log.read_text()
    result = parse_ping(text)
    replies = {int(x[2]): float(x[1]) for x in re.finditer(r"\[(\d+\.\d+)\] .*icmp_seq=(\d+)", text)}
    lost = [seq for seq in range(1, count + 1) if seq not in replies]
    # The outage: from the last reply before the first lost request to the first reply after the last.
    gap = 0.0
    if lost:
        before = [t for s, t in replies.items() if s < lost[0]]
        after = [t for s, t in replies.items() if s > lost[-1]]
        if before and after:
            gap = min(after) - max(before)
    new_pid = int(query(m.state_dir("n2") / "dataplane.sock")["hello"]["pid"])
    return {"transmitted": result.transmitted, "received": result.received, "lost": len(lost),
            "outage_s": round(gap, 2), "agent_exit_code": code,
            "agent_exited_after_s": round(exited - stopped, 2), "new_daemon": new_pid != pid,
            "resumed_at_start": m.status("n2")["resumed_at_start"]}  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--daemon", action="store_true", help="also restart n2's data-plane daemon under a ping")
    p.add_argument("--no-rekey", action="store_true", help="do not wait for the first CHILD_SA rekey")
    p.add_argument("--json", type=Path, help="write the results here too")
    args = p.parse_args()
    results: dict[str, Any] = {"uptime_before": Path("/proc/loadavg").read_text().split()[:3]}
    with Lab(prefix="h15r-") as lab:
        m = MeshLab(lab)
        m.start_controller()
        m.apply(resource("MeshPolicy", "mesh", {
            "topology": "full-mesh", "scope": "site", "members": {}, "auth": {"method": "psk"},
            "crypto": {"ikeProposals": ["aes256gcm16-prfsha256-x25519"], "espProposals": ["aes256gcm16"],
                       "pfs": False, "ikeLifetimeSeconds": 3 * CHILD_LIFETIME,
                       "childLifetimeSeconds": CHILD_LIFETIME,
                       "dpd": {"delaySeconds": 2, "timeoutSeconds": 10, "action": "restart"}},
        }))  # fmt: skip
        m.add_node(1)
        m.add_node(2)
        m.wait_mesh()
        results["control_back"] = control_back(m, rekey=not args.no_rekey)
        print(f"control plane back: {json.dumps(results['control_back'])}", flush=True)
        if args.daemon:
            m.wait_mesh()
            results["daemon_restart"] = daemon_restart(m)
            print(f"data-plane daemon restart: {json.dumps(results['daemon_restart'])}", flush=True)
        for name in list(m.agents):
            m.stop_agent(name)
        for name in ("n1", "n2"):  # the daemons the agents started (they outlive their agents)
            with contextlib.suppress(OSError, ValueError, KeyError):
                os.kill(int(query(m.state_dir(name) / "dataplane.sock")["hello"]["pid"]), signal.SIGTERM)
    results["uptime_after"] = Path("/proc/loadavg").read_text().split()[:3]
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
