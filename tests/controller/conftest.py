"""Store fixtures: session-wide real etcds (plain, and TLS with client-cert auth), a unique key
prefix per test, and `store_kit`, which runs a test against the embedded store, etcd and TLS etcd."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from meshsec.controller.server import Controller
from meshsec.controller.store import EmbeddedStore, ManualClock, Store
from meshsec.controller.store.etcd import EtcdStore
from tests.controller.ctl_harness import start_controller, wait_until
from tests.harness.etcd import EtcdServer, EtcdTls
from tests.harness.tls import ThrowawayCA


@dataclass(frozen=True)
class EtcdTlsKit:
    """A TLS etcd requiring client certificates, and the material a client needs for it."""

    server: EtcdServer
    ca_pem: bytes
    client_cert_pem: bytes
    client_key_pem: bytes

    def connect_args(self) -> dict[str, bytes]:
        return {"ca_cert": self.ca_pem, "cert_chain": self.client_cert_pem, "cert_key": self.client_key_pem}


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    with EtcdServer.start(tmp_path_factory.mktemp("etcd")) as server:
        yield server


@pytest.fixture(scope="session")
def etcd_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdTlsKit]:
    ca = ThrowawayCA("etcd test CA")
    # etcd's own gRPC gateway dials the server with its serving certificate: clientAuth as well.
    served = ca.issue("127.0.0.1", ip_addresses=("127.0.0.1",), server=True, client=True)
    client = ca.issue("meshsec-controller", client=True)
    tls = EtcdTls(ca.cert_pem, served.cert_pem, served.key_pem.reveal())
    with EtcdServer.start(tmp_path_factory.mktemp("etcd-tls"), tls=tls) as server:
        yield EtcdTlsKit(server, ca.cert_pem, client.cert_pem, client.key_pem.reveal())


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
    _etcd_args: dict[str, bytes] = field(default_factory=dict)  # TLS material for EtcdStore.connect
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
        other = await EtcdStore.connect([self._etcd.endpoint], **self._etcd_args)
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
            return await EtcdStore.connect([self._etcd.endpoint], **self._etcd_args)
        assert self._path is not None
        return await EmbeddedStore.open(self._path, clock=self.clock)

    async def close(self) -> None:
        for store in [self.store, *self._extra]:
            await store.close()


@pytest.fixture(
    params=[
        "embedded",
        pytest.param("etcd", marks=pytest.mark.etcd),
        pytest.param("etcd-tls", marks=pytest.mark.etcd),
    ]
)
async def store_kit(
    request: pytest.FixtureRequest, tmp_path: Path, key_prefix: str
) -> AsyncIterator[StoreKit]:
    if request.param == "etcd":
        server: EtcdServer = request.getfixturevalue("etcd_server")
        kit = StoreKit("etcd", key_prefix, await EtcdStore.connect([server.endpoint]), _etcd=server)
    elif request.param == "etcd-tls":
        secured: EtcdTlsKit = request.getfixturevalue("etcd_tls")
        args = secured.connect_args()
        store = await EtcdStore.connect([secured.server.endpoint], **args)
        kit = StoreKit("etcd", key_prefix, store, _etcd=secured.server, _etcd_args=args)
    else:
        clock = ManualClock()
        path = tmp_path / "store.log"
        kit = StoreKit("embedded", key_prefix, await EmbeddedStore.open(path, clock=clock), clock, _path=path)
    try:
        yield kit
    finally:
        await kit.close()


@pytest.fixture
async def replicas(
    etcd_server: EtcdServer, key_prefix: str, tmp_path: Path
) -> AsyncIterator[tuple[Controller, Controller]]:
    """Two controller replicas on the session's etcd, started and with a leader elected."""
    stores = [await EtcdStore.connect([etcd_server.endpoint]) for _ in range(2)]
    started: list[Controller] = []
    try:
        for i, store in enumerate(stores):
            started.append(
                await start_controller(
                    store, tmp_path / f"ctl-{i}", replica=f"ctl-{i}", prefix=key_prefix, election_ttl_s=2
                )
            )
        await wait_until(lambda: any(c.is_leader for c in started))
        yield started[0], started[1]
    finally:
        for controller in started:
            await controller.stop()
        for store in stores:
            await store.close()
