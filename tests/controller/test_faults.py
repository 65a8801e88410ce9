"""Faults on real parts (issue 18): the etcd member restarted under a stream of applies, and a
replica that dies while it is fanning a change out to its agents.

What must hold: an Apply the controller acknowledged is in the store afterwards; an Apply that
failed during the outage failed as UNAVAILABLE (retryable), never as an internal error; the
controller serves again once etcd is back without being restarted; agents cut off mid-fan-out
converge on exactly the surviving replica's desired state.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from meshsec.controller.server import Controller
from meshsec.controller.store.etcd import EtcdStore
from tests.controller.ctl_harness import (
    EnrolledNode,
    Watcher,
    apply,
    core_of,
    join,
    start_controller,
    wait_until,
)
from tests.controller.test_mesh_support import policy, site
from tests.harness.etcd import EtcdServer

pytestmark = [pytest.mark.etcd, pytest.mark.slow, pytest.mark.timeout(180)]


@pytest.fixture
def own_etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    """A server of this test's own, since the test restarts it."""
    with EtcdServer.start(tmp_path) as server:
        yield server


async def test_etcd_restart_under_applies_loses_no_acknowledged_write(
    own_etcd: EtcdServer, tmp_path: Path
) -> None:
    store = await EtcdStore.connect([own_etcd.endpoint], timeout=5)
    controller = await start_controller(store, tmp_path / "ctl", replica="ctl-0", election_ttl_s=2)
    acknowledged: list[str] = []
    refused: dict[grpc.StatusCode, int] = {}
    stop = asyncio.Event()

    async def writer() -> None:
        n = 0
        while not stop.is_set() and n < 250:  # bounded: stops by itself
            name = f"s{n}"
            try:
                await apply(controller, site(name, [f"198.19.{n}.0/24"]))
            except grpc.aio.AioRpcError as exc:
                refused[exc.code()] = refused.get(exc.code(), 0) + 1
                await asyncio.sleep(0.05)
            else:
                acknowledged.append(name)
            n += 1

    try:
        task = asyncio.create_task(writer())
        await wait_until(lambda: len(acknowledged) >= 10)
        await asyncio.to_thread(own_etcd.restart)
        during = len(acknowledged)
        # Served again once etcd is back, with no restart of the controller.
        await wait_until(lambda: len(acknowledged) >= during + 10, timeout=60)
        stop.set()
        await task
        assert set(refused) <= {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}, refused
        print(f"acknowledged {len(acknowledged)}, refused during the restart {refused}")
        # Every acknowledged Site is stored, read back from etcd itself, not from the replica's cache.
        check = await EtcdStore.connect([own_etcd.endpoint], timeout=5)
        try:
            listing = await check.range(core_of(controller).state.keys.resources)
        finally:
            await check.close()
        stored = {kv.key.rsplit("/", 1)[-1] for kv in listing.kvs}
        assert set(acknowledged) <= stored, sorted(set(acknowledged) - stored)
        await wait_until(
            lambda: (
                {s.metadata.name for s in core_of(controller).state.index.all_sites()} >= set(acknowledged)
            )
        )
    finally:
        stop.set()
        await controller.stop()
        await store.close()


async def test_replica_dying_mid_fan_out_leaves_every_agent_converged_on_the_survivor(
    replicas: tuple[Controller, Controller],
) -> None:
    dying, survivor = replicas
    await apply(
        dying,
        site("dc1", ["198.19.1.0/24"]),
        site("dc2", ["198.19.2.0/24"]),
        policy("mesh", "full-mesh", "node", {}, auth={"method": "psk"}),
    )
    nodes: list[EnrolledNode] = []
    for i in range(24):
        nodes.append(await join(dying, f"dc{1 + i % 2}", f"node-{i}", f"198.18.1.{i + 1}"))
    watchers = [Watcher(n) for n in nodes]
    channels = [n.channel(dying) for n in nodes]
    streams = [w.updates(c) for w, c in zip(watchers, channels, strict=True)]
    for stream in streams:
        await asyncio.wait_for(stream.__anext__(), 15)  # the snapshot

    async def follow(stream: object) -> None:
        try:
            async for _ in stream:  # type: ignore[attr-defined]
                pass
        except grpc.aio.AioRpcError:
            pass  # the replica went away

    followers = [asyncio.create_task(follow(s)) for s in streams]
    # A change that reaches every agent, then the replica dies while it is pushing it.
    joined = await join(dying, "dc1", "node-new", "198.18.1.200")
    await dying.stop(resign=False)
    await asyncio.wait_for(asyncio.gather(*followers), 30)
    for channel in channels:
        await channel.close()

    everyone = [*watchers, Watcher(joined)]
    await wait_until(
        lambda: all(
            core_of(survivor).state.version(w.node.name) >= core_of(survivor).state.version("node-0")
            for w in everyone
        )
    )
    for watcher in everyone:
        async with watcher.node.channel(survivor) as channel:
            stream = watcher.updates(channel)
            await asyncio.wait_for(stream.__anext__(), 15)
            await stream.aclose()
        expected = {t.id for t in core_of(survivor).state.index.desired_tunnels(watcher.node.name)}
        assert set(watcher.tunnels) == expected, watcher.node.name
        assert len(expected) == len(everyone) - 1  # a full mesh among all 25 nodes
