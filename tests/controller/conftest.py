"""Store fixtures: a session-wide real etcd, a unique key prefix per test, and `store_kit`, which
runs a test once against the embedded store and once against etcd."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from meshsec.controller.store import EmbeddedStore, ManualClock, Store
from meshsec.controller.store.etcd import EtcdStore
from tests.harness.etcd import EtcdServer


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    with EtcdServer.start(tmp_path_factory.mktemp("etcd")) as server:
        yield server


@pytest.fixture
def key_prefix() -> str:
    """Keys of one test, kept apart from every other test's on the shared etcd."""
    return f"/test/{uuid.uuid4().hex[:12]}/"


@dataclass
class StoreKit:
    """One backend as the contract tests see it."""

    kind: str
    prefix: str
    store: Store
    clock: ManualClock | None = None  # embedded only: lease time moves when the test says so
    _etcd: EtcdServer | None = None
    _path: Path | None = None
    _extra: list[Store] = field(default_factory=list)

    async def reopen(self) -> Store:
        """Drop the connection (etcd) or close the file (embedded) and come back: a reconnect."""
        await self.store.close()
        self.store = await self._open()
        return self.store

    async def peer(self) -> Store:
        """The store as another controller replica sees it (embedded: one process, same instance)."""
        if self._etcd is None:
            return self.store
        other = await EtcdStore.connect([self._etcd.endpoint])
        self._extra.append(other)
        return other

    async def pass_time(self, seconds: float) -> None:
        if self.clock is not None:
            self.clock.advance(seconds)
            await asyncio.sleep(0)
        else:
            await asyncio.sleep(seconds)

    async def _open(self) -> Store:
        if self._etcd is not None:
            return await EtcdStore.connect([self._etcd.endpoint])
        assert self._path is not None
        return await EmbeddedStore.open(self._path, clock=self.clock)

    async def close(self) -> None:
        for store in [self.store, *self._extra]:
            await store.close()


@pytest.fixture(params=["embedded", pytest.param("etcd", marks=pytest.mark.etcd)])
async def store_kit(
    request: pytest.FixtureRequest, tmp_path: Path, key_prefix: str
) -> AsyncIterator[StoreKit]:
    if request.param == "etcd":
        server: EtcdServer = request.getfixturevalue("etcd_server")
        kit = StoreKit("etcd", key_prefix, await EtcdStore.connect([server.endpoint]), _etcd=server)
    else:
        clock = ManualClock()
        path = tmp_path / "store.log"
        kit = StoreKit("embedded", key_prefix, await EmbeddedStore.open(path, clock=clock), clock, _path=path)
    try:
        yield kit
    finally:
        await kit.close()
