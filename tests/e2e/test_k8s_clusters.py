"""Two Kubernetes clusters meshed by meshsec, with real containers of the meshsec image.

- The controller runs in its own namespace. Each cluster has its own API server (kmock, the only
  one these machines have) and its own operator container (`--cluster-site`, host network to reach
  kmock, the controller's admin socket mounted, the bootstrap Secret kept in its cluster).
- Each cluster holds two core Nodes with addresses, labels and podCIDRs. The ``meshsec.io/gateway``
  label picks one gateway per cluster. Each node is a network namespace with its own agent container
  (`--network ns:`, NET_ADMIN/NET_RAW, /dev/net/tun: the host kernel has no ESP). The agents enroll
  with the token the operator wrote to its cluster's Secret, as the chart's DaemonSet does.
- One site-scope MeshPolicy meshes the two clusters' Sites. Then the test checks, in order:
  1. the tunnel between the gateways comes up; the workers' agents route the other cluster's pod
     CIDRs through their gateway; a ping from an address in one cluster's pod CIDR reaches one in
     the other's, gateway to gateway and worker to worker;
  2. deleting a gateway's core Node removes its meshsec Node and its tunnel, in the controller and
     in the other gateway's agent;
  3. creating that core Node again (new uid) makes its agent enroll again with a new certificate,
     and the tunnel and the ping come back.

Namespace prefix ``mk-``. Underlay 198.18.72.0/24; pod CIDRs 198.19.72-73.0/24 (east) and
198.19.82-83.0/24 (west).
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Network, collapse_addresses
from pathlib import Path
from typing import Any

import pytest

from meshsec.agent.node.statedir import CERT
from tests.e2e.container_mesh import (
    ESTABLISHED,
    UID,
    ControllerContainer,
    Phases,
    agent_ready,
    agent_tunnels,
    logs_on_failure,
    site_mesh,
    start_agent,
    start_controller,
    wait_for,
    write_bootstrap,
)
from tests.harness.containers import Container, Containers, meshsec_image
from tests.harness.kube import KubeApi, KubeApis
from tests.harness.netns import Host, Lab, Switch

pytestmark = [pytest.mark.podman, pytest.mark.netns, pytest.mark.slow, pytest.mark.timeout(280)]
kmock_lib = pytest.importorskip("kmock", reason="kmock not installed (k8s test dependency)")

CONTROLLER = "198.18.72.1"
NAMESPACE = "meshsec"
SECRET = "meshsec-agent-bootstrap"
GATEWAY_LABEL = "meshsec.io/gateway"
MESH_LABEL = "mesh=k8s-e2e"  # the clusters' Sites carry it; the policy selects it


@dataclass(frozen=True)
class NodeSpec:
    name: str
    cluster: str
    underlay: str
    pod_cidr: str
    gateway: bool

    @property
    def pod_address(self) -> str:
        """The first address of its pod CIDR, on the node's loopback (a pod standing in)."""
        return self.pod_cidr.replace(".0/24", ".1")


NODES = [
    NodeSpec("east-gw", "east", "198.18.72.11", "198.19.72.0/24", gateway=True),
    NodeSpec("east-w1", "east", "198.18.72.12", "198.19.73.0/24", gateway=False),
    NodeSpec("west-gw", "west", "198.18.72.21", "198.19.82.0/24", gateway=True),
    NodeSpec("west-w1", "west", "198.18.72.22", "198.19.83.0/24", gateway=False),
]
BY_NAME = {n.name: n for n in NODES}
TUNNEL = "east-gw <-> west-gw"

POLICY = site_mesh("clusters", *MESH_LABEL.split("="))
# The other shape (docs/kubernetes.md): every node of both clusters meshed with every other, each
# node's podCIDR in its selectors, no gateways and no routes involved.
NODE_POLICY = """apiVersion: meshsec.io/v1alpha1
kind: MeshPolicy
metadata: {name: nodes}
spec:
  topology: full-mesh
  scope: node
  mode: tunnel
  members: {matchExpressions: [{key: kubernetes.meshsec.io/cluster, operator: In, values: [east, west]}]}
  crypto: {ikeProposals: [aes256gcm16-prfsha256-x25519], espProposals: [aes256gcm16-x25519]}
  auth: {method: certificate}
"""


def covering(cidrs: Iterable[str]) -> list[IPv4Network]:
    """The fewest networks covering exactly ``cidrs``."""
    return list(collapse_addresses(IPv4Network(c) for c in cidrs))


def core_node(node: NodeSpec) -> dict[str, Any]:
    """A core Node as a kubelet registers it (plus the gateway label an admin puts on)."""
    labels = {"kubernetes.io/hostname": node.name, "topology.kubernetes.io/zone": f"{node.cluster}-a"}
    if node.gateway:
        labels[GATEWAY_LABEL] = "true"
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": node.name, "uid": str(uuid.uuid4()), "labels": labels},
        "spec": {"podCIDR": node.pod_cidr, "podCIDRs": [node.pod_cidr]},
        "status": {"addresses": [{"type": "Hostname", "address": node.name},
                                 {"type": "InternalIP", "address": node.underlay}]},
    }  # fmt: skip


def declare_cluster(api: KubeApi) -> None:
    """What a real cluster serves and the operator reads: the CRDs, core Nodes, Secrets, Events."""
    from tests.k8s.test_operator_kmock import declare_resources

    declare_resources(api.emulator)
    # Watchable, as in a real cluster: the operator's watch on core Nodes wakes its sweep early.
    api.declare("v1/nodes", kind="Node", verbs={"list", "watch", "get", "create", "patch", "delete"})
    api.declare("v1/secrets", kind="Secret", namespaced=True)
    api.declare("v1/events", kind="Event", namespaced=True)


def start_operator(pods: Containers, image: str, cluster: str, api: KubeApi, ctl: ControllerContainer,
                   workdir: Path) -> Container:
    """The operator as the chart's controller sidecar runs it, as the image's user, for ``cluster``."""
    kubeconfig = api.kubeconfig(workdir / f"{cluster}.kubeconfig")
    return pods.run(
        f"operator-{cluster}", image,
        ["python3", "-m", "meshsec.controller.operator", "--admin-socket", "/run/meshsec/admin.sock",
         "--resync", "2", "--cluster-site", cluster, "--cluster-site-label", MESH_LABEL,
         "--gateway-label", f"{GATEWAY_LABEL}=true",
         "--bootstrap-site", cluster, "--bootstrap-namespace", NAMESPACE, "--bootstrap-secret", SECRET,
         "--ca-file", "/var/lib/meshsec/controller/ca.pem"],
        host_network=True, user=str(UID),
        env={"KUBECONFIG": "/etc/meshsec/kubeconfig", "HOME": "/tmp"},
        volumes=[(ctl.paths.admin_socket.parent, "/run/meshsec"),
                 (ctl.paths.data_dir, "/var/lib/meshsec/controller:ro"),
                 (kubeconfig, "/etc/meshsec/kubeconfig:ro")],
    )  # fmt: skip


def bootstrap_secret(api: KubeApi) -> tuple[str, bytes, str] | None:
    """(token, ca.pem, CA hash) from the cluster's bootstrap Secret, once the operator wrote it."""
    secret = api.get(f"/api/v1/namespaces/{NAMESPACE}/secrets/{SECRET}")
    if not secret or "token" not in (secret.get("data") or {}):
        return None
    data = secret["data"]
    ca_hash = (secret.get("metadata") or {}).get("annotations", {}).get("meshsec.io/ca-sha256", "")
    return base64.b64decode(data["token"]).decode(), base64.b64decode(data["ca.pem"]), ca_hash


class Clusters:
    """The whole world of this test, with what its assertions need at hand."""

    def __init__(self, lab: Lab, pods: Containers, image: str, apis: KubeApis, workdir: Path,
                 policy: str = POLICY) -> None:
        self.lab, self.pods, self.image, self.apis, self.workdir = lab, pods, image, apis, workdir
        self.hosts: dict[str, Host] = {}
        self.agents: dict[str, Container] = {}
        self.uids: dict[str, str] = {}
        underlay = lab.switch("sw")
        ctl_host = lab.host("ctl")
        underlay.attach(ctl_host, f"{CONTROLLER}/24")
        self.ctl = start_controller(pods, image, ctl_host, CONTROLLER, workdir)
        self.ctl.apply(policy)
        for node in NODES:
            self.hosts[node.name] = self._node_host(underlay, node)
        self.operators = {}
        for cluster in ("east", "west"):
            declare_cluster(apis[cluster])
            self.operators[cluster] = start_operator(pods, image, cluster, apis[cluster], self.ctl, workdir)

    def _node_host(self, underlay: Switch, node: NodeSpec) -> Host:
        """The node's namespace: underlay address, its "pod" address and, on a gateway, what the
        cluster's CNI gives it (forwarding, routes to its workers' pod CIDRs). A worker's routes to
        the other cluster are the agent's own (NodeConfig.routes, via its gateway)."""
        host = self.lab.host(node.name)
        underlay.attach(host, f"{node.underlay}/24")
        host.add_loopback_address(f"{node.pod_address}/32")
        if node.gateway:
            host.enable_forwarding()
            for peer in NODES:
                if peer.cluster == node.cluster and peer is not node:
                    host.add_route(peer.pod_cidr, via=peer.underlay)
        return host

    def agent_routes(self, node: NodeSpec) -> set[tuple[str, str]]:
        """(destination, next hop) of the routes the node's agent installed (route protocol 241)."""
        out = self.hosts[node.name].ip("route", "show", "proto", "241")
        return {(f[0], f[f.index("via") + 1]) for line in out.splitlines() if "via" in (f := line.split())}

    def routes_via(self, node: NodeSpec) -> dict[str, list[IPv4Network]]:
        """{next hop: what the agent's routes through it cover}."""
        by_hop: dict[str, list[str]] = {}
        for destination, via in self.agent_routes(node):
            by_hop.setdefault(via, []).append(destination)
        return {via: covering(destinations) for via, destinations in by_hop.items()}

    def create_node(self, node: NodeSpec) -> None:
        doc = core_node(node)
        self.uids[node.name] = doc["metadata"]["uid"]
        self.apis[node.cluster].create("/api/v1/nodes", doc)

    def delete_node(self, node: NodeSpec) -> None:
        self.apis[node.cluster].delete(f"/api/v1/nodes/{node.name}")

    def state(self, node: NodeSpec) -> Path:
        return self.workdir / f"state-{node.name}"

    def start_agents(self) -> None:
        for cluster in ("east", "west"):
            secret: list[tuple[str, bytes, str]] = []

            def written(cluster: str = cluster, secret: list[tuple[str, bytes, str]] = secret) -> bool:
                got = bootstrap_secret(self.apis[cluster])
                secret[:] = [got] if got else []
                return got is not None

            wait_for(f"the {cluster} operator to write the bootstrap Secret", written, timeout=60,
                     on_timeout=self.logs)
            token, ca_pem, ca_hash = secret[0]
            bootstrap = write_bootstrap(self.workdir / f"bootstrap-{cluster}", token, ca_pem)
            for node in (n for n in NODES if n.cluster == cluster):
                self.agents[node.name] = start_agent(self.pods, self.image, self.hosts[node.name],
                                                     node.name, self.ctl, bootstrap, self.state(node),
                                                     ca_hash)

    def logs(self) -> str:
        return logs_on_failure(self.pods)

    def not_ready(self) -> str:
        """What each agent's readiness probe says, then the containers' logs."""
        probes = "\n".join(f"{name}: {agent_ready(agent) or 'ready'}" for name, agent in self.agents.items())
        return f"{probes}\n{self.logs()}"

    def tunnel_state(self) -> str:
        return str(self.ctl.tunnels().get(TUNNEL, {}).get("state", "absent"))

    def ping(self, src: NodeSpec, dst: NodeSpec) -> bool:
        return self.hosts[src.name].ping(dst.pod_address, src=src.pod_address, count=2, wait=1).ok


@pytest.fixture
def netns_prefix() -> str:
    return "mk-"


@pytest.fixture
def world(lab: Lab, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Clusters]:
    """Both clusters, meshed by the site-scope POLICY unless the test is parametrized with another."""
    image = meshsec_image()
    policy = getattr(request, "param", POLICY)
    with KubeApis(["east", "west"]) as apis:
        pods = Containers(tmp_path / "containers", lab=lab, prefix="mk")
        try:
            yield Clusters(lab, pods, image, apis, tmp_path, policy)
        finally:
            pods.close()  # before the API servers go, so the operators' last words are logged


def test_two_clusters_mesh_and_follow_their_nodes(
    world: Clusters, capsys: pytest.CaptureFixture[str]
) -> None:
    phase = Phases(capsys, "k8s clusters")

    east_gw, east_w1, west_gw, west_w1 = (BY_NAME[n] for n in ("east-gw", "east-w1", "west-gw", "west-w1"))
    for node in NODES:
        world.create_node(node)
    phase("core Nodes created (the fixture started the controller and the operators)")

    def declared() -> bool:
        nodes = world.ctl.nodes()
        return all(n.name in nodes for n in NODES) and {"east", "west"} <= set(world.ctl.resources("sites"))

    wait_for("the operators to declare every core Node", declared, timeout=60, on_timeout=world.logs)
    node = world.ctl.nodes()["east-gw"]
    assert node["spec"]["site"] == "east"
    assert node["spec"]["endpoints"] == {"private": ["198.18.72.11"]}
    assert node["spec"]["prefixes"] == ["198.19.72.0/24"]
    assert node["metadata"]["labels"]["topology.kubernetes.io/zone"] == "east-a"
    world.start_agents()
    phase("agents started with the bootstrap Secrets' tokens")

    wait_for("every agent to be ready (the DaemonSet's probe)",
             lambda: all(agent_ready(a) == "" for a in world.agents.values()), timeout=90,
             on_timeout=world.not_ready)  # fmt: skip
    wait_for(f"{TUNNEL} established", lambda: world.tunnel_state() == ESTABLISHED, timeout=60,
             on_timeout=world.logs)
    phase("gateways' tunnel established")
    assert set(world.ctl.tunnels()) == {TUNNEL}  # site scope: only the gateways have tunnels
    # The tunnel's selectors may merge adjacent pod CIDRs (198.19.82.0/24 + .83.0/24 -> /23), and
    # the routes follow them: compare what they cover.
    west_pods = covering(n.pod_cidr for n in NODES if n.cluster == "west")
    wait_for("east-w1's agent to route the west cluster through east-gw",
             lambda: world.routes_via(east_w1) == {east_gw.underlay: west_pods},
             timeout=30, on_timeout=world.logs)  # fmt: skip
    wait_for("gateway pod address -> the other cluster's gateway pod address",
             lambda: world.ping(east_gw, west_gw), timeout=30, on_timeout=world.logs)
    wait_for("worker pod address -> the other cluster's worker pod address",
             lambda: world.ping(east_w1, west_w1), timeout=30, on_timeout=world.logs)
    phase("pings across the clusters")

    first_cert = (world.state(west_gw) / CERT).read_bytes()
    world.delete_node(west_gw)
    wait_for("west-gw to leave the mesh", lambda: "west-gw" not in world.ctl.nodes(), timeout=30,
             on_timeout=world.logs)
    wait_for(f"{TUNNEL} gone from the controller and from east-gw's agent",
             lambda: world.tunnel_state() == "absent" and not agent_tunnels(world.state(east_gw)),
             timeout=60, on_timeout=world.logs)  # fmt: skip
    wait_for("east-w1's routes to the west cluster gone", lambda: not world.agent_routes(east_w1),
             timeout=30, on_timeout=world.logs)
    assert not world.ping(east_gw, west_gw)
    phase("deleted west-gw: its node, its tunnel and the routes through it are gone everywhere")

    world.create_node(west_gw)
    wait_for("west-gw's agent to enroll again (a new certificate)",
             lambda: (world.state(west_gw) / CERT).read_bytes() != first_cert, timeout=90,
             on_timeout=world.logs)  # fmt: skip
    node = world.ctl.nodes()["west-gw"]
    assert node["metadata"]["annotations"]["kubernetes.meshsec.io/node-uid"] == world.uids["west-gw"]
    assert (node.get("status") or {}).get("phase") == "Enrolled"
    wait_for(f"{TUNNEL} established again", lambda: world.tunnel_state() == ESTABLISHED, timeout=90,
             on_timeout=world.logs)
    wait_for("the ping across the clusters again", lambda: world.ping(east_w1, west_w1), timeout=30,
             on_timeout=world.logs)
    phase("re-created west-gw: re-enrolled, tunnel and ping back")
    for name, container in world.agents.items():
        assert container.running(), name
    for name, operator in world.operators.items():
        assert operator.running(), name


@pytest.mark.parametrize("world", [NODE_POLICY], indirect=True)
def test_a_node_scope_mesh_joins_every_node_of_both_clusters(
    world: Clusters, capsys: pytest.CaptureFixture[str]
) -> None:
    phase = Phases(capsys, "k8s node scope")
    for node in NODES:
        world.create_node(node)
    wait_for("the operators to declare every core Node",
             lambda: all(n.name in world.ctl.nodes() for n in NODES), timeout=60,
             on_timeout=world.logs)  # fmt: skip
    world.start_agents()
    phase("agents started")
    pairs = {" <-> ".join(sorted((a.name, b.name))) for a in NODES for b in NODES if a.name < b.name}

    def all_established() -> bool:
        tunnels = world.ctl.tunnels()
        return set(tunnels) == pairs and all(t["state"] == ESTABLISHED for t in tunnels.values())

    wait_for("a tunnel between every two nodes", all_established, timeout=90,
             on_timeout=lambda: f"{sorted(world.ctl.tunnels().items())}\n{world.logs()}")
    phase(f"{len(pairs)} node-to-node tunnels established")
    east_w1, west_w1 = BY_NAME["east-w1"], BY_NAME["west-w1"]
    wait_for("worker pod address -> the other cluster's worker pod address, directly",
             lambda: world.ping(east_w1, west_w1), timeout=30, on_timeout=world.logs)
    assert not world.agent_routes(east_w1)  # its own tunnel carries it: no route via a gateway
    phase("pings worker to worker")
    first_cert = (world.state(west_w1) / CERT).read_bytes()
    world.delete_node(west_w1)
    wait_for("every tunnel of west-w1 gone, in the controller and in east-w1's agent",
             lambda: not any("west-w1" in t for t in world.ctl.tunnels())
             and len(agent_tunnels(world.state(east_w1))) == len(NODES) - 2,
             timeout=60, on_timeout=world.logs)  # fmt: skip
    assert not world.ping(east_w1, west_w1)
    world.create_node(west_w1)
    wait_for("west-w1 enrolled again", lambda: (world.state(west_w1) / CERT).read_bytes() != first_cert,
             timeout=90, on_timeout=world.logs)
    wait_for("every tunnel again", all_established, timeout=90, on_timeout=world.logs)
    wait_for("the ping again", lambda: world.ping(east_w1, west_w1), timeout=30, on_timeout=world.logs)
    phase("deleted and re-created west-w1: its tunnels went and came back")
