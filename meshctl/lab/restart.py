"""``meshctl lab restart NODE | --all``: restart lab agents the way a DaemonSet rollout does
(SIGTERM, SIGKILL after the grace period, the same command started again), one after another,
each back and its tunnels up before the next, while every connected pair of workload hosts pings
every 10 ms; then the packets lost per pair and how long each agent took to be back.

A SIGTERM of a connected agent is a restart (docs/agent.md, "Restart and leave"): no DELETE, the
kernel data plane keeps forwarding and the next process adopts it. The userspace data plane lives
in the agent's process, so there the pings lose what the restart takes."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from meshsec.meshctl.client import AdminClient
from meshsec.meshctl.errors import UserError
from meshsec.meshctl.lab import netns, proof
from meshsec.meshctl.lab.plan import lab_world
from meshsec.meshctl.lab.progress import UP_STATES
from meshsec.meshctl.lab.state import RUN_DIR, LabState
from meshsec.meshctl.views import state_name

GRACE = 30.0  # the chart's terminationGracePeriodSeconds
PING_INTERVAL = "0.01"
_REPLY = re.compile(rb"bytes from .* icmp_seq=(\d+)")
PING_DIR = RUN_DIR / "restart-pings"


@dataclass(frozen=True)
class Restarted:
    node: str
    stopped_in: float  # SIGTERM to exit
    back_in: float  # start of the new process to it being ready with its tunnels up (its view)
    tunnels_in: float  # start of the new process to every lab tunnel up again


@dataclass(frozen=True)
class PairLoss:
    src_site: str
    dst: str
    sent: int
    received: int

    @property
    def lost(self) -> int:
        return self.sent - self.received


def agent_nodes(state: LabState) -> list[str]:
    return [p.name.removeprefix("agent/") for p in state.processes if p.name.startswith("agent/")]


def restart_agent(state: LabState, node: str, ready: Callable[[str], bool], tunnels_up: Callable[[], bool],
                  timeout: float) -> Restarted:  # fmt: skip
    proc = state.process(f"agent/{node}")
    if proc is None:
        raise UserError(f"the lab runs no agent for node {node!r}",
                        hint=f"nodes: {', '.join(agent_nodes(state))}")
    if not proc.argv:
        raise UserError(f"the lab did not record how agent {node} was started", hint="meshctl lab up again")
    if not proc.is_ours():
        raise UserError(f"agent {node} (pid {proc.pid}) is not running", hint=f"its log: {proc.log}")
    t0 = time.monotonic()
    left = netns.stop([proc.pid], grace=GRACE)
    if left:
        raise RuntimeError(f"agent {node} (pid {proc.pid}) survived SIGKILL")
    stopped_in = time.monotonic() - t0
    started = time.monotonic()
    pid = netns.popen(proc.ns, proc.argv, Path(proc.log))
    proc.pid, proc.start = pid, netns.start_time(pid)
    state.save()
    back_in = _until(lambda: ready(node), started, timeout, f"agent {node} ready again", proc.log)
    tunnels_in = _until(tunnels_up, started, timeout, "every lab tunnel up again", proc.log)
    return Restarted(node, stopped_in, back_in, tunnels_in)


def _until(check: Callable[[], bool], since: float, timeout: float, what: str, log: str) -> float:
    while not check():
        if time.monotonic() - since > timeout:
            raise RuntimeError(f"{what}: not within {timeout:.0f} s (see {log})")
        time.sleep(0.05)
    return time.monotonic() - since


def agent_ready(node: str) -> bool:
    """Ready (desired state applied) and every tunnel up in the agent's own view: the
    controller's may still be the one from before the restart."""
    from meshsec.agent.standalone.status import query_status

    sock = RUN_DIR / "agents" / f"{node}.sock"
    try:
        if query_status(sock, timeout=2.0, command="health").get("ready") is not True:
            return False
        tunnels = query_status(sock, timeout=5.0).get("tunnels") or []
    except (OSError, ValueError):
        return False
    return bool(tunnels) and all(t.get("state") in UP_STATES for t in tunnels)


def all_tunnels_up(client: AdminClient, wanted: set[str]) -> bool:
    states = {t.tunnel_id: t.state for t in client.tunnels() if t.tunnel_id in wanted}
    return len(states) == len(wanted) and all(state_name(s) in UP_STATES for s in states.values())


Pinger = tuple[proof.Probe, "subprocess.Popen[bytes]", Path]


def start_pings(probes: Sequence[proof.Probe]) -> list[Pinger]:
    """One `ping -i 0.01` per expected-reply probe, its replies written to a file (a pipe would
    fill and stall it), until `stop_pings`."""
    PING_DIR.mkdir(parents=True, exist_ok=True)
    running: list[Pinger] = []
    for i, probe in enumerate(p for p in probes if p.expect_reply):
        out = PING_DIR / f"{i}.log"
        argv = netns.in_ns(probe.src_ns, ["ping", "-n", "-i", PING_INTERVAL, "-W", "1", probe.dst])
        with open(out, "wb") as sink:
            running.append((probe, subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT), out))
    return running


def stop_pings(running: Sequence[Pinger]) -> list[PairLoss]:
    """Lost: the requests up to the last one answered that got no reply. Requests after it were in
    flight when ping stopped (the caller pings on for a while after the last restart, so a pair
    that stopped answering for good shows as a pair with no late replies, not as no loss). ping's
    16-bit icmp_seq wraps after 655 s at this interval: far beyond a few restarts."""
    for _, p, _ in running:
        p.send_signal(signal.SIGINT)
    found = []
    for probe, p, out in running:
        p.wait(10)
        seqs = {int(m.group(1)) for m in _REPLY.finditer(out.read_bytes())}
        last = max(seqs, default=0)
        found.append(PairLoss(probe.src_site, probe.dst, last, len(seqs)))
    return found


def restart(nodes: Sequence[str], client: AdminClient, say: Callable[[str], None],
            timeout: float = 60.0) -> tuple[list[Restarted], list[PairLoss]]:  # fmt: skip
    state = LabState.load()
    if state is None or state.phase != "up":
        raise UserError("no lab is up", hint="meshctl lab up")
    if state.mode != "connected":
        raise UserError(f"lab agents run {state.mode or 'not at all'}: restart needs connected agents "
                        "(their SIGTERM is a restart; standalone agents delete their SAs)",
                        hint="meshctl lab up --agents connected")  # fmt: skip
    plan = lab_world(with_external=state.external, datacenters=state.datacenters)
    tunnels = client.tunnels()
    wanted = {t.tunnel_id for t in tunnels}
    running = start_pings(proof.probes(plan, tunnels))
    done: list[Restarted] = []
    try:
        time.sleep(0.5)  # a baseline before the first stop
        for node in nodes:
            say(f"restarting agent {node} (SIGTERM, then the same command) ...")
            r = restart_agent(state, node, agent_ready, lambda: all_tunnels_up(client, wanted), timeout)
            say(f"  {node}: stopped in {r.stopped_in:.2f} s; ready {r.back_in:.2f} s and every tunnel up "
                f"{r.tunnels_in:.2f} s after its start")  # fmt: skip
            done.append(r)
        time.sleep(1.0)  # replies after the last restart: what was lost before them is known
    finally:
        losses = stop_pings(running)
    return done, losses
