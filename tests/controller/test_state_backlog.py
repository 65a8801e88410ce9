"""MeshState's per-watch queues stay bounded when an agent stops reading (real embedded store)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from meshsec.controller.resources import Kind
from meshsec.controller.service.keys import Keys
from meshsec.controller.service.state import MeshState, NodeUpdate, Resync
from meshsec.controller.store import EmbeddedStore
from tests.controller.test_mesh_support import node, policy, site

pytestmark = pytest.mark.timeout(60)


async def test_a_stalled_watch_keeps_at_most_max_backlog_signals_then_gets_a_resync(tmp_path: Path) -> None:
    store = await EmbeddedStore.open(tmp_path / "store.log")
    keys = Keys()
    state = MeshState(store, keys, max_backlog=4)

    async def put(doc: dict[str, Any]) -> None:
        revision = await store.put(
            keys.resource(Kind(doc["kind"]), doc["metadata"]["name"]), json.dumps(doc).encode()
        )
        await state.wait_for(revision)

    try:
        await state.start()
        await put(site("dc1", ["198.19.1.0/24"]))
        await put(policy("mesh", "full-mesh", "node", {}, auth={"method": "psk"}))
        await put(node("node-a", "dc1", private=["198.18.0.1"]))
        queue = state.subscribe("node-a")
        assert queue is not None
        depths = []
        for i in range(10):  # each join changes node-a's slice; nobody reads the queue
            await put(node(f"node-{i}", "dc1", private=[f"198.18.1.{i + 1}"]))
            depths.append(queue.qsize())
        assert max(depths) <= 4
        pending = [queue.get_nowait() for _ in range(queue.qsize())]
        assert isinstance(pending[0], Resync)  # the dropped backlog: the watch resends a snapshot
        assert all(isinstance(s, NodeUpdate) for s in pending[1:])
        snapshot = state.snapshot("node-a")
        assert snapshot is not None and len(snapshot.upserts) == 10
    finally:
        await state.stop()
        await store.close()
