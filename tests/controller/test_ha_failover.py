"""Two controller replicas on one real etcd: leader fail-over, agents resuming on the survivor,
and writes accepted by either replica without ever committing a combination that is invalid.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from meshsec.controller.server import Controller
from meshsec.controller.store.etcd import EtcdStore
from meshsec.v1 import agent_pb2
from tests.controller.ctl_harness import Watcher, apply, core_of, join, start_controller, wait_until
from tests.controller.test_mesh_support import policy, site
from tests.harness.etcd import EtcdServer

pytestmark = [pytest.mark.etcd, pytest.mark.timeout(90)]


async def test_leader_dies_the_other_takes_over_and_agents_resume(
    replicas: tuple[Controller, Controller],
) -> None:
    leader, follower = replicas if replicas[0].is_leader else replicas[::-1]
    assert not follower.is_leader
    assert core_of(leader).ca.sha256 == core_of(follower).ca.sha256  # one CA for the cluster
    await apply(
        leader,
        site("dc1", ["198.19.1.0/24"]),
        site("dc2", ["198.19.2.0/24"]),
        policy("mesh", "full-mesh", "node", {}, auth={"method": "psk"}),
    )
    a = await join(leader, "dc1", "node-a", "198.18.0.1")
    await join(follower, "dc2", "node-b", "198.18.0.2")  # enrollment on either replica
    await wait_until(
        lambda: core_of(follower).state.version("node-a") == core_of(leader).state.version("node-a")
    )

    watcher = Watcher(a)
    async with a.channel(leader) as channel:
        updates = watcher.updates(channel)
        snapshot = await asyncio.wait_for(updates.__anext__(), 10)
        assert snapshot.kind == agent_pb2.UPDATE_KIND_SNAPSHOT
        assert [t.peer_name for t in snapshot.upserted_tunnels] == ["node-b"]
        await leader.stop(resign=False)  # a crash: the lease is left to expire
        with pytest.raises(grpc.aio.AioRpcError):
            await asyncio.wait_for(updates.__anext__(), 10)
    before_failover = dict(watcher.tunnels)

    # The mesh changes while the agent is disconnected; the surviving replica accepts the writes.
    await join(follower, "dc2", "node-c", "198.18.0.3")
    await wait_until(lambda: follower.is_leader)

    async with a.channel(follower) as channel:
        updates = watcher.updates(channel)
        resumed = await asyncio.wait_for(updates.__anext__(), 10)
        assert resumed.kind == agent_pb2.UPDATE_KIND_DELTA, "resume fell back to a snapshot"
        assert resumed.base_version == snapshot.version
        assert [t.peer_name for t in resumed.upserted_tunnels] == ["node-c"]
        assert not set(t.tunnel_id for t in resumed.upserted_tunnels) & set(before_failover)
        assert not resumed.removed_tunnel_ids
        await updates.aclose()
    expected = {t.id for t in core_of(follower).state.index.desired_tunnels("node-a")}
    assert set(watcher.tunnels) == expected and len(expected) == 2


async def test_conflicting_writes_on_two_replicas_cannot_both_commit(
    replicas: tuple[Controller, Controller],
) -> None:
    one, two = replicas
    for round_ in range(3):
        # Each is valid alone against the current state; together they overlap.
        results = await asyncio.gather(
            apply(one, site(f"x{round_}", [f"198.19.{100 + round_}.0/24"])),
            apply(two, site(f"y{round_}", [f"198.19.{100 + round_}.128/25"])),
            return_exceptions=True,
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        assert len(errors) == 1, results
        assert isinstance(errors[0], grpc.aio.AioRpcError)
        assert errors[0].code() == grpc.StatusCode.INVALID_ARGUMENT
    for controller in replicas:
        await wait_until(lambda c=controller: len(list(core_of(c).state.index.all_sites())) == 3)
    assert core_of(one).state.index.validate_all() == []


async def test_a_replica_started_later_numbers_alike_so_agents_fail_over_with_a_delta(
    etcd_server: EtcdServer, key_prefix: str, tmp_path: Path
) -> None:
    stores = [await EtcdStore.connect([etcd_server.endpoint]) for _ in range(2)]
    first: Controller | None = None
    later: Controller | None = None
    try:
        first = await start_controller(
            stores[0], tmp_path / "ctl-0", replica="ctl-0", prefix=key_prefix, election_ttl_s=2
        )
        await apply(
            first,
            site("dc1", ["198.19.1.0/24"]),
            site("dc2", ["198.19.2.0/24"]),
            policy("mesh", "full-mesh", "node", {}, auth={"method": "psk"}),
        )
        a = await join(first, "dc1", "node-a", "198.18.0.1")
        await join(first, "dc2", "node-b", "198.18.0.2")
        watcher = Watcher(a)
        async with a.channel(first) as channel:
            updates = watcher.updates(channel)
            assert (await asyncio.wait_for(updates.__anext__(), 10)).kind == agent_pb2.UPDATE_KIND_SNAPSHOT
            # node-a's slice changes again, then the mesh moves on without touching it: its
            # version now lies before the revision the second replica will load at.
            await join(first, "dc2", "node-c", "198.18.0.3")
            grown = await asyncio.wait_for(updates.__anext__(), 10)
            assert [t.peer_name for t in grown.upserted_tunnels] == ["node-c"]
            await apply(first, site("dc3", ["198.19.3.0/24"]))
            loaded_after = core_of(first).state.revision
            assert watcher.version < loaded_after

            later = await start_controller(
                stores[1], tmp_path / "ctl-1", replica="ctl-1", prefix=key_prefix, election_ttl_s=2
            )
            # It loaded as of the first replica's numbering announcement and replayed the changes
            # since: node-a's slice has the same version on both, and nothing is sent to the agent
            # (the next thing its stream yields is the first replica's end).
            assert core_of(later).state.version("node-a") == watcher.version
            await first.stop(resign=False)
            with pytest.raises(grpc.aio.AioRpcError):
                await asyncio.wait_for(updates.__anext__(), 10)

        await join(later, "dc2", "node-d", "198.18.0.4")
        async with a.channel(later) as channel:
            updates = watcher.updates(channel)
            resumed = await asyncio.wait_for(updates.__anext__(), 10)
            assert resumed.kind == agent_pb2.UPDATE_KIND_DELTA, "fail-over fell back to a snapshot"
            assert resumed.base_version == grown.version
            assert [t.peer_name for t in resumed.upserted_tunnels] == ["node-d"]
            await updates.aclose()
        expected = {t.id for t in core_of(later).state.index.desired_tunnels("node-a")}
        assert set(watcher.tunnels) == expected and len(expected) == 3
    finally:
        for controller in (first, later):
            if controller is not None:
                await controller.stop()
        for store in stores:
            await store.close()
