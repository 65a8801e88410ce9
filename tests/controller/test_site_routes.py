"""NodeConfig.routes: a site's non-gateway nodes are told what its gateway's site-scope tunnels
reach, via the gateway's address (controller/mesh/routes.py); the list follows the remote sites
and the policies, gateways get none, and a node-scope policy adds nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from meshsec.controller.server import Controller
from meshsec.v1 import agent_pb2
from tests.controller.ctl_harness import Watcher, apply, join, running_controller
from tests.controller.test_api_agent import next_update
from tests.controller.test_mesh_support import policy, site

pytestmark = pytest.mark.timeout(60)
GATEWAY = {"role": "gateway"}


@pytest.fixture
async def ctl(tmp_path: Path) -> AsyncIterator[Controller]:
    async with running_controller(
        tmp_path,
        site("ra", ["198.19.21.0/24"]),
        site("rb", ["198.19.22.0/24"]),
        policy("sites", "full-mesh", "site", {}, auth={"method": "psk"}),
    ) as controller:
        yield controller


def _routes(config: agent_pb2.NodeConfig) -> list[tuple[str, str, str]]:
    return [(r.destination, r.via, r.gateway) for r in config.routes]


async def test_workers_route_remote_site_prefixes_via_their_gateway(ctl: Controller) -> None:
    gateway = await join(ctl, "ra", "ra-gw", "198.18.21.1", node_labels=GATEWAY)
    await join(ctl, "rb", "rb-gw", "198.18.22.1", node_labels=GATEWAY)
    worker = await join(ctl, "ra", "ra-w1", "198.18.21.2")
    watcher = Watcher(worker)
    async with worker.channel(ctl) as channel:
        updates = watcher.updates(channel)
        snapshot = await next_update(updates)
        assert not snapshot.upserted_tunnels  # the worker has no tunnel of its own
        assert _routes(snapshot.node) == [("198.19.22.0/24", "198.18.21.1", "ra-gw")]

        # A third site joins the mesh: the worker's config follows.
        await apply(ctl, site("rc", ["198.19.23.0/24"]))
        await join(ctl, "rc", "rc-gw", "198.18.23.1", node_labels=GATEWAY)
        while watcher.config is None or len(watcher.config.routes) < 2:
            await next_update(updates)
        assert _routes(watcher.config) == [
            ("198.19.22.0/24", "198.18.21.1", "ra-gw"),
            ("198.19.23.0/24", "198.18.21.1", "ra-gw"),
        ]

        # A node-scope policy gives the gateway tunnels to the worker, not the worker routes.
        await apply(ctl, policy("nodes", "full-mesh", "node", {}, auth={"method": "psk"}))
        update = await next_update(updates)
        assert [t.peer_name for t in update.upserted_tunnels]
        assert len(watcher.config.routes) == 2

        # Without the site-scope policy the gateway reaches no other site: no routes.
        await apply(
            ctl, policy("sites", "full-mesh", "site", {"matchLabels": {"none": "x"}}, auth={"method": "psk"})
        )
        while watcher.config.routes:
            await next_update(updates)
        await updates.aclose()
    gateway_watch = Watcher(gateway)
    async with gateway.channel(ctl) as channel:
        gateway_updates = gateway_watch.updates(channel)
        first = await next_update(gateway_updates)
        assert first.node.site_gateway and not first.node.routes
        await gateway_updates.aclose()
