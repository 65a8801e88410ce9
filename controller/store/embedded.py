"""The default store: one process, state in memory, every change fsync'ed to a local log file.

Why a JSON-lines log rather than sqlite3: the store is small (resource documents and controller
state), it needs a revision history for watches anyway, and a log of the same records `Mvcc`
applies makes replay after a crash the same code path as a live write. sqlite3 would add a
second model of the data (tables) to keep in step with the watch history.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TypeVar

from meshsec.controller.store.api import (
    Compare,
    Event,
    KeyValue,
    Lease,
    Op,
    RangeResult,
    Store,
    TxnResult,
    Watch,
)
from meshsec.controller.store.clock import Clock, MonotonicClock
from meshsec.controller.store.errors import (
    CompactedError,
    LeaseNotFoundError,
    StoreError,
    StoreUnavailableError,
)
from meshsec.controller.store.mvcc import Mvcc, Record
from meshsec.controller.store.wal import Wal

log = logging.getLogger(__name__)
T = TypeVar("T")

_CLOSED = StoreUnavailableError("the embedded store is closed")


class _LocalWatch(Watch):
    def __init__(self, store: EmbeddedStore, prefix: str, start_revision: int) -> None:
        self.prefix = prefix
        self.start_revision = start_revision
        self._store = store
        # Unbounded on purpose: the committer must never wait on a slow watcher.
        self._queue: asyncio.Queue[Event | StoreError] = asyncio.Queue()
        self._failed: StoreError | None = None

    def offer(self, item: Event | StoreError) -> None:
        self._queue.put_nowait(item)

    async def __anext__(self) -> Event:
        if self._failed is not None:
            raise self._failed
        item = await self._queue.get()
        if isinstance(item, StoreError):
            self._failed = item
            raise item
        return item

    async def aclose(self) -> None:
        self._store._watches.discard(self)
        if self._failed is None:
            self._failed = StoreUnavailableError("watch closed")


class EmbeddedStore(Store):
    def __init__(
        self,
        wal: Wal,
        state: Mvcc,
        base: Record,
        records: list[Record],
        clock: Clock,
        compact_after_records: int,
        retain_revisions: int,
    ) -> None:
        self._wal = wal
        self._state = state
        self._base = base  # state before compact_revision; with _records it rebuilds any later state
        self._records = records
        self._clock = clock
        self._compact_after_records = compact_after_records
        self._retain_revisions = retain_revisions
        self._lock = asyncio.Lock()
        self._watches: set[_LocalWatch] = set()
        # A restart renews every lease: nobody could keep them alive while we were down (etcd does the same).
        self._deadlines = {lease_id: clock.now() + ttl for lease_id, ttl in state.leases.items()}
        self._leases_changed = asyncio.Event()
        self._closed = False
        self._expiry_task = asyncio.create_task(self._expire_leases(), name=f"lease-expiry:{wal.path}")

    @classmethod
    async def open(
        cls,
        path: str | Path,
        *,
        clock: Clock | None = None,
        compact_after_records: int = 10_000,
        retain_revisions: int = 1_000,
        repair: bool = False,
    ) -> EmbeddedStore:
        """Open (or create) the store in `path`; a torn last record from a crash is dropped.

        A log that lost acknowledged records (or is damaged before its end) raises
        `StoreCorruptError` naming what is missing; with `repair` it is cut back to the records
        that verify instead, and a copy of the damaged file is kept (`wal` module docstring).
        The log is compacted once it holds `compact_after_records` records, keeping watch history
        for the last `retain_revisions` revisions.
        """
        wal = Wal(Path(path))
        try:
            loaded = await asyncio.to_thread(functools.partial(wal.load, repair=repair))
            base = loaded.snapshot if loaded.snapshot is not None else Mvcc().snapshot()
            state = Mvcc.from_snapshot(base)
            for record in loaded.records:
                state.apply(record)
        except BaseException:
            wal.close()
            raise
        return cls(
            wal,
            state,
            base,
            loaded.records,
            clock or MonotonicClock(),
            compact_after_records,
            retain_revisions,
        )

    @property
    def revision(self) -> int:
        return self._state.revision

    # -- reads ----------------------------------------------------------------------------------

    async def get(self, key: str) -> KeyValue | None:
        self._check_open()
        return self._state.kvs.get(key)

    async def range(self, prefix: str, *, revision: int = 0) -> RangeResult:
        self._check_open()
        state = self._state if revision in (0, self._state.revision) else self._state_at(revision)
        keys = sorted(key for key in state.kvs if key.startswith(prefix))
        return RangeResult([state.kvs[key] for key in keys], state.revision)

    def _state_at(self, revision: int) -> Mvcc:
        """The keys as they were at `revision`, rebuilt from the base and the log since."""
        if revision > self._state.revision:
            raise StoreError(f"revision {revision} is in the future (the store is at {self._state.revision})")
        past = Mvcc.from_snapshot(self._base)
        if revision < past.revision:
            raise CompactedError(revision, past.revision)
        for record in self._records:
            if "rev" in record and int(record["rev"]) > revision:
                break
            past.apply(record)
        return past

    def watch(self, prefix: str, *, start_revision: int) -> Watch:
        self._check_open()
        watch = _LocalWatch(self, prefix, start_revision)
        # Backlog and registration happen without an await between them, so no write slips through.
        try:
            for event in self._state.events_since(prefix, start_revision):
                watch.offer(event)
        except StoreError as exc:
            watch.offer(exc)
            return watch
        self._watches.add(watch)
        return watch

    # -- writes ---------------------------------------------------------------------------------

    async def txn(self, compares: Sequence[Compare], ops: Sequence[Op]) -> TxnResult:
        async def work() -> TxnResult:
            record = self._state.plan_txn(compares, ops)
            if record is None:
                return TxnResult(False, self._state.revision)
            if record:
                await self._commit(record)
            return TxnResult(True, self._state.revision)

        return await self._exclusive(work)

    async def compact(self, revision: int) -> None:
        await self._exclusive(lambda: self._compact_locked(revision))

    async def grant_lease(self, ttl: int) -> Lease:
        if ttl < 1:
            raise ValueError(f"lease ttl must be at least 1 s, got {ttl}")

        async def work() -> Lease:
            record = self._state.plan_grant(ttl)
            await self._commit(record)
            lease_id = int(record["grant"])
            self._deadlines[lease_id] = self._clock.now() + ttl
            self._leases_changed.set()
            return Lease(lease_id, ttl)

        return await self._exclusive(work)

    async def keepalive(self, lease_id: int) -> int:
        self._check_open()
        ttl = self._state.leases.get(lease_id)
        deadline = self._deadlines.get(lease_id)
        if ttl is None or deadline is None or deadline <= self._clock.now():
            raise LeaseNotFoundError(lease_id)
        self._deadlines[lease_id] = self._clock.now() + ttl
        return ttl

    async def revoke_lease(self, lease_id: int) -> None:
        await self._exclusive(lambda: self._drop_lease_locked(lease_id))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._expiry_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._expiry_task
        async with self._lock:
            for watch in self._watches:
                watch.offer(_CLOSED)
            self._watches.clear()
            self._wal.close()

    # -- internals ------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise _CLOSED

    async def _exclusive(self, work: Callable[[], Awaitable[T]]) -> T:
        """Run `work` under the write lock and to completion even if our caller is cancelled.

        A record that reached the log must reach memory too, or the next write would reuse its
        revision. So a cancelled caller does not know whether its write happened (as with a
        timeout against etcd); it has to read to find out.
        """

        async def locked() -> T:
            async with self._lock:
                self._check_open()
                return await work()

        task = asyncio.ensure_future(locked())
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved if nobody waits
        return await asyncio.shield(task)

    async def _commit(self, record: Record) -> None:
        """Make `record` durable, then apply it and tell the watches. Caller holds the lock."""
        await asyncio.to_thread(self._wal.append, record)
        self._records.append(record)
        for event in self._state.apply(record):
            for watch in self._watches:
                if event.key.startswith(watch.prefix) and event.revision >= watch.start_revision:
                    watch.offer(event)
        if len(self._records) >= self._compact_after_records:
            await self._compact_locked(self._state.revision - self._retain_revisions + 1)

    async def _compact_locked(self, revision: int) -> None:
        target = min(revision, self._state.revision)
        # The new base is the state just before `target`; records from `target` on stay, so the
        # history a watch can still start from survives a restart.
        folded = Mvcc.from_snapshot(self._base)
        split = len(self._records)
        for index, record in enumerate(self._records):
            if "rev" in record and int(record["rev"]) >= target:
                split = index
                break
            folded.apply(record)
        folded.forget_history(target)
        base, records = folded.snapshot(), self._records[split:]
        await asyncio.to_thread(self._wal.rewrite, base, records)
        self._base, self._records = base, records
        self._state.forget_history(folded.compact_revision)

    async def _expire_if_due(self, lease_id: int) -> None:
        deadline = self._deadlines.get(lease_id)  # a keepalive may have won the race
        if deadline is not None and deadline <= self._clock.now():
            await self._drop_lease_locked(lease_id)

    async def _drop_lease_locked(self, lease_id: int) -> None:
        record = self._state.plan_drop(lease_id)
        await self._commit(record)
        self._deadlines.pop(lease_id, None)

    async def _expire_leases(self) -> None:
        while True:
            self._leases_changed.clear()
            now = self._clock.now()
            due = [lease_id for lease_id, deadline in self._deadlines.items() if deadline <= now]
            for lease_id in due:
                try:
                    await self._exclusive(functools.partial(self._expire_if_due, lease_id))
                except LeaseNotFoundError:
                    self._deadlines.pop(lease_id, None)
                except OSError:
                    log.exception("could not record the expiry of lease %#x; retrying", lease_id)
                    await asyncio.sleep(1)
            if due:
                continue
            waits: list[asyncio.Task[object]] = [asyncio.create_task(self._leases_changed.wait())]
            if self._deadlines:
                waits.append(asyncio.create_task(self._clock.sleep(min(self._deadlines.values()) - now)))
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in waits:
                    task.cancel()
