"""The kopf operator against kmock (an in-memory Kubernetes API) and a real in-process controller
on an embedded store: custom resources created, updated and deleted in "Kubernetes" reach the
controller through its admin socket; refusals come back as Applied (and Ready) conditions naming
the field; Ready and Degraded count the tunnels the agents reported.

kmock is not a faithful API server (docs/kubernetes.md): it assigns no uid/resourceVersion, so
the test supplies them, and it validates nothing, which lets invalid objects reach the operator
the way objects the CRD schema cannot judge (cross-field rules, proposals) do in a real cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from meshsec.controller.operator.crds import GROUP, NAMES, VERSION, kind_of
from meshsec.controller.operator.sync import ControllerSync
from meshsec.controller.resources import Kind
from meshsec.controller.server import Controller
from meshsec.v1 import admin_pb2

kopf = pytest.importorskip("kopf", reason="kopf not installed (k8s extra)")
kmock_lib = pytest.importorskip("kmock", reason="kmock not installed (k8s test dependency)")

from meshsec.controller.operator.__main__ import build_registry, watch_gateway_secrets  # noqa: E402
from meshsec.controller.operator.bootstrap import KubernetesSecrets  # noqa: E402
from meshsec.controller.operator.handlers import OperatorConfig, configure  # noqa: E402
from meshsec.controller.operator.psk import PskSync  # noqa: E402

WAIT = 60.0  # generous: only a failing test waits this long (the machine may be loaded)
_versions = itertools.count(1)


def _path(kind: Kind, name: str = "") -> str:
    base = f"/apis/{GROUP}/{VERSION}/{NAMES[kind].plural}"
    return f"{base}/{name}" if name else base


class Cluster:
    """The test's kubectl: writes go through kmock's HTTP API so the operator sees watch events."""

    def __init__(self, kmock: Any) -> None:
        self.kmock = kmock

    async def create(self, doc: dict[str, Any]) -> None:
        doc = {**doc, "metadata": {**doc["metadata"], "uid": str(uuid.uuid4()), "generation": 1}}
        doc["metadata"]["resourceVersion"] = str(next(_versions))
        kind = kind_of(doc["kind"])
        response = await self.kmock.post(_path(kind), json=doc)
        assert response.status < 300, await response.text()

    async def patch(self, kind: Kind, name: str, change: dict[str, Any]) -> None:
        current = await self.get(kind, name)
        assert current is not None
        meta = current["metadata"]
        body = {
            **change,
            "metadata": {
                **change.get("metadata", {}),
                "resourceVersion": str(next(_versions)),
                "generation": int(meta.get("generation", 1)) + (1 if "spec" in change else 0),
            },
        }
        response = await self.kmock.patch(
            _path(kind, name), json=body, headers={"Content-Type": "application/merge-patch+json"}
        )
        assert response.status < 300, await response.text()

    async def delete(self, kind: Kind, name: str) -> None:
        response = await self.kmock.delete(_path(kind, name))
        assert response.status < 300, await response.text()

    async def get(self, kind: Kind, name: str) -> dict[str, Any] | None:
        response = await self.kmock.get(_path(kind, name))
        if response.status == 404:
            return None
        assert response.status < 300, await response.text()
        body: dict[str, Any] = await response.json()
        return body


async def eventually(what: str, check: Callable[[], Any], timeout: float = WAIT) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    last: Any = None
    while asyncio.get_running_loop().time() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def kube_client(kmock: Any) -> Any:
    """The official client's ApiClient for kmock (what the operator builds from a kubeconfig)."""
    import kubernetes

    configuration = kubernetes.client.Configuration()
    configuration.host = str(kmock.url).rstrip("/")
    return kubernetes.client.ApiClient(configuration)


def declare_resources(kmock: Any) -> None:
    """What the CRDs and kopf's backbone make discoverable in a real cluster."""
    for kind in Kind:
        names = NAMES[kind]
        kmock.resources[f"{GROUP}/{VERSION}/{names.plural}"] = kmock_lib.ResourceInfo(
            kind=names.kind,
            singular=names.singular,
            namespaced=False,
            shortnames=set(names.short_names),
            subresources={"status"},
            verbs={"list", "watch", "get", "create", "patch", "update", "delete"},
        )
    # kopf's backbone: it waits for these to be discoverable before it watches anything.
    kmock.resources["v1/namespaces"] = kmock_lib.ResourceInfo(kind="Namespace", namespaced=False)
    kmock.resources["apiextensions.k8s.io/v1/customresourcedefinitions"] = kmock_lib.ResourceInfo(
        kind="CustomResourceDefinition", namespaced=False
    )


@contextlib.asynccontextmanager
async def operator_running(
    kmock: Any,
    controller: Controller,
    *,
    resync: float = 0.5,
    secret_namespace: str = "",
    watchers: list[Any] | None = None,
) -> AsyncIterator[tuple[Cluster, ControllerSync]]:
    """kopf runs in its own thread and event loop, as in its own process: when it stops it cancels
    every task its loop started meanwhile, which must not include the controller's gRPC tasks.
    With `secret_namespace`, ExternalGateway PSKs come from kmock's Secrets there and each
    referenced Secret is watched, as `run` does (the SecretWatcher is appended to `watchers`)."""
    declare_resources(kmock)
    socket = controller.config.admin_socket
    assert socket is not None
    url = str(kmock.url)
    stop = threading.Event()
    failures: list[BaseException] = []

    def login(**_: Any) -> Any:
        return kopf.ConnectionInfo(server=url, scheme=None)

    def fast(settings: Any, **_: Any) -> None:
        configure(settings)
        settings.posting.enabled = False
        settings.watching.reconnect_backoff = 0.1

    async def operate() -> None:
        sync = ControllerSync.unix(socket)
        watcher = None
        try:
            config = OperatorConfig(resync_seconds=resync, retry_seconds=0.5)
            psk = None
            if secret_namespace:
                api = kube_client(kmock)
                psk = PskSync(sync, KubernetesSecrets(api), secret_namespace)
                watcher = watch_gateway_secrets(psk, api)
                if watchers is not None:
                    watchers.append(watcher)
            registry = build_registry(sync, config, login=login, psk=psk)
            kopf.on.startup(registry=registry)(fast)
            await kopf.operator(registry=registry, clusterwide=True, standalone=True, stop_flag=stop)
        finally:
            if watcher is not None:
                await watcher.close()
            await sync.close()

    def thread_main() -> None:
        try:
            asyncio.run(operate())
        except BaseException as exc:  # reported by the test below
            failures.append(exc)

    thread = threading.Thread(target=thread_main, name="kopf-operator", daemon=True)
    thread.start()
    sync = ControllerSync.unix(socket)
    try:
        yield Cluster(kmock), sync
    finally:
        stop.set()
        deadline = asyncio.get_running_loop().time() + 20
        while thread.is_alive() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        await sync.close()
    assert not thread.is_alive(), "the operator did not stop"
    assert not failures, failures


@pytest.fixture
def cluster(kmock: Any, controller: Controller) -> Any:
    return operator_running(kmock, controller)


SITE = {
    "apiVersion": "meshsec.io/v1alpha1",
    "kind": "Site",
    "metadata": {"name": "k8s-dc1", "labels": {"kind": "datacenter"}},
    "spec": {"prefixes": ["198.19.61.0/24"], "gatewaySelector": {"matchLabels": {"role": "gateway"}}},
}
SITE2 = {
    "apiVersion": "meshsec.io/v1alpha1",
    "kind": "Site",
    "metadata": {"name": "k8s-dc2", "labels": {"kind": "datacenter"}},
    "spec": {"prefixes": ["198.19.62.0/24"], "gatewaySelector": {"matchLabels": {"role": "gateway"}}},
}


def _node(name: str, site: str, public: str) -> dict[str, Any]:
    return {
        "apiVersion": "meshsec.io/v1alpha1",
        "kind": "MeshNode",  # the CRD's kind; the operator applies it as the controller's Node
        "metadata": {"name": name, "labels": {"role": "gateway"}},
        "spec": {"site": site, "endpoints": {"public": [public]}},
    }


POLICY = {
    "apiVersion": "meshsec.io/v1alpha1",
    "kind": "MeshPolicy",
    "metadata": {"name": "k8s-dc-mesh"},
    "spec": {
        "topology": "full-mesh",
        "scope": "site",
        "members": {"matchLabels": {"kind": "datacenter"}},
        "auth": {"method": "psk"},
    },
}


def ready_of(obj: dict[str, Any] | None, kind: str = "Ready") -> dict[str, Any] | None:
    """The condition of type `kind` (Ready, Applied, Degraded)."""
    for condition in ((obj or {}).get("status") or {}).get("conditions") or []:
        if condition.get("type") == kind:
            return dict(condition)
    return None


async def create_two_site_mesh(k8s: Cluster) -> None:
    """Both sites with one gateway node each, then the policy that meshes them."""
    for doc in (
        SITE,
        SITE2,
        _node("k8s-gw1", "k8s-dc1", "198.18.61.1"),
        _node("k8s-gw2", "k8s-dc2", "198.18.62.1"),
    ):
        await k8s.create(doc)
    await k8s.create(POLICY)


async def test_create_update_delete_reach_the_controller(cluster: Any) -> None:
    async with cluster as (k8s, sync):
        await create_two_site_mesh(k8s)

        stored = await eventually(
            "the policy in the controller", lambda: sync.get(Kind.MESH_POLICY, "k8s-dc-mesh")
        )
        assert stored.metadata.annotations["meshsec.io/last-applied-by"] == "crd-sync"
        for kind, name in ((Kind.SITE, "k8s-dc1"), (Kind.NODE, "k8s-gw1"), (Kind.NODE, "k8s-gw2")):
            assert await eventually(f"{kind.value}/{name}", lambda k=kind, n=name: sync.get(k, n))

        async def applied_policy() -> dict[str, Any] | None:
            obj = await k8s.get(Kind.MESH_POLICY, "k8s-dc-mesh")
            applied = ready_of(obj, "Applied")
            tunnels = ((obj or {}).get("status") or {}).get("tunnels")
            # Counted on each resync: the nodes may reach the controller after the policy.
            return obj if applied and applied["status"] == "True" and tunnels and tunnels["desired"] else None

        policy = await eventually("Applied and tunnel counts on the policy", applied_policy)
        # One gateway per site, two sites: one tunnel, not established (no agents run here), so
        # applied but not Ready; nothing failed, so not Degraded either.
        assert policy["status"]["tunnels"] == {"desired": 1, "established": 0, "failed": 0}
        ready, degraded = ready_of(policy), ready_of(policy, "Degraded")
        assert ready is not None and degraded is not None
        assert (ready["status"], ready["reason"], ready["message"]) == (
            "False",
            "TunnelsNotEstablished",
            "0/1 tunnels established, 1 not up yet",
        )
        assert (degraded["status"], degraded["reason"]) == ("False", "NoFailures")
        assert policy["status"]["observedGeneration"] == 1

        # Update: the spec change reaches the controller.
        await k8s.patch(Kind.SITE, "k8s-dc1", {"spec": {"prefixes": ["198.19.61.0/24", "198.19.161.0/24"]}})

        async def two_prefixes() -> bool:
            site = await sync.get(Kind.SITE, "k8s-dc1")
            return site is not None and len(site.spec["prefixes"]) == 2

        await eventually("the updated site prefixes", two_prefixes)

        # A label change alone is an update too: selectors read labels. Dropping dc2 from the
        # policy's members removes the tunnel.
        await k8s.patch(Kind.SITE, "k8s-dc2", {"metadata": {"labels": {"kind": "retired"}}})

        async def relabelled() -> bool:
            site = await sync.get(Kind.SITE, "k8s-dc2")
            return site is not None and dict(site.metadata.labels) == {"kind": "retired"}

        await eventually("the site's new label in the controller", relabelled)
        assert (await sync.tunnels(Kind.MESH_POLICY, "k8s-dc-mesh")).desired == 0
        await k8s.patch(Kind.SITE, "k8s-dc2", {"metadata": {"labels": {"kind": "datacenter"}}})

        async def tunnel_back() -> bool:
            return (await sync.tunnels(Kind.MESH_POLICY, "k8s-dc-mesh")).desired == 1

        await eventually("the tunnel back after relabelling", tunnel_back)

        # Delete: the finalizer holds the CR until the controller deleted the resource.
        await k8s.delete(Kind.NODE, "k8s-gw2")

        async def node_gone() -> bool:
            return (
                await sync.get(Kind.NODE, "k8s-gw2") is None and await k8s.get(Kind.NODE, "k8s-gw2") is None
            )

        await eventually("node deleted in both", node_gone)
        tunnels = await sync.tunnels(Kind.MESH_POLICY, "k8s-dc-mesh")
        assert tunnels.desired == 0


async def test_invalid_resource_gets_a_condition_naming_the_field(cluster: Any) -> None:
    async with cluster as (k8s, sync):
        bad = {
            **POLICY,
            "metadata": {"name": "k8s-bad"},
            "spec": {**POLICY["spec"], "crypto": {"ikeProposals": ["aes256gcm16-prfsha256-x448"]}},  # type: ignore[dict-item]
        }
        await k8s.create(bad)

        async def refused() -> dict[str, Any] | None:
            ready = ready_of(await k8s.get(Kind.MESH_POLICY, "k8s-bad"))
            return ready if ready and ready["status"] == "False" else None

        ready = await eventually("a ValidationFailed condition", refused)
        assert ready["reason"] == "ValidationFailed"
        assert "spec.crypto.ikeProposals[0]" in ready["message"]
        assert "x448" in ready["message"]
        assert await sync.get(Kind.MESH_POLICY, "k8s-bad") is None

        # Fixing the spec applies it and flips the condition.
        await k8s.patch(
            Kind.MESH_POLICY,
            "k8s-bad",
            {"spec": {"crypto": {"ikeProposals": ["aes256gcm16-prfsha256-x25519"]}}},
        )

        async def applied() -> bool:
            ready = ready_of(await k8s.get(Kind.MESH_POLICY, "k8s-bad"), "Applied")
            return (
                bool(ready and ready["status"] == "True")
                and await sync.get(Kind.MESH_POLICY, "k8s-bad") is not None
            )

        await eventually("the fixed policy applied", applied)


async def test_cross_resource_refusal_then_convergence(cluster: Any) -> None:
    """A Node whose Site does not exist yet is refused by the controller (the condition names
    spec.site); once the Site appears the resync applies the Node without another edit."""
    async with cluster as (k8s, sync):
        await k8s.create(_node("k8s-early", "k8s-late", "198.18.63.1"))

        async def refused() -> dict[str, Any] | None:
            ready = ready_of(await k8s.get(Kind.NODE, "k8s-early"))
            return ready if ready and ready["status"] == "False" else None

        ready = await eventually("the node refused", refused)
        assert "spec.site" in ready["message"] and "k8s-late" in ready["message"]

        late = {
            **SITE,
            "metadata": {"name": "k8s-late"},
            "spec": {**SITE["spec"], "prefixes": ["198.19.63.0/24"]},
        }
        await k8s.create(late)
        assert await eventually("the node applied by resync", lambda: sync.get(Kind.NODE, "k8s-early"))

        # A Site still used by a Node cannot go: the CR stays, with the reason, until the Node goes.
        await k8s.delete(Kind.SITE, "k8s-late")

        async def blocked() -> dict[str, Any] | None:
            ready = ready_of(await k8s.get(Kind.SITE, "k8s-late"))
            return ready if ready and ready["reason"] == "DeleteBlocked" else None

        ready = await eventually("delete blocked", blocked)
        assert "Node/k8s-early" in ready["message"]
        assert await sync.get(Kind.SITE, "k8s-late") is not None

        await k8s.delete(Kind.NODE, "k8s-early")

        async def both_gone() -> bool:
            return (
                await sync.get(Kind.SITE, "k8s-late") is None and await k8s.get(Kind.SITE, "k8s-late") is None
            )

        await eventually("site deleted after its node", both_gone)


async def test_resource_owned_by_meshctl_survives_cr_deletion(cluster: Any, controller: Controller) -> None:
    async with cluster as (k8s, sync):
        assert controller.config.admin_socket is not None
        import grpc

        from meshsec.v1 import admin_pb2_grpc, common_pb2

        resource = common_pb2.Resource(api_version="meshsec.io/v1alpha1", kind="Site")
        resource.metadata.name = "k8s-manual"
        resource.spec.update({"prefixes": ["198.19.64.0/24"], "gatewaySelector": {}})
        async with grpc.aio.insecure_channel(f"unix:{controller.config.admin_socket}") as channel:
            await admin_pb2_grpc.AdminServiceStub(channel).Apply(
                admin_pb2.ApplyRequest(resources=[resource], field_manager="meshctl"), timeout=10
            )
        # The same name as a CR, but invalid: the operator never writes it, so deleting it leaves
        # meshctl's resource alone.
        broken = {**SITE, "metadata": {"name": "k8s-manual"}, "spec": {"prefixes": ["not-a-cidr"]}}
        await k8s.create(broken)
        await eventually("refused", lambda: _status_false(k8s, Kind.SITE, "k8s-manual"))
        await k8s.delete(Kind.SITE, "k8s-manual")
        await eventually("CR gone", lambda: _absent(k8s, Kind.SITE, "k8s-manual"))
        stored = await sync.get(Kind.SITE, "k8s-manual")
        assert stored is not None
        assert stored.metadata.annotations["meshsec.io/last-applied-by"] == "meshctl"


async def _status_false(k8s: Cluster, kind: Kind, name: str) -> bool:
    ready = ready_of(await k8s.get(kind, name))
    return bool(ready and ready["status"] == "False")


async def _condition(
    k8s: Cluster, kind: Kind, name: str, status: str, of: str = "Ready"
) -> dict[str, Any] | None:
    condition = ready_of(await k8s.get(kind, name), of)
    return condition if condition and condition["status"] == status else None


async def _absent(k8s: Cluster, kind: Kind, name: str) -> bool:
    return await k8s.get(kind, name) is None


async def test_agent_reports_reach_the_custom_resources(cluster: Any, controller: Controller) -> None:
    """Two nodes enroll and report their tunnel ESTABLISHED to the controller (as agents do);
    the policy's CR counts it established and the Node CRs turn Online."""
    from meshsec.v1 import agent_pb2, agent_pb2_grpc, common_pb2
    from tests.controller.ctl_harness import join

    async with cluster as (k8s, sync):
        await create_two_site_mesh(k8s)

        async def one_tunnel() -> list[Any]:
            response = await _list_tunnels(controller)
            return list(response.tunnels)

        (tunnel,) = await eventually("the policy's tunnel", one_tunnel)

        async def pending() -> bool:
            node = await k8s.get(Kind.NODE, "k8s-gw1")
            return ((node or {}).get("status") or {}).get("phase") == "Pending"

        await eventually("the node Pending before its agent reports", pending)

        for name, site, peer in (("k8s-gw1", "k8s-dc1", "k8s-gw2"), ("k8s-gw2", "k8s-dc2", "k8s-gw1")):
            node = await join(
                controller, site, name, "198.18.100.1", allow_reenroll=True, node_labels={"role": "gateway"}
            )
            report = agent_pb2.StatusReport(
                node_name=name,
                agent_instance_id=f"{name}-test",
                seq=1,
                full=True,
                tunnels=[
                    agent_pb2.TunnelStatus(
                        tunnel_id=tunnel.tunnel_id, peer_name=peer, state=common_pb2.TUNNEL_STATE_ESTABLISHED
                    )
                ],
            )
            async with node.channel(controller) as channel:
                await agent_pb2_grpc.AgentServiceStub(channel).ReportStatus(report, timeout=10)

        async def established() -> dict[str, Any] | None:
            obj = await k8s.get(Kind.MESH_POLICY, "k8s-dc-mesh")
            tunnels = ((obj or {}).get("status") or {}).get("tunnels") or {}
            return obj if tunnels.get("established") == 1 else None

        policy = await eventually("established count on the policy", established)
        assert policy["status"]["tunnels"] == {"desired": 1, "established": 1, "failed": 0}
        ready = await eventually(
            "the policy Ready", lambda: _condition(k8s, Kind.MESH_POLICY, "k8s-dc-mesh", "True")
        )
        assert (ready["reason"], ready["message"]) == ("TunnelsEstablished", "1/1 tunnels established")

        async def online() -> dict[str, Any] | None:
            node = await k8s.get(Kind.NODE, "k8s-gw2")
            status = (node or {}).get("status") or {}
            return (
                status
                if status.get("phase") == "Online" and status.get("tunnels", {}).get("established")
                else None
            )

        status = await eventually("the node Online", online)
        assert status["lastSeen"].endswith("Z")
        node_ready = await eventually("the node Ready", lambda: _condition(k8s, Kind.NODE, "k8s-gw2", "True"))
        assert node_ready["message"] == "1/1 tunnels established"

        # One end reports the tunnel FAILED: the policy is no longer Ready, and Degraded.
        failed = agent_pb2.StatusReport(
            node_name="k8s-gw2",
            agent_instance_id="k8s-gw2-test",
            seq=2,
            full=True,
            tunnels=[
                agent_pb2.TunnelStatus(
                    tunnel_id=tunnel.tunnel_id, peer_name="k8s-gw1", state=common_pb2.TUNNEL_STATE_FAILED
                )
            ],
        )
        async with node.channel(controller) as channel:
            await agent_pb2_grpc.AgentServiceStub(channel).ReportStatus(failed, timeout=10)
        degraded = await eventually(
            "the policy Degraded",
            lambda: _condition(k8s, Kind.MESH_POLICY, "k8s-dc-mesh", "True", "Degraded"),
        )
        assert degraded["reason"] == "TunnelsFailed"
        ready = ready_of(await k8s.get(Kind.MESH_POLICY, "k8s-dc-mesh"))
        assert ready is not None and ready["status"] == "False"
        assert "failed" in ready["message"]
        # Enrollment rewrote the node's endpoints from its facts; the CR is authoritative again.
        assert (await eventually("CR spec re-applied", lambda: _public_endpoints(sync, "k8s-gw2"))) == [
            "198.18.62.1"
        ]


async def _list_tunnels(controller: Controller) -> admin_pb2.ListTunnelsResponse:
    import grpc

    from meshsec.v1 import admin_pb2_grpc

    assert controller.config.admin_socket is not None
    async with grpc.aio.insecure_channel(f"unix:{controller.config.admin_socket}") as channel:
        response: admin_pb2.ListTunnelsResponse = await admin_pb2_grpc.AdminServiceStub(channel).ListTunnels(
            admin_pb2.ListTunnelsRequest(policy="k8s-dc-mesh"), timeout=10
        )
        return response


async def _public_endpoints(sync: ControllerSync, name: str) -> list[str] | None:
    node = await sync.get(Kind.NODE, name)
    if node is None:
        return None
    endpoints = node.spec["endpoints"]
    public = list(endpoints["public"]) if "public" in endpoints else []
    return public if public == ["198.18.62.1"] else None
