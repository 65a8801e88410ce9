"""One leader among controller replicas, built only on the `Store` interface (leases + transactions).

The leader holds one key, created with "absent" as the transaction's guard and attached to its
lease. While it keeps the lease alive the key stays and nobody else can create it; when the lease
is revoked or expires the store deletes the key and a waiting candidate's transaction succeeds.
A leader considers itself deposed as soon as its key changes, its lease is reported gone, or it
cannot confirm the lease for a whole TTL (it might have expired unseen).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from meshsec.controller.store.api import Compare, Delete, EventType, Put, Store
from meshsec.controller.store.errors import CompactedError, LeaseNotFoundError, StoreError

log = logging.getLogger(__name__)


class LeaderElection:
    def __init__(
        self, store: Store, name: str, identity: str, *, ttl: int = 10, prefix: str = "/meshsec/election/"
    ) -> None:
        if ttl < 1:
            raise ValueError(f"election ttl must be at least 1 s, got {ttl}")
        self.key = f"{prefix}{name}"
        self.identity = identity
        self._store = store
        self._ttl = ttl
        self._lease = 0
        self._revision = 0  # mod_revision of our leader key
        self._lost = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def lease_id(self) -> int:
        """The lease holding the leader key (0 before the first win)."""
        return self._lease

    @property
    def is_leader(self) -> bool:
        return self._revision != 0 and not self._lost.is_set()

    async def campaign(self) -> None:
        """Wait until this replica is the leader."""
        if self.is_leader:
            return
        while True:
            lease = await self._store.grant_lease(self._ttl)
            result = await self._store.txn(
                [Compare.absent(self.key)], [Put(self.key, self.identity.encode(), lease.id)]
            )
            if result.succeeded:
                self._became_leader(lease.id, result.revision)
                return
            with contextlib.suppress(LeaseNotFoundError):
                await self._store.revoke_lease(lease.id)
            await self._wait_for_vacancy()

    async def wait_lost(self) -> None:
        """Return once leadership is lost (lease gone, key taken, or lease unconfirmable)."""
        await self._lost.wait()

    async def leader(self) -> str | None:
        """Identity of the current leader, None while there is none."""
        kv = await self._store.get(self.key)
        return kv.value.decode() if kv is not None else None

    async def observe(self) -> AsyncIterator[str | None]:
        """The current leader's identity, then again at every change (None: no leader)."""
        while True:
            listing = await self._store.range(self.key)
            current = next((kv for kv in listing.kvs if kv.key == self.key), None)
            yield current.value.decode() if current is not None else None
            try:
                async with self._store.watch(self.key, start_revision=listing.revision + 1) as watch:
                    async for event in watch:
                        if event.key == self.key:
                            yield event.value.decode() if event.type is EventType.PUT else None
            except CompactedError:
                continue

    async def resign(self) -> None:
        """Give up leadership now so another replica can take over without waiting for the TTL."""
        was_leader = self.is_leader
        lease, revision = self._lease, self._revision
        await self._stop()
        if not revision:
            return
        try:
            # Guarded by our revision: never deletes a successor's key. Also tried after a loss, since
            # "could not confirm the lease" may mean our key is still there, blocking everyone.
            await self._store.txn([Compare.mod_revision(self.key, revision)], [Delete(self.key)])
            with contextlib.suppress(LeaseNotFoundError):
                await self._store.revoke_lease(lease)
        except StoreError:
            if was_leader:
                raise
        self._revision = 0

    async def abandon(self) -> None:
        """Stop renewing the lease without releasing it, as a crashed process would.

        Leadership passes to another replica once the store expires the lease.
        """
        await self._stop()

    # -- internals ------------------------------------------------------------------------------

    def _became_leader(self, lease: int, revision: int) -> None:
        self._lease, self._revision = lease, revision
        self._lost = asyncio.Event()
        self._tasks = [
            asyncio.create_task(self._keep_lease(), name=f"election-keepalive:{self.key}"),
            asyncio.create_task(self._watch_key(), name=f"election-watch:{self.key}"),
        ]
        log.info("%s leads %s (lease %#x)", self.identity, self.key, lease)

    def _depose(self, why: str) -> None:
        if not self._lost.is_set():
            log.warning("%s lost leadership of %s: %s", self.identity, self.key, why)
            self._lost.set()

    async def _stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        self._lost.set()

    async def _wait_for_vacancy(self) -> None:
        current = await self._store.get(self.key)
        if current is None:
            return
        try:
            async with self._store.watch(self.key, start_revision=current.mod_revision + 1) as watch:
                async for event in watch:
                    if event.key == self.key and event.type is EventType.DELETE:
                        return
        except CompactedError:
            return  # the key changed long ago; just try again

    async def _keep_lease(self) -> None:
        # Real time, not the store's clock: this is how long *we* may go without confirming the lease.
        confirmed = time.monotonic()
        while True:
            await asyncio.sleep(self._ttl / 3)
            try:
                await self._store.keepalive(self._lease)
                confirmed = time.monotonic()
            except LeaseNotFoundError:
                self._depose("lease expired")
                return
            except StoreError as exc:
                if time.monotonic() - confirmed >= self._ttl:
                    self._depose(f"lease unconfirmed for {self._ttl} s ({exc})")
                    return

    async def _watch_key(self) -> None:
        start = self._revision + 1
        while True:
            try:
                async with self._store.watch(self.key, start_revision=start) as watch:
                    async for event in watch:
                        if event.key == self.key:
                            self._depose(f"leader key {event.type.value} at revision {event.revision}")
                            return
            except CompactedError:
                listing = await self._store.range(self.key)
                if not any(kv.key == self.key and kv.mod_revision == self._revision for kv in listing.kvs):
                    self._depose("leader key changed during a watch gap")
                    return
                start = listing.revision + 1
            except StoreError as exc:
                log.warning("election watch on %s failed (%s); retrying", self.key, exc)
                await asyncio.sleep(min(1.0, self._ttl / 3))
