"""The agent's site routes (agent/node/routes.py) in a real namespace: installed with our route
protocol, changed and removed as the controller's list changes, a next hop the kernel refuses
reported (not raised), and a restart's flush removing ours only."""

from __future__ import annotations

import asyncio

import pytest

from meshsec.agent.node.routes import ROUTE_PROTO, SiteRoutes
from meshsec.v1 import agent_pb2
from tests.harness.netns import Host, Lab

pytestmark = [pytest.mark.netns, pytest.mark.timeout(60)]


@pytest.fixture
def netns_prefix() -> str:
    return "h14rt-"


def _ours(host: Host) -> list[str]:
    text = host.ip("route", "show", "proto", ROUTE_PROTO)
    return sorted(line.split()[0] for line in text.splitlines() if line.strip())


async def test_routes_follow_the_controller_and_touch_only_ours(lab: Lab) -> None:
    worker, gateway = lab.host("w"), lab.host("gw")
    lab.link(worker, gateway, "198.18.41.2/24", "198.18.41.1/24")
    worker.add_route("198.19.99.0/24", via="198.18.41.1")  # someone else's (a CNI's)
    routes = SiteRoutes(netns=worker.ns)
    await routes.flush()
    task = asyncio.create_task(routes.run())
    try:
        routes.want(
            agent_pb2.SiteRoute(destination=d, via="198.18.41.1", gateway="gw")
            for d in ("198.19.42.0/24", "198.19.43.0/24")
        )
        for _ in range(100):
            if len(routes.installed) == 2:
                break
            await asyncio.sleep(0.05)
        assert _ours(worker) == ["198.19.42.0/24", "198.19.43.0/24"]
        assert "198.19.42.0/24 via 198.18.41.1" in worker.ip("route", "show", "198.19.42.0/24")
    finally:
        task.cancel()
    # One goes, one is added whose next hop is on no connected network: refused and reported.
    await routes.apply({"198.19.42.0/24": "198.18.41.1", "198.19.44.0/24": "198.18.77.1"})
    assert _ours(worker) == ["198.19.42.0/24"]
    assert routes.installed == {"198.19.42.0/24": "198.18.41.1"}
    assert list(routes.problems) == ["198.19.44.0/24"]
    assert [r["state"] for r in routes.describe()] == ["installed", "refused"]
    # A restarted agent removes what the earlier run left, and nothing else.
    await SiteRoutes(netns=worker.ns).flush()
    assert _ours(worker) == []
    assert "198.19.99.0/24" in worker.ip("route", "show")
