"""The cluster as a Site: core Kubernetes Nodes in kmock (addresses, labels, podCIDRs) become the
cluster's Site and one meshsec Node each in a real in-process controller; a real NodeAgent
enrolls with the DaemonSet's site token and reports ready; a deleted core Node leaves the mesh
(node and tunnels), a re-created one (same name, new uid) is a new identity: the old
certificate is refused and the agent enrolls again by itself."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from meshsec.agent import cli as agent_cli
from meshsec.agent.node.agent import NodeAgent, NodeAgentConfig
from meshsec.agent.node.statedir import CERT, STATUS_SOCKET
from meshsec.controller.operator.cluster import (
    CLUSTER_LABEL,
    NODE_UID,
    ClusterConfig,
    derive_node,
    site_manifest,
)
from meshsec.controller.operator.nodes import NODE_MANAGER, KubernetesNodes, NodeSweeper
from meshsec.controller.operator.sync import ControllerSync, Verdict
from meshsec.controller.resources import Kind
from meshsec.controller.server import Controller
from meshsec.v1 import admin_pb2, agent_pb2, agent_pb2_grpc
from tests.agent.test_agent_inprocess import agent_for
from tests.controller.ctl_harness import (
    admin_channel,
    admin_stub,
    create_token,
    enroll,
    running_controller,
)
from tests.controller.test_mesh_support import policy

kmock_lib = pytest.importorskip("kmock", reason="kmock not installed (k8s test dependency)")
kubernetes = pytest.importorskip("kubernetes")

pytestmark = pytest.mark.timeout(120)
SITE = "k8s-east"
CONFIG = ClusterConfig(site=SITE, service_cidrs=("198.19.240.0/20",), site_labels={"mesh": "k8s"})


def core_node(
    name: str,
    *,
    internal: str = "",
    external: str = "",
    pod_cidrs: tuple[str, ...] = (),
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    addresses = [{"type": "Hostname", "address": name}]
    if internal:
        addresses.append({"type": "InternalIP", "address": internal})
    if external:
        addresses.append({"type": "ExternalIP", "address": external})
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "uid": str(uuid.uuid4()),
            "labels": {"kubernetes.io/hostname": name, **(labels or {})},
            "annotations": annotations or {},
        },
        "spec": {"podCIDRs": list(pod_cidrs), **({"podCIDR": pod_cidrs[0]} if pod_cidrs else {})},
        "status": {"addresses": addresses},
    }


# --- the mapping alone -------------------------------------------------------------------------


def test_endpoints_come_from_the_node_addresses_or_the_annotation() -> None:
    external = derive_node(core_node("n1", internal="198.18.1.1", external="198.18.2.1"), CONFIG)
    assert external.manifest is not None
    assert external.manifest["spec"]["endpoints"] == {"public": ["198.18.2.1"]}
    internal = derive_node(core_node("n2", internal="198.18.1.2"), CONFIG)
    assert internal.manifest is not None
    assert internal.manifest["spec"]["endpoints"] == {"private": ["198.18.1.2"]}
    annotated = derive_node(
        core_node(
            "n3",
            internal="198.18.1.3",
            annotations={"meshsec.io/endpoints": "198.18.9.3, 198.18.9.4", "meshsec.io/public-endpoints": ""},
        ),
        CONFIG,
    )
    assert annotated.manifest is not None
    assert annotated.manifest["spec"]["endpoints"] == {"private": ["198.18.9.3", "198.18.9.4"]}
    bad = derive_node(core_node("n4", annotations={"meshsec.io/endpoints": "eth0"}), CONFIG)
    assert bad.manifest is None and "meshsec.io/endpoints" in bad.problem and "'eth0'" in bad.problem
    none = derive_node(core_node("n5"), CONFIG)
    assert none.manifest is None and "no ExternalIP or InternalIP" in none.problem


def test_labels_pod_cidrs_and_the_site() -> None:
    node = core_node(
        "w1",
        internal="198.18.1.1",
        pod_cidrs=("198.19.1.0/24", "2001:db8:1::/64"),
        labels={"topology.kubernetes.io/zone": "a", CLUSTER_LABEL: "forged", "meshsec.io/gateway": "true"},
    )
    derived = derive_node(node, CONFIG)
    assert derived.manifest is not None
    meta, spec = derived.manifest["metadata"], derived.manifest["spec"]
    assert meta["labels"] == {
        "kubernetes.io/hostname": "w1",
        "topology.kubernetes.io/zone": "a",
        "meshsec.io/gateway": "true",
        CLUSTER_LABEL: SITE,  # the operator's own key: never copied from the core Node
    }
    assert meta["annotations"] == {NODE_UID: node["metadata"]["uid"]}
    assert spec["prefixes"] == ["198.19.1.0/24", "2001:db8:1::/64"]
    other = core_node("w2", internal="198.18.1.2", pod_cidrs=("198.19.2.0/24",))
    site = site_manifest([other, node], CONFIG)
    assert site["spec"] == {
        "prefixes": ["198.19.1.0/24", "198.19.2.0/24", "198.19.240.0/20", "2001:db8:1::/64"],
        "gatewaySelector": {"matchLabels": {"meshsec.io/gateway": "true"}},
    }
    assert site["metadata"]["labels"] == {"mesh": "k8s", CLUSTER_LABEL: SITE}
    exists = ClusterConfig(site=SITE, gateway_label="example.com/edge")
    assert exists.gateway_selector() == {
        "matchExpressions": [{"key": "example.com/edge", "operator": "Exists"}]
    }


# --- against kmock and a real controller --------------------------------------------------------


class CoreNodes:
    """The test's kubectl for core Nodes, through kmock's HTTP API."""

    def __init__(self, kmock: Any) -> None:
        self.kmock = kmock
        kmock.resources["v1/nodes"] = kmock_lib.ResourceInfo(kind="Node", namespaced=False)

    async def create(self, doc: dict[str, Any]) -> None:
        response = await self.kmock.post("/api/v1/nodes", json=doc)
        assert response.status < 300, await response.text()

    async def delete(self, name: str) -> None:
        response = await self.kmock.delete(f"/api/v1/nodes/{name}")
        assert response.status < 300, await response.text()

    async def patch(self, name: str, changes: dict[str, Any]) -> None:
        response = await self.kmock.patch(
            f"/api/v1/nodes/{name}",
            json=changes,
            headers={"Content-Type": "application/merge-patch+json"},
        )
        assert response.status < 300, await response.text()

    def source(self) -> KubernetesNodes:
        configuration = kubernetes.client.Configuration()
        configuration.host = str(self.kmock.url).rstrip("/")
        return KubernetesNodes(kubernetes.client.ApiClient(configuration))


@pytest.fixture
async def ctl(tmp_path: Path) -> AsyncIterator[Controller]:
    async with running_controller(tmp_path) as controller:
        yield controller


async def stored(sync: ControllerSync, kind: Kind, name: str) -> dict[str, Any] | None:
    resource = await sync.get(kind, name)
    if resource is None:
        return None
    from google.protobuf import json_format

    return {
        "labels": dict(resource.metadata.labels),
        "annotations": dict(resource.metadata.annotations),
        "spec": json_format.MessageToDict(resource.spec),
    }


async def test_core_nodes_become_the_site_and_its_nodes(
    kmock: Any, ctl: Controller, sync: ControllerSync
) -> None:
    k8s = CoreNodes(kmock)
    await k8s.create(
        core_node(
            "east-gw",
            internal="198.18.31.1",
            pod_cidrs=("198.19.31.0/24",),
            labels={"meshsec.io/gateway": "true"},
        )
    )
    await k8s.create(
        core_node("east-w1", internal="198.18.31.2", external="198.18.131.2", pod_cidrs=("198.19.32.0/24",))
    )
    await k8s.create(core_node("east-nic", pod_cidrs=("198.19.33.0/24",)))  # no address: not in the mesh
    sweeper = NodeSweeper(sync, k8s.source(), CONFIG)
    report = await sweeper.sweep()
    assert sorted(report.applied) == ["Site/k8s-east", "east-gw", "east-w1"]
    assert "east-nic" in report.problems
    site = await stored(sync, Kind.SITE, SITE)
    assert site is not None
    assert site["spec"]["prefixes"] == [
        "198.19.31.0/24",
        "198.19.32.0/24",
        "198.19.33.0/24",
        "198.19.240.0/20",
    ]
    gw = await stored(sync, Kind.NODE, "east-gw")
    w1 = await stored(sync, Kind.NODE, "east-w1")
    assert gw is not None and w1 is not None
    assert gw["spec"]["endpoints"] == {"private": ["198.18.31.1"]}
    assert gw["spec"]["prefixes"] == ["198.19.31.0/24"]
    assert w1["spec"]["endpoints"] == {"public": ["198.18.131.2"]}
    assert (
        gw["labels"]["meshsec.io/gateway"] == "true" and gw["labels"]["kubernetes.io/hostname"] == "east-gw"
    )
    assert gw["annotations"]["meshsec.io/last-applied-by"] == NODE_MANAGER
    async with admin_channel(ctl) as channel:
        topology = await admin_stub(channel).GetTopology(admin_pb2.GetTopologyRequest(), timeout=5)
    (east,) = [s for s in topology.sites if s.name == SITE]
    assert list(east.gateways) == ["east-gw"]
    again = await sweeper.sweep()
    assert again.applied == [] and again.deleted == []  # nothing changed: nothing written


async def test_node_scope_tunnels_carry_the_pod_cidrs(
    kmock: Any, ctl: Controller, sync: ControllerSync
) -> None:
    k8s = CoreNodes(kmock)
    await k8s.create(core_node("ps-a", internal="198.18.32.1", pod_cidrs=("198.19.41.0/24",)))
    await k8s.create(core_node("ps-b", internal="198.18.32.2", pod_cidrs=("198.19.42.0/24",)))
    await NodeSweeper(sync, k8s.source(), CONFIG).sweep()
    members = {"matchLabels": {CLUSTER_LABEL: SITE}}
    pods = policy("pods", "full-mesh", "node", members, mode="tunnel", auth={"method": "psk"})
    assert (await sync.apply(pods)).verdict is Verdict.DONE
    token = await create_token(ctl, SITE, "ps-a")
    node = await enroll(ctl, token, "ps-a", "198.18.99.9")
    async with node.channel(ctl) as channel:
        stream = agent_pb2_grpc.AgentServiceStub(channel).WatchDesiredState(
            agent_pb2.WatchRequest(node_name="ps-a"), timeout=10
        )
        first = await anext(aiter(stream))
        stream.cancel()
    (tunnel,) = first.upserted_tunnels
    (child,) = tunnel.children
    assert [ts.cidr for ts in child.local_ts] == ["198.18.32.1/32", "198.19.41.0/24"]
    assert [ts.cidr for ts in child.remote_ts] == ["198.18.32.2/32", "198.19.42.0/24"]
    # The declared endpoint, not what the agent reported from its interfaces.
    assert tunnel.local_endpoint.address == "198.18.32.1"


async def test_delete_removes_and_recreate_reenrolls_a_real_agent(
    kmock: Any, ctl: Controller, sync: ControllerSync, tmp_path: Path
) -> None:
    k8s = CoreNodes(kmock)
    first = core_node("re-a", internal="127.78.1.1", pod_cidrs=("198.19.51.0/24",))
    await k8s.create(first)
    await k8s.create(core_node("re-b", internal="127.78.1.2", pod_cidrs=("198.19.52.0/24",)))
    # A meshctl-declared node of the same site with no core Node: not the sweeper's to remove.
    declared = {
        "apiVersion": "meshsec.io/v1alpha1",
        "kind": "Node",
        "metadata": {"name": "re-manual"},
        "spec": {"site": SITE, "endpoints": {"private": ["198.18.33.9"]}},
    }
    sweeper = NodeSweeper(sync, k8s.source(), CONFIG)
    await sweeper.sweep()
    assert (await sync.apply(declared, field_manager="meshctl")).verdict is Verdict.DONE
    members = {"matchLabels": {CLUSTER_LABEL: SITE}}
    nodes = policy("nodes", "full-mesh", "node", members, auth={"method": "psk"})
    assert (await sync.apply(nodes)).verdict is Verdict.DONE
    assert (await sync.tunnels(Kind.NODE, "re-a")).desired == 1
    # The DaemonSet's token: bound to the site, not to a name, several uses.
    token = await create_token(ctl, SITE, "", uses=5)
    agent = await agent_for(ctl, tmp_path, "re-a", "127.78.1.1", token)
    try:
        await until("the agent to be ready", lambda: health(tmp_path / "re-a", "--ready") == 0)
        first_serial = (tmp_path / "re-a" / CERT).read_bytes()
        a = await stored(sync, Kind.NODE, "re-a")
        assert a is not None and a["spec"]["endpoints"] == {"private": ["127.78.1.1"]}  # declared, kept

        # An agent enrolled into the site with no core Node of its name: not the sweeper's either.
        await enroll(ctl, token, "re-stray", "198.18.33.8")
        await k8s.delete("re-a")
        report = await sweeper.sweep()
        assert report.deleted == ["re-a"]
        assert await sync.get(Kind.NODE, "re-a") is None
        assert await sync.get(Kind.NODE, "re-manual") is not None
        assert await sync.get(Kind.NODE, "re-stray") is not None
        assert (await sync.tunnels(Kind.NODE, "re-b")).desired == 0
        site = await stored(sync, Kind.SITE, SITE)
        assert site is not None and "198.19.51.0/24" not in site["spec"]["prefixes"]

        again = core_node("re-a", internal="127.78.1.1", pod_cidrs=("198.19.53.0/24",))
        assert again["metadata"]["uid"] != first["metadata"]["uid"]
        await k8s.create(again)
        report = await sweeper.sweep()
        assert "re-a" in report.applied
        await until(
            "the agent to enroll again",
            lambda: (tmp_path / "re-a" / CERT).read_bytes() != first_serial,
        )
        await until("the agent to be ready again", lambda: health(tmp_path / "re-a", "--ready") == 0)
        a = await stored(sync, Kind.NODE, "re-a")
        assert a is not None and a["annotations"][NODE_UID] == again["metadata"]["uid"]
        assert "meshsec.io/enrolled-with-token" in a["annotations"]
        assert (await sync.tunnels(Kind.NODE, "re-a")).desired == 1
    finally:
        await agent.stop()
    assert health(tmp_path / "re-a", "--live") == 1  # stopped: nothing answers


async def test_recreated_while_the_operator_was_away(
    kmock: Any, ctl: Controller, sync: ControllerSync
) -> None:
    """Delete and create between two sweeps: the uid says it is another node; the enrolled
    identity is deleted (its certificate refused) and the new one may enroll with a site token."""
    k8s = CoreNodes(kmock)
    await k8s.create(core_node("away-a", internal="198.18.34.1"))
    sweeper = NodeSweeper(sync, k8s.source(), CONFIG)
    await sweeper.sweep()
    token = await create_token(ctl, SITE, "", uses=3)
    old = await enroll(ctl, token, "away-a", "198.18.34.1")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await enroll(ctl, token, "away-a", "198.18.34.1")
    assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS  # a site token cannot take it over
    await k8s.delete("away-a")
    await k8s.create(core_node("away-a", internal="198.18.34.1"))
    report = await sweeper.sweep()
    assert report.recreated == ["away-a"]
    async with old.channel(ctl) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await agent_pb2_grpc.AgentServiceStub(channel).ReportStatus(
                agent_pb2.StatusReport(node_name="away-a"), timeout=5
            )
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    new = await enroll(ctl, token, "away-a", "198.18.34.1")
    assert new.response.node.metadata.annotations[NODE_UID]


class CountingCalls(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Counts the unary RPCs a client makes, by method name (Apply, List, Delete)."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        method = client_call_details.method
        self.calls[(method.decode() if isinstance(method, bytes) else method).rsplit("/", 1)[-1]] += 1
        return await continuation(client_call_details, request)

    def take(self) -> dict[str, int]:
        taken = dict(self.calls)
        self.calls.clear()
        return taken


async def test_a_pass_costs_calls_for_the_nodes_that_changed_only(kmock: Any, ctl: Controller) -> None:
    """Every core Node event triggers a pass; applying every Node on each one cost O(nodes) RPCs
    per event. A pass now sends a Node only if its derived manifest changed or the controller's
    copy changed since this sweeper applied it."""
    k8s = CoreNodes(kmock)
    names = [f"rpc-{i}" for i in range(6)]
    for i, name in enumerate(names):
        await k8s.create(core_node(name, internal=f"198.18.35.{i + 1}", pod_cidrs=(f"198.19.{60 + i}.0/24",)))
    counter = CountingCalls()
    assert ctl.config.admin_socket is not None
    sync = ControllerSync.unix(ctl.config.admin_socket, interceptors=[counter])
    try:
        sweeper = NodeSweeper(sync, k8s.source(), CONFIG)
        first = await sweeper.sweep()
        assert sorted(first.applied) == sorted(["Site/k8s-east", *names])
        assert counter.take() == {"Apply": 1 + len(names), "List": 1}

        quiet = await sweeper.sweep()
        assert sorted(quiet.unchanged) == names and quiet.applied == []
        assert counter.take() == {"Apply": 1, "List": 1}  # the Site and the list only

        await k8s.patch("rpc-2", {"metadata": {"labels": {"topology.kubernetes.io/zone": "b"}}})
        one = await sweeper.sweep()
        assert one.applied == ["rpc-2"]
        assert counter.take() == {"Apply": 2, "List": 1}
        zoned = await stored(sync, Kind.NODE, "rpc-2")
        assert zoned is not None and zoned["labels"]["topology.kubernetes.io/zone"] == "b"
        counter.take()

        # Still level-triggered against the controller: a Node someone else rewrote, and one
        # deleted there, are declared again on the next pass; the others cost nothing.
        rewritten = {
            "apiVersion": "meshsec.io/v1alpha1",
            "kind": "Node",
            "metadata": {"name": "rpc-3"},
            "spec": {"site": SITE, "endpoints": {"private": ["198.18.35.99"]}},
        }
        assert (await sync.apply(rewritten, field_manager="meshctl")).verdict is Verdict.DONE
        gone = await sync.get(Kind.NODE, "rpc-4")
        assert gone is not None
        deleted = await sync.delete(Kind.NODE, "rpc-4", resource_version=gone.metadata.resource_version)
        assert deleted.verdict is Verdict.DONE
        counter.take()
        healed = await sweeper.sweep()
        assert sorted(healed.applied) == ["rpc-3", "rpc-4"]
        assert counter.take() == {"Apply": 3, "List": 1}
        back = await stored(sync, Kind.NODE, "rpc-3")
        assert back is not None and back["spec"]["endpoints"] == {"private": ["198.18.35.4"]}
        assert back["annotations"]["meshsec.io/last-applied-by"] == NODE_MANAGER

        counter.take()  # the test's own reads

        await k8s.delete("rpc-5")
        left = await sweeper.sweep()
        assert left.deleted == ["rpc-5"] and left.applied == ["Site/k8s-east"]  # its podCIDR left the Site
        assert counter.take() == {"Apply": 1, "List": 1, "Delete": 1}
    finally:
        await sync.close()


def health(state_dir: Path, flag: str) -> int:
    assert (state_dir / STATUS_SOCKET) is not None
    return agent_cli.main(["health", flag, "--state-dir", str(state_dir), "--timeout", "5"])


async def until(what: str, check: Any, timeout: float = 40.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await asyncio.to_thread(check):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


async def test_health_of_an_agent_that_cannot_enroll(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Live (it answers) but not ready, saying why, while its controller is unreachable."""
    (tmp_path / "ctl").mkdir()
    (tmp_path / "ctl" / "ca.pem").write_bytes(b"")
    token_file = tmp_path / "t.token"
    token_file.write_text("unused\n")
    agent = NodeAgent(
        NodeAgentConfig(
            controller="127.0.0.1:9",
            bootstrap="127.0.0.1:9",
            node="lonely",
            state_dir=tmp_path / "lonely",
            token_file=token_file,
            ca_file=tmp_path / "ctl" / "ca.pem",
            dataplane="none",
            ike_port=15701,
            bind=("127.78.1.3",),
        )
    )
    await agent.start()
    try:
        capsys.readouterr()
        assert await asyncio.to_thread(health, tmp_path / "lonely", "--live") == 0
        assert capsys.readouterr().out.startswith("live: the agent answers on ")
        assert await asyncio.to_thread(health, tmp_path / "lonely", "--ready") == 1
        assert capsys.readouterr().out == "not ready: not enrolled yet\n"
    finally:
        await agent.stop()
    assert await asyncio.to_thread(health, tmp_path / "lonely", "--ready") == 1
    assert capsys.readouterr().out.startswith("not live: no agent answering; tried ")
