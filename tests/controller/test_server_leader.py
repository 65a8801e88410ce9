"""Leader-only housekeeping of a running controller: silent nodes become NodeLost (and offline in
the topology), expired bootstrap tokens are garbage-collected."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from meshsec.controller.store import EmbeddedStore
from meshsec.v1 import admin_pb2, agent_pb2, agent_pb2_grpc
from tests.controller.ctl_harness import (
    CALL_TIMEOUT,
    admin_channel,
    admin_stub,
    apply,
    core_of,
    join,
    start_controller,
)
from tests.controller.test_mesh_support import site

pytestmark = pytest.mark.timeout(60)


async def test_silent_node_is_lost_and_expired_tokens_are_collected(tmp_path: Path) -> None:
    store = await EmbeddedStore.open(tmp_path / "store.log")
    ctl = await start_controller(store, tmp_path / "ctl", status_interval_s=1)
    try:
        await apply(ctl, site("dc1", ["198.19.1.0/24"]))
        node = await join(ctl, "dc1", "node-a", "198.18.0.1")
        core = core_of(ctl)
        _, record = await core.tokens.create(
            site="dc1", node_name="", ttl_s=1, uses=1, labels={}, allow_reenroll=False, now=time.time() - 5
        )
        async with node.channel(ctl) as channel:
            ack = await agent_pb2_grpc.AgentServiceStub(channel).ReportStatus(
                agent_pb2.StatusReport(node_name="node-a", agent_instance_id="i", seq=1, full=True),
                timeout=CALL_TIMEOUT,
            )
        assert ack.next_report_seconds == 1
        async with admin_channel(ctl) as channel:
            stub = admin_stub(channel)
            topology = await stub.GetTopology(admin_pb2.GetTopologyRequest(), timeout=CALL_TIMEOUT)
            assert [(n.name, n.online) for n in topology.nodes] == [("node-a", True)]
            events = stub.WatchEvents(admin_pb2.WatchEventsRequest(since_sequence=1, kinds=["Node"]))
            reasons = []
            while "NodeLost" not in reasons:  # after 3 missed 1 s heartbeats
                event = await asyncio.wait_for(events.read(), 10)
                reasons.append(event.reason)
            events.cancel()
            assert reasons[0] == "NodeEnrolled" and ctl.is_leader
            topology = await stub.GetTopology(admin_pb2.GetTopologyRequest(), timeout=CALL_TIMEOUT)
            assert [(n.name, n.online) for n in topology.nodes] == [("node-a", False)]
        assert await store.get(core.tokens.key(record.token_id)) is None  # collected by the leader
    finally:
        await ctl.stop()
        await store.close()
