"""Virtual addresses for remote-access clients, allocated in the store so that no two controller
replicas (and no gateway restart) ever hand one address out twice.

Two kinds of keys under ``<prefix>remote-access/``:

- ``addresses/<pool>/<address>``: who holds an address. Creating it is the allocation: the
  transaction that writes it requires it to be absent, so of two replicas that picked the same
  free address one commits and the other retries with a fresh listing.
- ``clients/<user>/<device>``: the device's lease (its addresses, gateway, connected since). A
  device holds one lease; asking again (a reconnect, a gateway restart, a roaming client arriving
  at another gateway) returns the same addresses, moved to the asking gateway.

Both are written in the same transaction, so a lease and its address keys exist together or not
at all. The store's transactions are the whole consistency argument; there is no lock.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Network, ip_address

from meshsec.controller.resources.model import Address, Prefix, RemoteAccessPool
from meshsec.controller.service.keys import Keys
from meshsec.controller.store import Compare, Delete, Put, Store
from meshsec.controller.store.errors import StoreUnavailableError

# Lost races before an allocation gives up: each loss means another client got an address.
ALLOCATE_ATTEMPTS = 64
# A free address is drawn at random from the first this many, so concurrent allocations on
# different replicas seldom pick the same one (and lose a round trip).
SPREAD = 32


class PoolExhaustedError(Exception):
    """Every address of a pool range is leased; the message says which pool and how many."""


@dataclass(frozen=True, slots=True)
class Lease:
    pool: str
    user: str
    device: str
    addresses: tuple[Address, ...]
    gateway: str
    connected_since: float  # seconds since the epoch, when the current gateway took the client

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "pool": self.pool,
                "user": self.user,
                "device": self.device,
                "addresses": [str(a) for a in self.addresses],
                "gateway": self.gateway,
                "connectedSince": self.connected_since,
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Lease:
        doc = json.loads(raw)
        return cls(
            pool=str(doc["pool"]),
            user=str(doc["user"]),
            device=str(doc["device"]),
            addresses=tuple(ip_address(a) for a in doc["addresses"]),
            gateway=str(doc["gateway"]),
            connected_since=float(doc["connectedSince"]),
        )


class LeaseAllocator:
    def __init__(self, store: Store, keys: Keys, rng: random.Random | None = None) -> None:
        self._store = store
        self._base = keys.remote_access
        self._rng = rng or random.Random()

    def _client_key(self, user: str, device: str) -> str:
        return f"{self._base}clients/{user}/{device}"

    def _address_prefix(self, pool: str) -> str:
        return f"{self._base}addresses/{pool}/"

    async def allocate(
        self, pool: RemoteAccessPool, user: str, device: str, gateway: str, now: float
    ) -> Lease:
        """The device's lease, taken over by `gateway`; a new one if it has none.

        Raises PoolExhaustedError when a range of the pool has no free address left."""
        name = pool.metadata.name
        client_key = self._client_key(user, device)
        for _ in range(ALLOCATE_ATTEMPTS):
            held = await self._store.get(client_key)
            if held is not None:
                lease = Lease.from_json(held.value)
                if lease.pool == name:
                    moved = Lease(name, user, device, lease.addresses, gateway, now)
                    if lease.gateway == gateway:
                        return lease
                    ok = await self._store.txn(
                        [Compare.mod_revision(client_key, held.mod_revision)],
                        [Put(client_key, moved.to_json())],
                    )
                    if ok.succeeded:
                        return moved
                    continue
                # The user moved to another pool: the old addresses go back first.
                await self._release(held.mod_revision, lease)
                continue
            listing = await self._store.range(self._address_prefix(name))
            taken = {kv.key.rpartition("/")[2] for kv in listing.kvs}
            addresses = tuple(self._pick(name, prefix, taken) for prefix in pool.spec.addresses)
            lease = Lease(name, user, device, addresses, gateway, now)
            owner = json.dumps({"user": user, "device": device}).encode()
            address_keys = [f"{self._address_prefix(name)}{a}" for a in addresses]
            result = await self._store.txn(
                [Compare.absent(client_key), *(Compare.absent(k) for k in address_keys)],
                [Put(client_key, lease.to_json()), *(Put(k, owner) for k in address_keys)],
            )
            if result.succeeded:
                return lease
        raise StoreUnavailableError(
            f"pool {name}: lost {ALLOCATE_ATTEMPTS} allocation races in a row against other replicas; retry"
        )

    def _pick(self, pool: str, prefix: Prefix, taken: set[str]) -> Address:
        free: list[Address] = []
        for address in _hosts(prefix):
            if str(address) not in taken:
                free.append(address)
                if len(free) >= SPREAD:
                    break
        if not free:
            raise PoolExhaustedError(
                f"pool {pool}: all {_capacity(prefix)} addresses of {prefix} are leased; "
                "release a lease or enlarge the pool"
            )
        return self._rng.choice(free)

    async def release(self, user: str, device: str) -> Lease | None:
        """Give the device's addresses back (it disconnected or was deleted); its lease or None."""
        while True:
            held = await self._store.get(self._client_key(user, device))
            if held is None:
                return None
            lease = Lease.from_json(held.value)
            if await self._release(held.mod_revision, lease):
                return lease

    async def release_user(self, user: str) -> list[Lease]:
        """Every lease of a user (deleted or disabled)."""
        listing = await self._store.range(f"{self._base}clients/{user}/")
        out = []
        for kv in listing.kvs:
            lease = await self.release(user, kv.key.rpartition("/")[2])
            if lease is not None:
                out.append(lease)
        return out

    async def release_ops(self, user: str) -> tuple[list[Lease], list[Delete]]:
        """The leases of `user` and the deletes that give them back, for a transaction that also
        deletes the user itself (AdminService.Delete), so the addresses go with it."""
        held = await self.leases(user)
        ops: list[Delete] = []
        for lease in held:
            ops.append(Delete(self._client_key(lease.user, lease.device)))
            ops += [Delete(f"{self._address_prefix(lease.pool)}{a}") for a in lease.addresses]
        return held, ops

    async def _release(self, mod_revision: int, lease: Lease) -> bool:
        keys = [f"{self._address_prefix(lease.pool)}{a}" for a in lease.addresses]
        result = await self._store.txn(
            [Compare.mod_revision(self._client_key(lease.user, lease.device), mod_revision)],
            [Delete(self._client_key(lease.user, lease.device)), *(Delete(k) for k in keys)],
        )
        return result.succeeded

    async def leases(self, user: str = "") -> list[Lease]:
        """Current leases (of one user, or all), ordered by user and device."""
        prefix = f"{self._base}clients/{user}/" if user else f"{self._base}clients/"
        listing = await self._store.range(prefix)
        return [Lease.from_json(kv.value) for kv in listing.kvs]


def _hosts(prefix: Prefix) -> Iterator[Address]:
    # IPv4 leaves out the network and broadcast addresses, IPv6 the subnet-router anycast one.
    return iter(prefix.hosts())


def _capacity(prefix: Prefix) -> int:
    if isinstance(prefix, IPv4Network):
        return max(prefix.num_addresses - 2, 0)
    return prefix.num_addresses - 1
