"""etcd only: a server restart, an unreachable server, mutual TLS, the harness itself."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshsec.controller.store import EventType, StoreUnavailableError
from meshsec.controller.store.etcd import EtcdStore
from tests.harness.etcd import EtcdServer, EtcdTls
from tests.harness.tls import ThrowawayCA

pytestmark = pytest.mark.etcd


@pytest.fixture
def own_etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    """A server of this test's own, since the test restarts it."""
    with EtcdServer.start(tmp_path) as server:
        yield server


async def test_watch_survives_server_restart_without_loss_or_duplicates(own_etcd: EtcdServer) -> None:
    store = await EtcdStore.connect([own_etcd.endpoint], timeout=10)
    try:
        start = await store.put("/w/1", b"a")
        await store.put("/w/2", b"b")
        async with store.watch("/w/", start_revision=start) as watch:
            before = [await asyncio.wait_for(watch.__anext__(), 5) for _ in range(2)]
            await asyncio.to_thread(own_etcd.restart)
            written = [await store.put("/w/3", b"c"), await store.delete("/w/1")]
            after = [await asyncio.wait_for(watch.__anext__(), 15) for _ in range(2)]
        assert [e.key for e in before] == ["/w/1", "/w/2"]
        assert [(e.type, e.key) for e in after] == [(EventType.PUT, "/w/3"), (EventType.DELETE, "/w/1")]
        assert after[0].revision == written[0]
    finally:
        await store.close()


async def test_unreachable_server_is_a_clear_error(own_etcd: EtcdServer) -> None:
    endpoint = own_etcd.endpoint
    own_etcd.stop()
    with pytest.raises(StoreUnavailableError, match="etcd unavailable"):
        await EtcdStore.connect([endpoint], timeout=1)


async def test_leases_are_etcd_leases(etcd_server: EtcdServer, key_prefix: str) -> None:
    """A second, independent client sees the first one's lease end its keys."""
    first = await EtcdStore.connect([etcd_server.endpoint])
    second = await EtcdStore.connect([etcd_server.endpoint])
    try:
        lease = await first.grant_lease(1)
        await first.put(key_prefix + "k", b"v", lease=lease.id)
        kv = await second.get(key_prefix + "k")
        assert kv is not None and kv.lease == lease.id
        await second.revoke_lease(lease.id)
        assert await first.get(key_prefix + "k") is None
    finally:
        await first.close()
        await second.close()


def test_harness_server_is_stopped_and_removed(tmp_path: Path) -> None:
    with EtcdServer.start(tmp_path) as server:
        assert server.healthy()
        pid, root = server.pid, server.data_dir.parent
        assert pid is not None and root.is_dir()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not root.exists()


async def test_mutual_tls(tmp_path: Path) -> None:
    ca = ThrowawayCA("etcd test CA")
    served = ca.issue("etcd", ip_addresses=("127.0.0.1",), server=True, client=True)
    controller = ca.issue("controller", client=True)
    tls = EtcdTls(ca.cert_pem, served.cert_pem, served.key_pem.reveal())
    with EtcdServer.start(tmp_path, tls=tls) as server:
        store = await EtcdStore.connect(
            [server.endpoint],
            ca_cert=ca.cert_pem,
            cert_chain=controller.cert_pem,
            cert_key=controller.key_pem.reveal(),
        )
        try:
            revision = await store.put("/tls/k", b"v")
            kv = await store.get("/tls/k")
            assert kv is not None and kv.mod_revision == revision
        finally:
            await store.close()
        with pytest.raises(StoreUnavailableError):  # the server insists on a client certificate
            await EtcdStore.connect([server.endpoint], ca_cert=ca.cert_pem, timeout=1)
