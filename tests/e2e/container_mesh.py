"""A meshsec mesh out of real containers of the meshsec image: the controller in one namespace, one
agent container per node namespace (its network namespace, NET_ADMIN/NET_RAW, /dev/net/tun for the
userspace data plane: the host kernel has no ESP), all on one underlay switch (198.18.0.0/16).
Shared by tests/e2e/test_image.py and tests/e2e/test_k8s_clusters.py.

The controller's data directory and admin socket are bind mounts, so the test reaches the admin
API from the host (meshctl, AdminClient) and hands agents the CA certificate it wrote.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from meshsec.agent.node.statedir import STATUS_SOCKET
from meshsec.agent.standalone.status import query_status
from meshsec.meshctl.client import AdminClient, Target
from meshsec.meshctl.lab.controller import BOOTSTRAP_PORT, MTLS_PORT, ControllerPaths
from meshsec.meshctl.lab.standalone import tunnel_states
from meshsec.v1 import admin_pb2
from tests.harness.containers import Container, Containers
from tests.harness.netns import Host, Switch

MESHCTL = str(Path(sys.executable).parent / "meshctl")
UID = 10001  # the image's meshsec user, which the controller runs as
ESTABLISHED = "TUNNEL_STATE_ESTABLISHED"
AGENT_CAPS = ("NET_ADMIN", "NET_RAW")
TUN = "/dev/net/tun"
AGENT_STATE = "/var/lib/meshsec/agent"  # where the chart's DaemonSet keeps them
AGENT_BOOTSTRAP = "/etc/meshsec/bootstrap"


def site_mesh(name: str, label: str, value: str) -> str:
    """A full mesh of the Sites labelled ``label=value``, certificates, one modern suite."""
    return f"""apiVersion: meshsec.io/v1alpha1
kind: MeshPolicy
metadata: {{name: {name}}}
spec:
  topology: full-mesh
  scope: site
  members: {{matchLabels: {{{label}: {value}}}}}
  crypto: {{ikeProposals: [aes256gcm16-prfsha256-x25519], espProposals: [aes256gcm16-x25519]}}
  auth: {{method: certificate}}
"""


def gateway_sites(nodes: dict[str, tuple[str, str, str, str]], label: str, mesh: str) -> str:
    """One Site and its gateway Node per entry of `nodes` (node: underlay address, site, site
    prefix, the node's own address in it), every Site labelled `kind: <label>`, and the full
    mesh `mesh` of them."""
    docs = []
    for node, (underlay, site, prefix, _) in nodes.items():
        docs.append(f"""apiVersion: meshsec.io/v1alpha1
kind: Site
metadata: {{name: {site}, labels: {{kind: {label}}}}}
spec: {{prefixes: [{prefix}], gatewaySelector: {{matchLabels: {{role: gateway}}}}}}
---
apiVersion: meshsec.io/v1alpha1
kind: Node
metadata: {{name: {node}, labels: {{role: gateway}}}}
spec:
  site: {site}
  endpoints: {{public: [{underlay}]}}
  identity: {{ikeId: {node}.meshsec.test}}
""")
    docs.append(site_mesh(mesh, "kind", label))
    return "---\n".join(docs)


def wait_for(what: str, predicate: Callable[[], object], timeout: float, interval: float = 0.5,
             on_timeout: Callable[[], str] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    detail = on_timeout() if on_timeout is not None else ""
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}\n{detail}")


class Phases:
    """Prints how long each phase of a test took, past pytest's capture, so CI logs show it."""

    def __init__(self, capsys: pytest.CaptureFixture[str], test: str) -> None:
        self.capsys = capsys
        self.test = test
        self.started = time.monotonic()

    def __call__(self, what: str) -> None:
        with self.capsys.disabled():
            print(f"\n  {self.test}: {time.monotonic() - self.started:6.1f} s  {what}", end="")


def owned_dir(path: Path, uid: int = 0) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, uid, uid)
    return path


@dataclass
class ControllerContainer:
    container: Container
    address: str
    paths: ControllerPaths  # as the host sees the bind mounts

    @property
    def admin_socket(self) -> Path:
        return self.paths.admin_socket

    def client(self) -> AdminClient:
        return AdminClient(Target.parse(str(self.admin_socket)), timeout=10.0)

    def meshctl(self, *args: str, input: str | None = None, timeout: float = 60) -> str:
        env = {**os.environ, "MESHSEC_CONTROLLER": str(self.admin_socket), "NO_COLOR": "1"}
        done = subprocess.run([MESHCTL, *args], capture_output=True, text=True, input=input,
                              timeout=timeout, env=env, check=False)
        assert done.returncode == 0, f"meshctl {' '.join(args)}: {done.stdout}{done.stderr}"
        return done.stdout

    def apply(self, manifest: str) -> str:
        return self.meshctl("apply", "-f", "-", input=manifest)

    def tunnels(self) -> dict[str, dict[str, Any]]:
        """{"a <-> b": TunnelInfo as meshctl's JSON prints it}."""
        items = json.loads(self.meshctl("get", "tunnels", "-o", "json"))["items"]
        return {" <-> ".join(e["name"] for e in t["ends"]): t for t in items}

    def resources(self, kind: str) -> dict[str, dict[str, Any]]:
        """{name: resource as JSON} of ``kind`` (sites, nodes, policies)."""
        items = json.loads(self.meshctl("get", kind, "-o", "json"))["items"]
        return {r["metadata"]["name"]: r for r in items}

    def nodes(self) -> dict[str, dict[str, Any]]:
        """(status.phase says Enrolled once an agent enrolled)"""
        return self.resources("nodes")

    def ready(self) -> bool:
        if not self.container.running():
            pytest.fail(f"the controller container exited:\n{self.container.logs()[-3000:]}")
        if not self.admin_socket.exists():
            return False
        try:
            with self.client() as client:
                client.version()
        except Exception:  # not listening yet: any failure means "not yet"
            return False
        return True


def start_controller(pods: Containers, image: str, host: Host, address: str, workdir: Path,
                     status_interval: int = 2) -> ControllerContainer:
    """meshsec-controller as the image's user 10001, embedded store, listening on ``address``."""
    data_dir = owned_dir(workdir / "controller-data", UID)
    run_dir = owned_dir(workdir / "controller-run", UID)
    container = pods.run(
        "controller", image,
        ["meshsec-controller", "--data-dir", "/var/lib/meshsec/controller",
         "--admin-socket", "/run/meshsec/admin.sock",
         "--listen", f"{address}:{MTLS_PORT}", "--bootstrap-listen", f"{address}:{BOOTSTRAP_PORT}",
         "--server-name", address, "--metrics", "", "--replica", "image-test",
         "--status-interval", str(status_interval)],
        netns=host.ns,
        volumes=[(data_dir, "/var/lib/meshsec/controller"), (run_dir, "/run/meshsec")],
    )  # fmt: skip
    paths = ControllerPaths(data_dir, run_dir / "admin.sock", container.log)
    ctl = ControllerContainer(container, address, paths)
    wait_for("the controller's admin API", ctl.ready, timeout=60)
    return ctl


def token_for(ctl: ControllerContainer, node: str, site: str) -> admin_pb2.CreateBootstrapTokenResponse:
    with ctl.client() as client:
        return client.create_token(
            admin_pb2.CreateBootstrapTokenRequest(node_name=node, site=site, ttl_seconds=600, uses=1)
        )


def write_bootstrap(directory: Path, token: str, ca_pem: bytes) -> Path:
    """The files the chart mounts from the bootstrap Secret: ``token`` and ``ca.pem``."""
    owned_dir(directory)
    (directory / "token").write_text(token + "\n")
    (directory / "token").chmod(0o600)
    (directory / "ca.pem").write_bytes(ca_pem)
    return directory


def start_agent(pods: Containers, image: str, host: Host, node: str, ctl: ControllerContainer,
                bootstrap: Path, state: Path, ca_sha256: str, address: str | None = None,
                extra_args: Sequence[str] = (), extra_volumes: Sequence[tuple[Path, str]] = ()) -> Container:
    """``meshsec-agent run`` in ``host``'s namespace as the chart's DaemonSet runs it: the bootstrap
    Secret's files mounted (token, CA pinned by hash), state on a host directory."""
    owned_dir(state)
    return pods.run(
        f"agent-{node}", image,
        ["meshsec-agent", "run", "--node", node,
         "--controller", f"{ctl.address}:{MTLS_PORT}", "--bootstrap", f"{ctl.address}:{BOOTSTRAP_PORT}",
         "--state-dir", AGENT_STATE, "--token-file", f"{AGENT_BOOTSTRAP}/token",
         "--ca-file", f"{AGENT_BOOTSTRAP}/ca.pem", "--ca-sha256", ca_sha256,
         "--dataplane", "userspace", *(["--address", address] if address else []), *extra_args],
        netns=host.ns, user="0", caps=AGENT_CAPS, devices=[TUN],
        volumes=[(state, AGENT_STATE), (bootstrap, f"{AGENT_BOOTSTRAP}:ro"), *extra_volumes],
    )  # fmt: skip


def agent_tunnels(state: Path) -> dict[str, str]:
    """{tunnel id: state} as the agent itself reports on its status socket (in its state dir)."""
    try:
        return tunnel_states(query_status(state / STATUS_SOCKET, timeout=3.0))
    except (OSError, ValueError):
        return {}


def agent_ready(agent: Container) -> str:
    """The DaemonSet's readiness probe, run in the agent's container: "" when ready, else why not."""
    probe = agent.exec(["meshsec-agent", "health", "--ready", "--state-dir", AGENT_STATE], check=False)
    return "" if probe.returncode == 0 else f"exit {probe.returncode}: {probe.stdout}{probe.stderr}"


def underlay_host(switch: Switch, host: Host, cidr: str) -> Host:
    switch.attach(host, cidr)
    return host


def logs_on_failure(pods: Containers) -> str:
    return "\n".join(f"--- {c.name}\n{c.logs()[-2500:]}" for c in pods.started)
