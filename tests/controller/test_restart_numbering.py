"""A restarted controller numbers every slice as before the restart: it loads the resources as of
the last numbering announcement and replays the changes since, so agents resume with deltas."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from meshsec.controller.store import EmbeddedStore
from meshsec.v1 import agent_pb2
from tests.controller.ctl_harness import Watcher, apply, core_of, join, running_controller
from tests.controller.test_mesh_support import policy, site

MESH = (
    site("dc1", ["198.19.1.0/24"]),
    site("dc2", ["198.19.2.0/24"]),
    policy("mesh", "full-mesh", "node", {}, auth={"method": "psk"}),
)


async def grow_then_stop(tmp_path: Path) -> tuple[Watcher, int]:
    """node-a watches, its slice changes, then the mesh moves on without it; the controller stops."""
    async with running_controller(tmp_path, *MESH) as ctl:
        a = await join(ctl, "dc1", "node-a", "198.18.0.1")
        await join(ctl, "dc2", "node-b", "198.18.0.2")
        watcher = Watcher(a)
        async with a.channel(ctl) as channel:
            updates = watcher.updates(channel)
            assert (await asyncio.wait_for(updates.__anext__(), 10)).kind == agent_pb2.UPDATE_KIND_SNAPSHOT
            await join(ctl, "dc2", "node-c", "198.18.0.3")
            grown = await asyncio.wait_for(updates.__anext__(), 10)
            assert [t.peer_name for t in grown.upserted_tunnels] == ["node-c"]
            await apply(ctl, site("dc3", ["198.19.3.0/24"]))
            assert core_of(ctl).state.revision > grown.version
            await updates.aclose()
        return watcher, grown.version


async def test_a_restarted_controller_resumes_agents_with_deltas(tmp_path: Path) -> None:
    watcher, version = await grow_then_stop(tmp_path)
    async with running_controller(tmp_path) as ctl:
        assert core_of(ctl).state.version("node-a") == version
        await join(ctl, "dc2", "node-d", "198.18.0.4")
        async with watcher.node.channel(ctl) as channel:
            updates = watcher.updates(channel)
            resumed = await asyncio.wait_for(updates.__anext__(), 10)
            assert resumed.kind == agent_pb2.UPDATE_KIND_DELTA, "the restart cost a snapshot"
            assert resumed.base_version == version
            assert [t.peer_name for t in resumed.upserted_tunnels] == ["node-d"]
            await updates.aclose()
        assert set(watcher.tunnels) == {t.id for t in core_of(ctl).state.index.desired_tunnels("node-a")}


async def test_with_the_history_compacted_away_a_restart_falls_back_to_snapshots(tmp_path: Path) -> None:
    watcher, version = await grow_then_stop(tmp_path)
    store = await EmbeddedStore.open(tmp_path / "store.log")
    await store.compact(store.revision)
    await store.close()
    async with running_controller(tmp_path) as ctl:
        numbered = core_of(ctl).state.version("node-a")
        assert numbered > version  # renumbered from the present, and announced
        async with watcher.node.channel(ctl) as channel:
            updates = watcher.updates(channel)
            resent = await asyncio.wait_for(updates.__anext__(), 10)
            assert resent.kind == agent_pb2.UPDATE_KIND_SNAPSHOT
            assert sorted(t.peer_name for t in resent.upserted_tunnels) == ["node-b", "node-c"]
            await updates.aclose()


async def test_announce_if_due_renumbers_only_after_enough_changes(tmp_path: Path) -> None:
    async with running_controller(tmp_path, *MESH) as ctl:
        state = core_of(ctl).state
        await join(ctl, "dc1", "node-a", "198.18.0.1")
        await join(ctl, "dc2", "node-b", "198.18.0.2")
        before = state.version("node-a")
        state.ANNOUNCE_AFTER_CHANGES = 1000  # this replica only (instance attribute)
        await state.announce_if_due()
        await apply(ctl, site("dc3", ["198.19.3.0/24"]))  # a write after it: the watch has passed it
        assert state.version("node-a") == before
        state.ANNOUNCE_AFTER_CHANGES = 3
        await state.announce_if_due()
        await asyncio.wait_for(_until(lambda: state.version("node-a") > before), 10)


async def _until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.02)


async def test_after_an_announcement_with_nothing_changed_since_history_is_not_needed(tmp_path: Path) -> None:
    async with running_controller(tmp_path, *MESH) as ctl:
        a = await join(ctl, "dc1", "node-a", "198.18.0.1")
        await join(ctl, "dc2", "node-b", "198.18.0.2")
        watcher = Watcher(a)
        async with a.channel(ctl) as channel:
            updates = watcher.updates(channel)
            assert (await asyncio.wait_for(updates.__anext__(), 10)).kind == agent_pb2.UPDATE_KIND_SNAPSHOT
            await core_of(ctl).state.announce()
            renumbered = await asyncio.wait_for(updates.__anext__(), 10)
            assert renumbered.kind == agent_pb2.UPDATE_KIND_DELTA and not renumbered.upserted_tunnels
            await updates.aclose()
    store = await EmbeddedStore.open(tmp_path / "store.log")
    await store.put("/elsewhere/status", b"later writes that are not resources")
    await store.compact(store.revision)  # the announcement's revision is no longer readable
    await store.close()
    async with running_controller(tmp_path) as ctl:
        assert core_of(ctl).state.version("node-a") == renumbered.version
        async with watcher.node.channel(ctl) as channel:
            updates = watcher.updates(channel)
            resumed = await asyncio.wait_for(updates.__anext__(), 10)
            assert resumed.kind == agent_pb2.UPDATE_KIND_DELTA and resumed.base_version == renumbered.version
            await updates.aclose()
