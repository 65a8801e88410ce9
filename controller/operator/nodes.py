"""Keeps the cluster's Site and one meshsec Node per core Kubernetes Node in the controller.

Level-triggered like the CR handlers: every pass lists the core Nodes, applies the Site
(`cluster.site_manifest`) and each Node (`cluster.derive_node`) with the field manager
``k8s-nodes``, and deletes the meshsec Nodes of the cluster's site it wrote that no core Node
backs any more (a Node ``meshctl`` or a CR declared, or one an agent enrolled without a core Node
of its name, is left alone: a mistyped ``--cluster-site`` must not empty an existing site). A
core Node deleted and created again under its name (its uid changed) is a new identity: its
meshsec Node is deleted first, which drops the certificate serials it accepted and its tunnels,
then applied afresh and awaits a new enrollment. A watch on core
Nodes wakes the sweeper early; the interval catches whatever a watch missed.

A pass costs the controller the Site's apply, the list of its Nodes and one call per Node that
changed: a Node is applied again only if what it derives to differs from what this sweeper last
applied, or the controller's copy changed since (its resource version, from the list, is not the
one that apply returned: someone else wrote it, an agent enrolled, it was deleted). So a core
Node event (a label, a kubelet status update) costs work for that Node, not for the cluster,
and the pass stays level-triggered against the controller's state.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc

from meshsec.controller.operator.cluster import (
    NODE_UID,
    ClusterConfig,
    derive_node,
    site_manifest,
)
from meshsec.controller.operator.sync import ControllerSync, Verdict
from meshsec.controller.resources import Kind
from meshsec.controller.resources.model import LAST_APPLIED_BY
from meshsec.v1 import common_pb2

log = logging.getLogger(__name__)

NODE_MANAGER = "k8s-nodes"
LIST_PAGE = 500


class NodeSource(Protocol):
    async def list_nodes(self) -> list[dict[str, Any]]:
        """Every core Node, as the API server returns it."""


@dataclass(slots=True)
class SweepReport:
    applied: list[str] = field(default_factory=list)  # changed in the controller
    deleted: list[str] = field(default_factory=list)
    recreated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)  # not sent: as last applied, untouched since
    problems: dict[str, str] = field(default_factory=dict)  # node (or the site) -> why not applied


def _stored_site(resource: common_pb2.Resource) -> str:
    site = resource.spec.fields.get("site")
    return site.string_value if site is not None else ""


class NodeSweeper:
    def __init__(
        self, sync: ControllerSync, source: NodeSource, config: ClusterConfig, interval: float = 30.0
    ) -> None:
        self.sync = sync
        self.source = source
        self.config = config
        self.interval = interval
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        # Node name -> (the manifest this sweeper last applied, as canonical JSON; the resource
        # version the controller stored it under).
        self._applied: dict[str, tuple[str, str]] = {}

    def poke(self) -> None:
        """Sweep soon (a core Node changed); callable from any thread."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def sweep(self) -> SweepReport:
        report = SweepReport()
        nodes = await self.source.list_nodes()
        site = site_manifest(nodes, self.config)
        outcome = await self.sync.apply(site, field_manager=NODE_MANAGER)
        if outcome.verdict is not Verdict.DONE:
            report.problems[f"Site/{self.config.site}"] = outcome.message
            log.warning("cluster site %s not applied: %s", self.config.site, outcome.message)
        elif outcome.action != "UNCHANGED":
            report.applied.append(f"Site/{self.config.site}")
        stored = {r.metadata.name: r for r in await self.sync.list_resources(Kind.NODE)}
        wanted: set[str] = set()
        for node in nodes:
            derived = derive_node(node, self.config)
            wanted.add(derived.name)
            if derived.manifest is None:
                report.problems[derived.name] = derived.problem
                log.warning("node %s: not in the mesh: %s", derived.name, derived.problem)
                continue
            old = stored.get(derived.name)
            replaced = old is not None and self._replaced(old, derived.uid)
            wanted_text = json.dumps(derived.manifest, sort_keys=True)
            if (
                old is not None
                and not replaced
                and self._applied.get(derived.name) == (wanted_text, old.metadata.resource_version)
            ):
                report.unchanged.append(derived.name)
                continue
            if replaced and old is not None and await self._delete(old, report):
                report.recreated.append(derived.name)
            outcome = await self.sync.apply(derived.manifest, field_manager=NODE_MANAGER)
            self._applied.pop(derived.name, None)
            if outcome.verdict is not Verdict.DONE:
                report.problems[derived.name] = "; ".join(outcome.problems) or outcome.message
                log.warning("node %s not applied: %s", derived.name, report.problems[derived.name])
                continue
            if outcome.resource_version:
                self._applied[derived.name] = (wanted_text, outcome.resource_version)
            if outcome.action != "UNCHANGED":
                report.applied.append(derived.name)
        for name, old in stored.items():
            if name not in wanted and self._ours(old):
                await self._delete(old, report)
        for name in self._applied.keys() - wanted:
            del self._applied[name]  # its core Node is gone: a Node of that name starts afresh
        return report

    def _ours(self, resource: common_pb2.Resource) -> bool:
        """A Node of the cluster's site that this sweeper declared last (an agent that enrolled
        first is declared on the next pass, when its core Node exists)."""
        writer = resource.metadata.annotations.get(LAST_APPLIED_BY, "")
        return _stored_site(resource) == self.config.site and writer == NODE_MANAGER

    def _replaced(self, resource: common_pb2.Resource, uid: str) -> bool:
        recorded = resource.metadata.annotations.get(NODE_UID, "")
        return self._ours(resource) and bool(recorded) and recorded != uid

    async def _delete(self, resource: common_pb2.Resource, report: SweepReport) -> bool:
        name = resource.metadata.name
        self._applied.pop(name, None)
        outcome = await self.sync.delete(Kind.NODE, name, resource_version=resource.metadata.resource_version)
        if outcome.verdict is Verdict.DONE:
            report.deleted.append(name)
            log.info("node %s left the mesh (its Kubernetes Node is gone or was re-created)", name)
            return True
        report.problems[name] = outcome.message
        log.warning("node %s: not deleted: %s", name, outcome.message)
        return False

    async def run(self, stop: asyncio.Event) -> None:
        self._loop = asyncio.get_running_loop()
        while not stop.is_set():
            self._wake.clear()
            try:
                report = await self.sweep()
                if report.applied or report.deleted:
                    log.info(
                        "cluster %s: applied %s, deleted %s",
                        self.config.site,
                        ", ".join(report.applied) or "-",
                        ", ".join(report.deleted) or "-",
                    )
            except grpc.aio.AioRpcError as exc:
                log.warning("cluster sweep: controller: %s", exc.code().name)
            except Exception:  # the Kubernetes API away: keep trying
                log.exception("cluster sweep failed")
            waiting = asyncio.create_task(self._wake.wait())
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait(
                [waiting, stopping], timeout=self.interval, return_when=asyncio.FIRST_COMPLETED
            )
            for task in (waiting, stopping):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


class KubernetesNodes:
    """NodeSource over the official client (blocking, so each page is read in a thread)."""

    def __init__(self, api_client: Any) -> None:
        from kubernetes import client

        self._api = client.CoreV1Api(api_client)

    async def list_nodes(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        token = ""
        while True:
            kwargs: dict[str, Any] = {"limit": LIST_PAGE, "_preload_content": False}
            if token:
                kwargs["_continue"] = token
            # The raw response (_preload_content=False): the Node as JSON, camelCase keys.
            response: Any = await asyncio.to_thread(self._api.list_node, **kwargs)
            body: Mapping[str, Any] = json.loads(response.data)
            found.extend(dict(item) for item in body.get("items") or [])
            token = str((body.get("metadata") or {}).get("continue") or "")
            if not token:
                return found
