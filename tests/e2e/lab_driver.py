"""Driving a running `meshctl lab` from tests: the CLI, the controller's tunnels as JSON, the agents'
and strongSwan's own view, continuous pings, and a lab's whole life (up, then down in a finally,
proving nothing is left behind).

Only one lab can run on a machine (its namespaces all carry the prefix ``msl-``): a module that
finds one running is skipped rather than tearing someone's lab down.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from meshsec.meshctl.lab.plan import HOST_IF, PREFIX
from meshsec.meshctl.lab.preflight import find
from meshsec.meshctl.lab.state import DATA_DIR, RUN_DIR, STATE_FILE, LabState
from meshsec.meshctl.lab.strongswan import Charon

MESHCTL = str(Path(sys.executable).parent / "meshctl")
EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "examples" / "lab-mesh.yaml"
SOCKET = RUN_DIR / "admin.sock"
ESTABLISHED = "TUNNEL_STATE_ESTABLISHED"

Tunnel = dict[str, Any]  # a TunnelInfo as meshctl's JSON prints it


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


def tunnels() -> dict[str, Tunnel]:
    """{"a <-> b": TunnelInfo as JSON} from the lab's controller."""
    got = meshctl("get", "tunnels", "-o", "json")
    assert got.returncode == 0, got.stderr
    return {" <-> ".join(e["name"] for e in t["ends"]): t for t in json.loads(got.stdout)["items"]}


def child_spis(tunnel: Tunnel) -> list[tuple[int, int]]:
    """(spiIn, spiOut) of the first CHILD_SA each reporting end has."""
    return [
        (c[0]["spiIn"], c[0]["spiOut"])
        for e in tunnel["ends"]
        if (c := (e.get("status") or {}).get("childSas"))
    ]


def wait_for(what: str, predicate: Callable[[], object], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")


def ping(src_ns: str, dst: str, count: int = 2) -> bool:
    argv = ["ip", "netns", "exec", src_ns, "ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", "1", dst]
    return subprocess.run(argv, capture_output=True, timeout=30, check=False).returncode == 0


def ping_ttls(src_ns: str, dst: str, count: int = 3) -> list[int]:
    """The TTL of each reply (64 less one per router on the way back); empty when none came."""
    argv = ["ip", "netns", "exec", src_ns, "ping", "-n", "-c", str(count), "-i", "0.2", "-W", "1", dst]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False).stdout
    return [int(ttl) for ttl in re.findall(r"icmp_seq=\d+ ttl=(\d+)", out)]


def apply_yaml(text: str, path: Path) -> str:
    """Apply one manifest through meshctl; returns its stdout (``<kind>/<name> created|configured``)."""
    path.write_text(text)
    applied = meshctl("apply", "-f", str(path))
    assert applied.returncode == 0, applied.stdout + applied.stderr
    return applied.stdout


def example_document(kind: str, name: str) -> str:
    """One resource of the lab's example manifest, as YAML text."""
    docs = [
        d for d in EXAMPLE.read_text().split("\n---\n") if f"kind: {kind}\n" in d and f"name: {name}\n" in d
    ]
    assert len(docs) == 1, f"{kind}/{name} in {EXAMPLE}"
    return docs[0]


# dc3 as `--datacenters 3` builds it: subnet 198.19.3.0/24, binds 198.18.103.1, public 198.18.4.1.
DC3 = """
apiVersion: meshsec.io/v1alpha1
kind: Site
metadata:
  name: dc3
  labels: {region: us-east, provider: onprem, kind: datacenter}
spec:
  prefixes: [198.19.3.0/24]
  gatewaySelector: {matchLabels: {role: gateway}}
---
apiVersion: meshsec.io/v1alpha1
kind: Node
metadata:
  name: dc3-gw1
  labels: {role: gateway}
spec:
  site: dc3
  endpoints: {public: [198.18.4.1], private: [198.18.103.1]}
  identity: {ikeId: dc3-gw1.meshsec.test}
"""


def three_dc_manifest(path: Path) -> Path:
    """The example mesh plus dc3 (a datacentre, so `dc-mesh` members it), for --datacenters 3."""
    path.write_text(EXAMPLE.read_text().rstrip("\n") + "\n---" + DC3)
    return path


def agent_tunnels(node: str) -> dict[str, str]:
    """{tunnel id: state} as the node's agent itself reports on its status socket."""
    from meshsec.agent.standalone.status import query_status
    from meshsec.meshctl.lab.standalone import tunnel_states

    return tunnel_states(query_status(RUN_DIR / "agents" / f"{node}.sock", timeout=2.0))


# -- strongSwan's side --------------------------------------------------------------------------


@dataclass(frozen=True)
class SwanSa:
    """One IKE SA as `swanctl --list-sas` shows it, with its first CHILD_SA."""

    connection: str
    state: str
    remote_id: str
    child_state: str
    spi_in: int
    spi_out: int
    bytes_in: int


_SA_HEAD = re.compile(r"^(\S+): #\d+, (\w+), IKEv2")
_REMOTE = re.compile(r"^\s+remote '([^']*)' @")
_CHILD = re.compile(r"^\s+\S+: #\d+, reqid \d+, (\w+),")
_SPI = re.compile(r"^\s+(in|out)\s+([0-9a-f]{8}),\s+(\d+) bytes")


def swanctl_sas() -> list[SwanSa]:
    """The external gateway's IKE SAs, asked from charon over the lab's vici socket."""
    vici = Charon("", DATA_DIR / "extdc", RUN_DIR).vici
    out = subprocess.run(
        [find("swanctl") or "swanctl", "--list-sas", "--uri", f"unix://{vici}"],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    ).stdout
    found: list[SwanSa] = []
    current: dict[str, Any] = {}

    def flush() -> None:
        if current:
            found.append(
                SwanSa(
                    current["connection"],
                    current["state"],
                    current.get("remote_id", ""),
                    current.get("child_state", ""),
                    current.get("in", 0),
                    current.get("out", 0),
                    current.get("bytes_in", 0),
                )
            )

    for line in out.splitlines():
        if head := _SA_HEAD.match(line):
            flush()
            current = {"connection": head[1], "state": head[2]}
        elif (remote := _REMOTE.match(line)) and "remote_id" not in current:
            current["remote_id"] = remote[1]
        elif (child := _CHILD.match(line)) and "child_state" not in current:
            current["child_state"] = child[1]
        elif (spi := _SPI.match(line)) and spi[1] not in current:
            current[spi[1]] = int(spi[2], 16)
            if spi[1] == "in":
                current["bytes_in"] = int(spi[3])
    flush()
    return found


# -- continuous pings ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PingRun:
    label: str
    transmitted: int
    replies: dict[int, int]  # icmp_seq -> the reply's TTL (one less per router it crossed)
    log: str

    @property
    def answered(self) -> frozenset[int]:
        return frozenset(self.replies)

    def lost(self) -> list[int]:
        """Unanswered requests, leaving out the last one (it may have been in flight at the stop)."""
        return [seq for seq in range(1, self.transmitted) if seq not in self.answered]


class Pingers:
    """One `ping -i 0.1` per (label, namespace, destination), running until stopped."""

    def __init__(self, pairs: Sequence[tuple[str, str, str]], log_dir: Path) -> None:
        self.runs: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
        for label, ns, dst in pairs:
            log = log_dir / f"ping-{label}.log"
            with open(log, "wb") as out:
                proc = subprocess.Popen(
                    ["ip", "netns", "exec", ns, "ping", "-n", "-i", "0.1", "-w", "300", dst],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            self.runs[label] = (proc, log)

    def stop(self) -> dict[str, PingRun]:
        """SIGINT (ping prints its summary) and parse each log; idempotent, kills what lingers."""
        results: dict[str, PingRun] = {}
        for label, (proc, log) in self.runs.items():
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGINT)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5)
            text = log.read_text(errors="replace")
            sent = re.search(r"(\d+) packets transmitted", text)
            replies = {int(s): int(ttl) for s, ttl in re.findall(r"icmp_seq=(\d+) ttl=(\d+)", text)}
            results[label] = PingRun(label, int(sent[1]) if sent else 0, replies, text)
        return results


# -- a lab's life -------------------------------------------------------------------------------


@dataclass
class UpLab:
    output: str
    seconds: float
    state: LabState


def lab_running() -> bool:
    return STATE_FILE.exists() or any(ns.startswith(PREFIX) for ns in namespaces())


@contextmanager
def running_lab(up_args: Sequence[str], keep_logs: Path) -> Iterator[UpLab]:
    """`meshctl lab up` with ``up_args``; whatever happens, `lab down` afterwards (logs copied to
    ``keep_logs`` first), then no lab namespace, host veth, recorded process or host route change."""
    if lab_running():
        pytest.skip("a meshsec lab is already running on this machine; not tearing it down")
    routes_before = host_routes()
    start = time.monotonic()
    up = meshctl("lab", "up", *up_args, timeout=300)
    seconds = time.monotonic() - start
    state = LabState.load()
    try:
        assert up.returncode == 0, f"lab up exited {up.returncode}\n{up.stdout}\n{up.stderr}"
        assert state is not None
        yield UpLab(up.stdout + up.stderr, seconds, state)
    finally:
        if LabState.load() is not None or lab_running():
            if (DATA_DIR / "logs").exists():
                shutil.copytree(DATA_DIR / "logs", keep_logs / "logs", dirs_exist_ok=True)
                sys.stderr.write(f"\nlab logs kept in {keep_logs}\n")
            down = meshctl("lab", "down")
            assert down.returncode == 0, down.stdout + down.stderr
        assert [ns for ns in namespaces() if ns.startswith(PREFIX)] == []
        assert subprocess.run(["ip", "link", "show", HOST_IF], capture_output=True, check=False).returncode
        for proc in state.processes if state is not None else []:
            assert not proc.is_ours(), f"{proc.name} (pid {proc.pid}) survived lab down"
        assert host_routes() == routes_before
