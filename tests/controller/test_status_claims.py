"""A node's status report can only speak for tunnels that node has.

`MeshIndex.has_tunnel` (the cheap, exact check the status book uses) agrees with `desired_tunnels`
for every node, peer and source over random resource histories; a real controller drops statuses
for made-up ids, for real ids under a wrong peer, and for a tunnel the node no longer has (after a
delta and after a rebase), so they never reach the stored report, the established count or the
event log; and deleting a node leaves nothing of it in the status book.
"""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from meshsec.controller.mesh import MeshIndex, Upsert, tunnel_id
from meshsec.controller.resources import ValidationError
from meshsec.controller.server import Controller
from meshsec.v1 import admin_pb2, agent_pb2, agent_pb2_grpc, common_pb2
from tests.controller.ctl_harness import (
    CALL_TIMEOUT,
    EnrolledNode,
    admin_channel,
    admin_stub,
    apply,
    core_of,
    join,
    retained_events,
    running_controller,
)
from tests.controller.test_mesh_incremental import HISTORY, NODE_NAMES, POLICY_NAMES
from tests.controller.test_mesh_support import node, policy, site

pytestmark = pytest.mark.timeout(60)

ESTABLISHED = common_pb2.TUNNEL_STATE_ESTABLISHED


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(HISTORY)
def test_has_tunnel_agrees_with_desired_tunnels(history: list[list[Upsert]]) -> None:
    index = MeshIndex()
    for batch in history:
        try:
            index.apply(batch)
        except ValidationError:
            continue
        peers = [*NODE_NAMES, "e0", "s9"]
        sources = [f"MeshPolicy/{p}" for p in POLICY_NAMES] + ["ExternalGateway/e0"]
        for name in NODE_NAMES:
            desired = {(t.id, t.peer) for t in index.desired_tunnels(name)}
            for tid, peer in desired:
                assert index.has_tunnel(name, tid, peer)
            for peer in peers:
                for source in sources:
                    tid = tunnel_id(source, name, peer)
                    assert index.has_tunnel(name, tid, peer) == ((tid, peer) in desired)
                    assert not index.has_tunnel(name, tid, "n9")
            assert not index.has_tunnel(name, "t-0000", "n0")


def _status(tid: str, peer: str, state: int = ESTABLISHED) -> agent_pb2.TunnelStatus:
    return agent_pb2.TunnelStatus(tunnel_id=tid, peer_name=peer, state=state)  # type: ignore[arg-type]


async def _report(
    ctl: Controller,
    who: EnrolledNode,
    seq: int,
    tunnels: list[agent_pb2.TunnelStatus],
    *,
    full: bool = True,
) -> agent_pb2.StatusAck:
    async with who.channel(ctl) as channel:
        ack: agent_pb2.StatusAck = await agent_pb2_grpc.AgentServiceStub(channel).ReportStatus(
            agent_pb2.StatusReport(
                node_name=who.name, agent_instance_id="i1", seq=seq, full=full, tunnels=tunnels
            ),
            timeout=CALL_TIMEOUT,
        )
        return ack


def _stored(ctl: Controller, name: str) -> set[str]:
    report = core_of(ctl).status.get(name)
    assert report is not None
    return set(report.tunnels)


MESH = (
    site("dc1", ["198.19.1.0/24"]),
    site("dc2", ["198.19.2.0/24"]),
    policy("mesh", "full-mesh", "node", {}),
)


async def test_made_up_tunnel_ids_are_dropped_and_counted(tmp_path: Path) -> None:
    async with running_controller(tmp_path, *MESH) as ctl:
        a = await join(ctl, "dc1", "node-a", "198.18.0.1")
        await join(ctl, "dc2", "node-b", "198.18.0.2")
        book = core_of(ctl).status
        real = tunnel_id("MeshPolicy/mesh", "node-a", "node-b")
        assert [t.id for t in core_of(ctl).state.index.desired_tunnels("node-a")] == [real]
        bogus = [_status(f"t-bogus{i}", "node-b") for i in range(50)]
        await _report(ctl, a, 1, [_status(real, "node-b"), *bogus])
        assert _stored(ctl, "node-a") == {real}
        assert book.unknown_tunnels == 50
        scraped = urllib.request.urlopen(f"http://127.0.0.1:{ctl.metrics_port}/metrics", timeout=5).read()
        assert b"meshsec_controller_unknown_tunnel_statuses_total 50.0" in scraped
        assert b"meshsec_controller_nodes_online 1.0" in scraped  # node-b never reported
        # Partial reports cannot grow the stored set either, nor can an id of the right shape for
        # a pair that has no tunnel, or for a policy that does not exist.
        forged = [_status(f"t-more{i}", "node-b") for i in range(50)] + [
            _status(tunnel_id("MeshPolicy/mesh", "node-a", "node-c"), "node-c"),
            _status(tunnel_id("MeshPolicy/other", "node-a", "node-b"), "node-b"),
        ]
        ack = await _report(ctl, a, 2, forged, full=False)
        assert not ack.resync_required
        assert _stored(ctl, "node-a") == {real}
        assert book.unknown_tunnels == 102
        assert book.established_tunnels() == 1
        # The real id under another peer's name is not node-a's tunnel either: it replaces the
        # stored status (the report is node-a's word on that id) and is dropped.
        await _report(ctl, a, 3, [_status(real, "node-c")], full=False)
        assert _stored(ctl, "node-a") == set()
        assert book.unknown_tunnels == 103
        assert book.established_tunnels() == 0
        events = await retained_events(ctl, ("Tunnel",))
        assert [(e.reason, e.involved.name) for e in events] == [("TunnelEstablished", real)]


async def test_a_tunnel_the_node_no_longer_has_is_dropped(tmp_path: Path) -> None:
    async with running_controller(tmp_path, *MESH) as ctl:
        a = await join(ctl, "dc1", "node-a", "198.18.0.1")
        await join(ctl, "dc2", "node-b", "198.18.0.2")
        await join(ctl, "dc2", "node-c", "198.18.0.3")
        ab = tunnel_id("MeshPolicy/mesh", "node-a", "node-b")
        ac = tunnel_id("MeshPolicy/mesh", "node-a", "node-c")
        await _report(ctl, a, 1, [_status(ab, "node-b"), _status(ac, "node-c")])
        assert _stored(ctl, "node-a") == {ab, ac}
        # node-b stops matching the policy: node-a's slice gets a delta removing `ab`. Reports
        # that keep naming it (partial, so `ab` is only carried over from the stored report) drop it.
        state = core_of(ctl).state
        before = state.version("node-a")
        await apply(
            ctl,
            policy(
                "mesh",
                "full-mesh",
                "node",
                {"matchExpressions": [{"key": "gone", "operator": "DoesNotExist"}]},
            ),
            node("node-b", "dc2", private=["198.18.0.2"], labels={"gone": "yes"}),
        )
        await _wait(lambda: state.version("node-a") > before)
        assert state.catch_up("node-a", before) is not None  # the delta path, not a re-check of all
        await _report(ctl, a, 2, [_status(ac, "node-c", common_pb2.TUNNEL_STATE_REKEYING)], full=False)
        assert _stored(ctl, "node-a") == {ac}
        assert core_of(ctl).status.unknown_tunnels == 1


async def test_after_a_rebase_every_stored_id_is_checked_again(tmp_path: Path) -> None:
    async with running_controller(tmp_path, *MESH, rebase_tunnels=0) as ctl:
        a = await join(ctl, "dc1", "node-a", "198.18.0.1")
        await join(ctl, "dc2", "node-b", "198.18.0.2")
        ab = tunnel_id("MeshPolicy/mesh", "node-a", "node-b")
        await _report(ctl, a, 1, [_status(ab, "node-b")])
        state = core_of(ctl).state
        before = state.version("node-a")
        # A policy edit is "wide" here: slices are resnapshotted and their history dropped.
        await apply(ctl, policy("mesh", "full-mesh", "node", {"matchLabels": {"nobody": "x"}}))
        await _wait(lambda: state.version("node-a") > before)
        assert state.catch_up("node-a", before) is None
        await _report(ctl, a, 2, [], full=False)
        assert _stored(ctl, "node-a") == set()
        assert core_of(ctl).status.established_tunnels() == 0


async def test_deleting_a_node_leaves_nothing_in_the_status_book(tmp_path: Path) -> None:
    async with running_controller(tmp_path, *MESH) as ctl:
        a = await join(ctl, "dc1", "node-a", "198.18.0.1")
        await _report(ctl, a, 1, [])
        book = core_of(ctl).status
        assert await book.find_lost(book.get("node-a").reported_at + 1000) == ["node-a"]  # type: ignore[union-attr]
        assert "node-a" in book._persisted and "node-a" in book._lost
        async with admin_channel(ctl) as admin:
            await admin_stub(admin).Delete(
                admin_pb2.DeleteRequest(kind="Node", name="node-a"), timeout=CALL_TIMEOUT
            )
        await _wait(lambda: book.get("node-a") is None)
        assert "node-a" not in book._persisted and "node-a" not in book._lost


async def _wait(done: object, timeout: float = 10.0) -> None:
    assert callable(done)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not done():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.02)
