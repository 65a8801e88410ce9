"""Lease allocation for remote-access clients on real etcd with two controller replicas, and on
the embedded store: distinct addresses under concurrency, stable across reconnects and
restarts, a clear refusal when a pool is exhausted."""

from __future__ import annotations

import asyncio
from ipaddress import ip_address, ip_network
from pathlib import Path

import pytest

from meshsec.controller.remoteaccess.leases import LeaseAllocator, PoolExhaustedError
from meshsec.controller.resources import parse_resource
from meshsec.controller.resources.model import RemoteAccessPool
from meshsec.controller.server import Controller
from meshsec.controller.service.keys import Keys
from meshsec.controller.store import EmbeddedStore
from tests.controller.test_remote_access_resources import pool


def _pool(*addresses: str) -> RemoteAccessPool:
    parsed = parse_resource(pool(addresses=list(addresses)))
    assert isinstance(parsed, RemoteAccessPool)
    return parsed


@pytest.mark.etcd
async def test_two_replicas_never_lease_one_address_twice(replicas: tuple[Controller, Controller]) -> None:
    a, b = replicas
    staff = _pool("198.19.200.0/26", "2001:db8:200::/120")  # 62 IPv4 and 255 IPv6 addresses

    async def connect(i: int) -> tuple[str, tuple[str, ...]]:
        core = (a if i % 2 else b).core
        lease = await core.leases.allocate(staff, f"user{i}", "laptop", f"gw{i % 3}", 1000.0 + i)
        return f"user{i}", tuple(str(x) for x in lease.addresses)

    got = dict(await asyncio.gather(*(connect(i) for i in range(40))))
    v4 = [addrs[0] for addrs in got.values()]
    v6 = [addrs[1] for addrs in got.values()]
    assert len(set(v4)) == 40 and len(set(v6)) == 40
    assert all(ip_address(x) in ip_network("198.19.200.0/26") for x in v4)
    assert all(ip_address(x) in ip_network("2001:db8:200::/120") for x in v6)
    assert "198.19.200.0" not in v4 and "198.19.200.63" not in v4  # network and broadcast
    # Every replica reads the same leases, and a reconnect through the other replica (and another
    # gateway) keeps the address.
    assert sorted(lease.user for lease in await a.core.leases.leases()) == sorted(got)
    again = await b.core.leases.allocate(staff, "user1", "laptop", "gw9", 2000.0)
    assert tuple(str(x) for x in again.addresses) == got["user1"]
    assert again.gateway == "gw9" and again.connected_since == 2000.0

    # 22 addresses left: 30 more clients at once get 22 leases and 8 clear refusals, no duplicates.
    async def try_connect(i: int) -> str:
        try:
            return str(
                (
                    await (a if i % 2 else b).core.leases.allocate(staff, f"late{i}", "phone", "gw0", 0.0)
                ).addresses[0]
            )
        except PoolExhaustedError as exc:
            return f"refused: {exc}"

    late = await asyncio.gather(*(try_connect(i) for i in range(30)))
    granted = [x for x in late if not x.startswith("refused")]
    refused = [x for x in late if x.startswith("refused")]
    assert len(granted) == 22 and len(set(granted) | set(v4)) == 62
    assert refused and refused[0] == (
        "refused: pool staff: all 62 addresses of 198.19.200.0/26 are leased; "
        "release a lease or enlarge the pool"
    )
    # A released address can be leased again.
    released = await a.core.leases.release("user2", "laptop")
    assert released is not None
    fresh = await b.core.leases.allocate(staff, "newcomer", "phone", "gw0", 0.0)
    assert str(fresh.addresses[0]) == got["user2"][0]


async def test_leases_survive_a_restart_and_users_release_all_devices(tmp_path: Path) -> None:
    keys = Keys("/t/")
    staff = _pool("198.19.201.0/29")  # 6 addresses
    store = await EmbeddedStore.open(tmp_path / "store.log")
    leases = LeaseAllocator(store, keys)
    phone = await leases.allocate(staff, "alice", "phone", "gw1", 1.0)
    laptop = await leases.allocate(staff, "alice", "laptop", "gw1", 2.0)
    await leases.allocate(staff, "bob", "phone", "gw1", 3.0)
    await store.close()

    store = await EmbeddedStore.open(tmp_path / "store.log")
    leases = LeaseAllocator(store, keys)
    assert (await leases.allocate(staff, "alice", "phone", "gw1", 9.0)).addresses == phone.addresses
    assert [(x.user, x.device) for x in await leases.leases()] == [
        ("alice", "laptop"),
        ("alice", "phone"),
        ("bob", "phone"),
    ]
    gone = await leases.release_user("alice")
    assert sorted(x.addresses[0] for x in gone) == sorted([phone.addresses[0], laptop.addresses[0]])
    assert [x.user for x in await leases.leases()] == ["bob"]
    for i in range(5):
        await leases.allocate(staff, f"u{i}", "d", "gw1", 0.0)
    exhausted = r"pool staff: all 6 addresses of 198\.19\.201\.0/29 are leased"
    with pytest.raises(PoolExhaustedError, match=exhausted):
        await leases.allocate(staff, "one-too-many", "d", "gw1", 0.0)
    await store.close()
