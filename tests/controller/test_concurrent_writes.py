"""Many admins applying at once: every non-conflicting write succeeds (one replica, two replicas
on a real etcd), and writes to one object from a stale resourceVersion get ABORTED, not a retry
storm. Each Apply runs on its own channel, as separate `meshctl` processes would."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from meshsec.controller.server import Controller
from meshsec.controller.store import EmbeddedStore, Store
from meshsec.v1 import admin_pb2
from tests.controller.ctl_harness import (
    CALL_TIMEOUT,
    admin_channel,
    admin_stub,
    apply,
    start_controller,
    to_resource,
)
from tests.controller.test_mesh_support import site
from tests.harness.etcd import EtcdServer

pytestmark = pytest.mark.timeout(120)
WRITERS = 200
# 200 Applies queue behind one another on the replicas (local commits take turns): on a loaded
# 2-core CI machine the last ones wait longer than the harness's usual 10 s. The deadline is a hang
# guard here, not a speed target (bench/ measures speed), so it covers the whole queue.
QUEUED_CALL_TIMEOUT = 90.0


@pytest.fixture(
    params=[
        "embedded",
        pytest.param("etcd", marks=pytest.mark.etcd),
        pytest.param("etcd-2-replicas", marks=pytest.mark.etcd),
    ]
)
async def controllers(
    request: pytest.FixtureRequest, tmp_path: Path, key_prefix: str
) -> AsyncIterator[list[Controller]]:
    stores: list[Store] = []
    started: list[Controller] = []
    try:
        if request.param == "embedded":
            stores.append(await EmbeddedStore.open(tmp_path / "store.log"))
        else:
            from meshsec.controller.store.etcd import EtcdStore

            server: EtcdServer = request.getfixturevalue("etcd_server")
            for _ in range(2 if request.param == "etcd-2-replicas" else 1):
                stores.append(await EtcdStore.connect([server.endpoint]))
        for i, store in enumerate(stores):
            started.append(
                await start_controller(store, tmp_path / f"ctl-{i}", replica=f"ctl-{i}", prefix=key_prefix)
            )
        yield started
    finally:
        for controller in started:
            await controller.stop()
        for store in stores:
            await store.close()


async def test_concurrent_single_site_applies_all_succeed(controllers: list[Controller]) -> None:
    results = await asyncio.gather(
        *(
            apply(controllers[i % len(controllers)], site(f"s{i}", [f"198.19.{i}.0/24"]),
                  timeout=QUEUED_CALL_TIMEOUT)
            for i in range(WRITERS)
        ),
        return_exceptions=True,
    )
    failures = [r for r in results if isinstance(r, BaseException)]
    assert failures == []
    for controller in controllers:
        async with admin_channel(controller) as channel:
            listed = await admin_stub(channel).List(
                admin_pb2.ListRequest(kind="Site", page_size=1000), timeout=CALL_TIMEOUT
            )
        assert sorted(r.metadata.name for r in listed.resources) == sorted(f"s{i}" for i in range(WRITERS))


async def _apply_from(controller: Controller, resource_version: str, prefix: str) -> grpc.StatusCode:
    resource = to_resource(site("dc1", [prefix]))
    resource.metadata.resource_version = resource_version
    async with admin_channel(controller) as channel:
        try:
            await admin_stub(channel).Apply(
                admin_pb2.ApplyRequest(resources=[resource]), timeout=CALL_TIMEOUT
            )
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


async def test_concurrent_updates_from_one_resource_version_one_wins_the_rest_are_aborted(
    controllers: list[Controller],
) -> None:
    first = (await apply(controllers[0], site("dc1", ["198.19.0.0/24"]))).results[0].resource
    version = first.metadata.resource_version
    codes = await asyncio.gather(
        *(_apply_from(controllers[i % len(controllers)], version, f"198.19.{i + 1}.0/24") for i in range(20))
    )
    assert sorted(c.name for c in codes) == ["ABORTED"] * 19 + ["OK"]
