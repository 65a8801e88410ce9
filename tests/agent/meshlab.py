"""A controller and meshsec agents in network namespaces, for the agent's end-to-end tests.

Underlay: every host on one switch, 198.18.0.0/24 (controller at .254, node N at .N).
Each node is the gateway of its own site sN with prefix 198.19.N.0/24 and has the inner address
198.19.N.1/32 on lo; one full-mesh site-scope MeshPolicy (PSK) connects all sites. The
controller and the agents are real processes (`meshsec-controller`, `meshsec-agent run`);
the test talks to the controller over its admin Unix socket and to agents over their status
sockets (both are files, reachable from outside the namespaces)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import struct_pb2

from meshsec.agent.standalone.status import query_status
from meshsec.v1 import admin_pb2, admin_pb2_grpc, common_pb2
from tests.harness.netns import Host, Lab, PingResult, Switch, parse_ping

API = "meshsec.io/v1alpha1"
CTL_ADDR = "198.18.0.254"
BIN = Path(sys.executable).parent


def wait_for(what: str, check: Callable[[], Any], timeout: float, interval: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as exc:  # the thing is not there yet
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {last!r}")


def resource(kind: str, name: str, spec: dict[str, Any]) -> common_pb2.Resource:
    s = struct_pb2.Struct()
    s.update(spec)
    r = common_pb2.Resource(api_version=API, kind=kind, spec=s)
    r.metadata.name = name
    return r


class MeshLab:
    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.work = lab.workdir
        self.sw: Switch = lab.switch("sw")
        self.ctl_host = lab.host("ctl")
        self.sw.attach(self.ctl_host, f"{CTL_ADDR}/24")
        self.ctl_dir = self.work / "ctl"
        self.ctl: subprocess.Popen[bytes] | None = None
        self.nodes: dict[str, Host] = {}
        self.agents: dict[str, subprocess.Popen[bytes]] = {}
        self.dataplane = "userspace"  # the kernel lane's tests use "kernel"

    # ------------------------------------------------------------------ controller

    @property
    def admin_socket(self) -> Path:
        return self.ctl_dir / "admin.sock"

    def start_controller(self, *extra: str, timeout: float = 20.0) -> None:
        self.ctl_dir.mkdir(exist_ok=True)
        with self._suppress_missing():
            self.admin_socket.unlink()
        self.ctl = self.ctl_host.popen(
            [str(BIN / "meshsec-controller"), "--data-dir", str(self.ctl_dir),
             "--listen", f"{CTL_ADDR}:7443", "--bootstrap-listen", f"{CTL_ADDR}:7444",
             "--admin-socket", str(self.admin_socket), "--metrics", "", "--status-interval", "5",
             "--replica", "ctl", *extra],
            log=self.work / "controller.log",
        )  # fmt: skip
        ready = lambda: self.admin_socket.exists() and self._ping_admin()  # noqa: E731
        wait_for("the controller's admin socket", ready, timeout)

    def kill_controller(self) -> None:
        assert self.ctl is not None
        self.ctl.send_signal(signal.SIGKILL)
        self.ctl.wait(10)
        self.ctl = None

    @staticmethod
    def _suppress_missing() -> Any:
        import contextlib

        return contextlib.suppress(FileNotFoundError)

    def admin(self) -> Any:
        channel = grpc.insecure_channel(f"unix:{self.admin_socket}")
        return channel, admin_pb2_grpc.AdminServiceStub(channel)

    def _ping_admin(self) -> bool:
        if not self.admin_socket.exists():
            return False
        channel, stub = self.admin()
        with channel:
            stub.List(admin_pb2.ListRequest(kind="Site"), timeout=2)
        return True

    def apply(self, *resources: common_pb2.Resource) -> None:
        channel, stub = self.admin()
        with channel:
            stub.Apply(admin_pb2.ApplyRequest(resources=resources, field_manager="ag-test"), timeout=10)

    def delete(self, kind: str, name: str) -> None:
        channel, stub = self.admin()
        with channel:
            stub.Delete(admin_pb2.DeleteRequest(kind=kind, name=name), timeout=10)

    def tunnels(self) -> list[admin_pb2.TunnelInfo]:
        channel, stub = self.admin()
        with channel:
            return list(stub.ListTunnels(admin_pb2.ListTunnelsRequest(), timeout=10).tunnels)

    def token(self, node: str, site: str) -> str:
        channel, stub = self.admin()
        with channel:
            response = stub.CreateBootstrapToken(
                admin_pb2.CreateBootstrapTokenRequest(
                    node_name=node, site=site, ttl_seconds=600, uses=1, node_labels={"role": "gateway"}
                ),
                timeout=10,
            )
        return str(response.token)

    def mesh_policy(self) -> None:
        self.apply(
            resource("MeshPolicy", "mesh", {"topology": "full-mesh", "scope": "site", "members": {},
                                            "auth": {"method": "psk"}}),
        )  # fmt: skip

    # ------------------------------------------------------------------ nodes and agents

    def add_node(
        self, n: int, before_agent: Callable[[Host], None] | None = None, agent_args: Sequence[str] = ()
    ) -> str:
        name = f"n{n}"
        self.apply(
            resource("Site", f"s{n}", {"prefixes": [f"198.19.{n}.0/24"],
                                       "gatewaySelector": {"matchLabels": {"role": "gateway"}}}),
        )  # fmt: skip
        host = self.lab.host(name)
        self.sw.attach(host, f"198.18.0.{n}/24")
        host.add_loopback_address(f"198.19.{n}.1/32")
        host.sysctl("net.ipv4.conf.all.rp_filter", "0")
        self.nodes[name] = host
        token_file = self.work / f"{name}.token"
        token_file.write_text(self.token(name, f"s{n}") + "\n")
        os.chmod(token_file, 0o600)
        if before_agent is not None:
            before_agent(host)
        self.start_agent(name, agent_args=agent_args)
        return name

    def state_dir(self, name: str) -> Path:
        return self.work / name

    def status_socket(self, name: str) -> Path:
        return self.state_dir(name) / "status.sock"

    def start_agent(
        self, name: str, program: list[str] | None = None, agent_args: Sequence[str] = ()
    ) -> None:
        """`program`: what runs `meshsec-agent` (default the installed script; a test of an
        upgrade passes a build with other constants); `agent_args`: more `run` options."""
        n = int(name[1:])
        with self._suppress_missing():
            self.status_socket(name).unlink()
        self.agents[name] = self.nodes[name].popen(
            [*(program or [str(BIN / "meshsec-agent")]), "run", "--controller", f"{CTL_ADDR}:7443",
             "--bootstrap", f"{CTL_ADDR}:7444", "--node", name, "--state-dir", str(self.state_dir(name)),
             "--token-file", str(self.work / f"{name}.token"), "--ca-file", str(self.ctl_dir / "ca.pem"),
             "--dataplane", self.dataplane, "--address", f"198.18.0.{n}", "--responder-grace", "3",
             "--log-level", "debug", *agent_args],
            log=self.work / f"{name}.log",
        )  # fmt: skip

    def stop_agent(self, name: str, sig: int = signal.SIGTERM) -> int:
        proc = self.agents.pop(name)
        proc.send_signal(sig)
        return proc.wait(15)

    def drain_agent(self, name: str) -> int:
        """`meshsec-agent drain`: the agent leaves the mesh and exits; returns its exit status."""
        subprocess.run([str(BIN / "meshsec-agent"), "drain", "--state-dir", str(self.state_dir(name))],
                       check=True, capture_output=True, timeout=15)  # fmt: skip
        return self.agents.pop(name).wait(15)

    def status(self, name: str) -> dict[str, Any]:
        return query_status(self.status_socket(name))

    def ping(self, src: str, dst: str, count: int = 3) -> bool:
        a, b = int(src[1:]), int(dst[1:])
        result = self.nodes[src].ping(f"198.19.{b}.1", src=f"198.19.{a}.1", count=count, wait=1.0)
        return result.loss_percent == 0

    def ping_all_concurrently(self, seconds: float, interval: float) -> dict[tuple[str, str], PingResult]:
        """Every ordered pair pings at once for `seconds` (inner address to inner address)."""
        count = str(int(seconds / interval))
        procs = {}
        for a, b in self.pairs():
            log = self.work / f"ping-{a}-{b}.log"
            log.unlink(missing_ok=True)
            argv = ["ping", "-n", "-q", "-c", count, "-i", str(interval), "-W", "1",
                    "-I", f"198.19.{a[1:]}.1", f"198.19.{b[1:]}.1"]  # fmt: skip
            procs[(a, b)] = (self.nodes[a].popen(argv, log=log), log)
        results = {}
        for pair, (proc, log) in procs.items():
            proc.wait(seconds + 15)
            results[pair] = parse_ping(log.read_text())
        return results

    def pairs(self) -> list[tuple[str, str]]:
        names = sorted(self.nodes)
        return [(a, b) for a in names for b in names if a != b]

    def wait_mesh(self, timeout: float = 40.0) -> None:
        for a, b in self.pairs():
            wait_for(f"ping {a} -> {b}", lambda a=a, b=b: self.ping(a, b, count=1), timeout)  # type: ignore[misc]

    def child_spis(self, name: str) -> dict[str, set[tuple[str, str]]]:
        """peer name -> {(spi_in, spi_out)} from the agent's tunnel view."""
        out: dict[str, set[tuple[str, str]]] = {}
        for t in self.status(name)["tunnels"]:
            out.setdefault(t["peer"], set()).update((c["spi_in"], c["spi_out"]) for c in t["child_sas"])
        return out
