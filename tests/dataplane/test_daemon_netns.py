"""The userspace data plane as its own process (`meshsec-dataplane`, daemon.py) driven by the
agent's backend (`DaemonDataPlane`, client.py) in another process, in two namespace sites:

- a 10 ms ping crosses the tunnel without a single loss while the process driving each site's
  daemon is killed -9 and a new one adopts what the daemon holds (plain ESP and ESP-in-UDP; with
  UDP the new process gets the daemon's 4500 socket back and IKE messages reach it);
- the adopting process sees exactly the SAs, policies and reqids installed before, and SPI
  reservations the dead one left without an SA are released;
- the control socket is 0600 and refuses bad, oversized and out-of-order messages with clear
  errors, never echoing key material.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.dataplane.sites import INNER, INNER_NET, UNDERLAY, Suite, inject, make_sites
from tests.harness.netns import Host, Lab, parse_ping, stop_process

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]
SCRIPT = Path(__file__).with_name("daemon_agent_script.py")


def wait_for_line(log: Path, key: str, timeout: float = 15.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists():
            for line in log.read_text().splitlines():
                if line.startswith("{") and key in (doc := json.loads(line)):
                    return dict(doc)
        time.sleep(0.05)
    raise AssertionError(f"no {key!r} line in {log}: {log.read_text() if log.exists() else ''}")


def start_daemon(lab: Lab, host: Host) -> tuple[subprocess.Popen[bytes], Path]:
    path = lab.workdir / f"dp-{host.name}" / "dataplane.sock"
    argv = [sys.executable, "-m", "meshsec.agent.dataplane.userspace.daemon", "--socket", str(path),
            "--tun-name", "ud0", "--log-level", "debug"]  # fmt: skip
    proc = host.popen(argv, log=lab.workdir / f"daemon-{host.name}.log")
    deadline = time.monotonic() + 15
    while not path.exists():
        assert proc.poll() is None, (lab.workdir / f"daemon-{host.name}.log").read_text()
        assert time.monotonic() < deadline, "the daemon's control socket did not appear"
        time.sleep(0.05)
    return proc, path


def plans(suite: Suite, encap_port: int | None) -> list[dict[str, Any]]:
    """Site a's and site b's: one SA each way (SPIs 0x1001 a->b, 0x2002 b->a), reqid 1."""
    sas = []
    for i, spi in ((0, 0x1001), (1, 0x2002)):
        sa: dict[str, Any] = {"src": UNDERLAY[i], "dst": UNDERLAY[1 - i], "spi": spi, "protocol": "esp",
                              "mode": "tunnel", "reqid": 1, **suite.algorithms()}
        if encap_port:
            sa["encap"] = {"src_port": encap_port, "dst_port": encap_port}
        sas.append(sa)
    out = []
    for i in (0, 1):
        tmpl = {"protocol": "esp", "mode": "tunnel", "reqid": 1, "src": UNDERLAY[i], "dst": UNDERLAY[1 - i]}
        out.append({
            "sas": [{**sas[i], "direction": "out"}, {**sas[1 - i], "direction": "in"}],
            "policies": [{"selector": {"src": INNER_NET[i], "dst": INNER_NET[1 - i]}, "direction": "out",
                          "template": tmpl},
                         {"selector": {"src": INNER_NET[1 - i], "dst": INNER_NET[i]}, "direction": "in",
                          "template": tmpl}],
            # An SPI reserved and never installed: what an agent killed mid-negotiation leaves.
            "reserve": [{**sas[1 - i], "direction": "in"}],
            "encap_port": encap_port,
        })  # fmt: skip
    return out


@pytest.mark.parametrize("encap", [False, True], ids=["esp", "udp"])
def test_ping_loses_nothing_while_the_agent_is_killed_and_a_new_one_adopts(lab: Lab, encap: bool) -> None:
    a, b, _ = make_sites(lab)
    sites = {"a": a, "b": b}
    sockets = {name: start_daemon(lab, host)[1] for name, host in sites.items()}
    for name, plan in zip(sites, plans(Suite("aes-gcm-16"), 4500 if encap else None), strict=True):
        (lab.workdir / f"plan-{name}.json").write_text(json.dumps(plan))

    def agent(name: str, mode: str) -> tuple[subprocess.Popen[bytes], Path]:
        log = lab.workdir / f"agent-{name}-{mode}-{time.monotonic_ns()}.log"
        proc = sites[name].popen([sys.executable, str(SCRIPT), str(sockets[name]), mode,
                                  str(lab.workdir / f"plan-{name}.json")], log=log)  # fmt: skip
        return proc, log

    agents = {}
    for name in sites:
        agents[name] = agent(name, "install")
        assert wait_for_line(agents[name][1], "installed")["installed"] == 2

    ping_log = lab.workdir / "ping.log"
    count = 600  # 6 s at 10 ms
    ping = a.popen(["ping", "-n", "-q", "-c", str(count), "-i", "0.01", "-W", "1", "-I", INNER[0], INNER[1]],
                   log=ping_log)  # fmt: skip
    time.sleep(1.0)
    adopted = {}
    for name in ("b", "a"):  # kill -9 each site's agent in turn; a new one adopts
        proc, _ = agents[name]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)
        time.sleep(0.5)  # the agent is away: the daemon forwards alone
        agents[name] = agent(name, "adopt")
        adopted[name] = wait_for_line(agents[name][1], "adopted_sas")
        if encap:
            assert wait_for_line(agents[name][1], "encap_socket")["encap_socket"] == "held"
        time.sleep(0.5)
    ping.wait(30)
    result = parse_ping(ping_log.read_text())
    assert result.transmitted == count and result.received == count, ping_log.read_text()

    for name in sites:  # exactly what was installed; the reserved SPI released, not adopted
        assert adopted[name] == {"adopted_sas": [0x1001, 0x2002], "adopted_policies": 2, "max_reqid": 1}
        assert "released 1 SPI reservation(s)" in (lab.workdir / f"daemon-{name}.log").read_text()

    if encap:  # the daemon hands IKE on 4500 (non-ESP marker) to the agent that adopted it
        inject(a, "udp", UNDERLAY[1], b"\0\0\0\0" + b"IKE-AFTER-RESTART")
        ike = wait_for_line(agents["b"][1], "ike")
        assert bytes.fromhex(ike["ike"]) == b"IKE-AFTER-RESTART" and ike["remote"][0] == UNDERLAY[0]
    for name in sites:  # the daemon's log never shows key material
        text = (lab.workdir / f"daemon-{name}.log").read_text()
        plan = json.loads((lab.workdir / f"plan-{name}.json").read_text())
        assert all(sa["encryption"]["key"] not in text for sa in plan["sas"])
    for proc, _ in agents.values():
        stop_process(proc)  # type: ignore[arg-type]


class RawControl:
    """The control protocol spoken by hand: what a confused or hostile client sends."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.settimeout(5)
        self.sock.connect(str(path))

    def send(self, data: bytes) -> dict[str, Any] | None:
        """The reply, or None once the daemon closed the connection."""
        self.sock.send(data)
        return self.receive()

    def receive(self) -> dict[str, Any] | None:
        while True:
            data = self.sock.recv(1 << 20)
            if not data:
                return None
            doc: dict[str, Any] = json.loads(data)
            if "event" not in doc:
                return doc

    def call(self, **req: Any) -> dict[str, Any] | None:
        return self.send(json.dumps(req).encode())

    def closed(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except (ConnectionError, OSError):
            return True


def test_control_socket_refuses_bad_messages_clearly(lab: Lab) -> None:
    host = lab.host("c")
    daemon, path = start_daemon(lab, host)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700

    first = RawControl(path)  # anything before hello ends the connection
    reply = first.call(id=1, op="list")
    assert reply == {"id": 1, "ok": False, "kind": "protocol",
                     "error": "the first request must be hello, not 'list'"}  # fmt: skip
    assert first.closed()

    old = RawControl(path)  # a version this daemon does not speak
    reply = old.call(id=1, op="hello", version=99)
    assert reply is not None and not reply["ok"]
    assert reply["error"] == "protocol version 99 is not supported (this daemon speaks 1)"
    assert old.closed()

    c = RawControl(path)
    hello = c.call(id=1, op="hello", version=1)
    assert hello is not None and hello["ok"] and hello["version"] == 1 and hello["tun"] == "ud0"
    reply = c.send(b"{not json")
    assert reply is not None and reply["kind"] == "protocol"
    assert reply["error"].startswith("message is not JSON")
    reply = c.send(b"[1, 2]")
    assert reply is not None and reply["error"] == "message must be a JSON object, not list"
    reply = c.call(id=2, op="format_disk")
    assert reply is not None and reply["error"].startswith("unknown op 'format_disk' (known: hello, ")
    reply = c.call(id=3, op="add_sa", sa={"dst": UNDERLAY[1], "protocol": "esp"})
    assert reply == {"id": 3, "ok": False, "kind": "dataplane", "error": "sa: missing field 'src'"}
    key = "ab" * 7  # a wrong-length key: refused, and its value appears nowhere
    reply = c.call(id=4, op="add_sa", sa={"dst": UNDERLAY[1], "src": UNDERLAY[0], "spi": 0x3003,
                                           "direction": "in", "reqid": 1,
                                           "encryption": {"name": "aes-gcm-16", "key": key, "icv_bits": 128}})
    assert reply is not None and not reply["ok"] and reply["kind"] == "dataplane"
    assert key not in reply["error"]
    reply = c.call(id=5, op="list")  # the connection still works after each refusal
    assert reply == {"id": 5, "ok": True, "sas": [], "policies": [], "next": None}

    # Larger than the request limit: refused as a whole, and the connection ends (the client is
    # confused or hostile; a stream would have lost its framing here).
    reply = c.send(json.dumps({"id": 6, "op": "list", "pad": "x" * 70_000}).encode())
    assert reply == {"id": None, "ok": False, "kind": "protocol",
                     "error": "message larger than the 65536-byte limit"}
    assert c.closed()

    # A new hello supersedes the connection that had it (a hung agent cannot lock out the next).
    one, two = RawControl(path), RawControl(path)
    assert (one.call(id=1, op="hello", version=1) or {}).get("ok")
    assert (two.call(id=1, op="hello", version=1) or {}).get("ok")
    assert one.closed()
    assert (two.call(id=2, op="drops") or {}).get("ok")
    # An observer (status tools) reads beside the agent, supersedes nothing and may not write.
    watcher = RawControl(path)
    assert (watcher.call(id=1, op="hello", version=1, role="observer") or {}).get("ok")
    assert (watcher.call(id=2, op="list") or {}).get("ok")
    reply = watcher.call(id=3, op="flush")
    assert reply is not None and reply["error"] == "op 'flush' is not allowed on an observer connection"
    assert (two.call(id=3, op="list") or {}).get("ok")  # the agent's connection is still there
    assert key not in (lab.workdir / "daemon-c.log").read_text()
    assert daemon.poll() is None


def test_bypass_socket_marks_the_agents_own_socket(lab: Lab) -> None:
    """The daemon sets its routing rule's mark on the agent's IKE socket: the mark belongs to the
    socket, so the agent's own descriptor carries it (and IKE skips the TUN table)."""
    host = lab.host("d")
    daemon, path = start_daemon(lab, host)
    c = RawControl(path)
    assert (c.call(id=1, op="hello", version=1) or {}).get("ok")
    ike = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        assert ike.getsockopt(socket.SOL_SOCKET, socket.SO_MARK) == 0
        socket.send_fds(c.sock, [json.dumps({"id": 2, "op": "bypass_socket"}).encode()], [ike.fileno()])
        assert c.receive() == {"id": 2, "ok": True}
        assert ike.getsockopt(socket.SOL_SOCKET, socket.SO_MARK) == 0x6D73  # UserspaceConfig.bypass_mark
        reply = c.call(id=3, op="bypass_socket")
        assert reply is not None and reply["error"] == "bypass_socket carries one descriptor: the IKE socket"
        socket.send_fds(c.sock, [json.dumps({"id": 4, "op": "bypass_socket"}).encode()], [stream.fileno()])
        reply = c.receive()
        assert reply is not None and reply["error"] == "bypass_socket: expected a UDP socket"
        assert stream.getsockopt(socket.SOL_SOCKET, socket.SO_MARK) == 0
        assert (c.call(id=5, op="list") or {}).get("ok")  # the connection still works
    finally:
        ike.close()
        stream.close()
    assert daemon.poll() is None
