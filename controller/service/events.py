"""Controller events, kept in the store so that every replica can replay and stream them.

An event's sequence is the store revision that created it (times 1024, plus its position when
one transaction wrote several), which increases across the whole controller cluster.
Retention is by age and count; the leader prunes (`prune`). Each event's fields are cut to a
fixed size, so retention bounds the bytes as well.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Collection

from meshsec.controller.resources.errors import clip
from meshsec.controller.store import CompactedError, EventType, KeyValue, Put, Store, StoreError
from meshsec.v1 import admin_pb2, common_pb2

log = logging.getLogger(__name__)

_EVENTS_PER_TXN = 500
# An event repeats at most this much of what it is about (a refused Apply's problem, a name):
# events are kept in the store and replayed to every watcher, so their size must not follow input.
MAX_MESSAGE_CHARS = 1024
MAX_NAME_CHARS = 253


def _event(raw: bytes, sequence: int) -> admin_pb2.Event:
    doc = json.loads(raw)
    event = admin_pb2.Event(
        sequence=sequence,
        type=doc["type"],
        reason=doc["reason"],
        involved=common_pb2.ObjectRef(kind=doc["kind"], name=doc["name"]),
        message=doc["message"],
        source=doc["source"],
    )
    event.time.FromNanoseconds(int(doc["time_ns"]))
    return event


def _sequence(revision: int, position: int) -> int:
    """Store revision of the write, then position within that transaction (a bulk Apply writes up
    to _EVENTS_PER_TXN events at one revision): increasing across all replicas."""
    return revision << 10 | position


def _matches(event: admin_pb2.Event, kinds: Collection[str], name: str) -> bool:
    return (not kinds or event.involved.kind in kinds) and (not name or event.involved.name == name)


class EventLog:
    def __init__(
        self, store: Store, prefix: str, source: str, *, retain_s: int = 3600, retain_count: int = 10_000
    ):
        self._store = store
        self._prefix = prefix
        self._source = source
        self._retain_s = retain_s
        self._retain_count = retain_count

    async def emit(
        self, reason: str, kind: str, name: str, message: str, *, warning: bool = False, source: str = ""
    ) -> None:
        """Best effort: an event that cannot be stored is logged, never fails the caller's operation."""
        await self.emit_many([(reason, kind, name, message)], warning=warning, source=source)

    async def emit_many(
        self, events: list[tuple[str, str, str, str]], *, warning: bool = False, source: str = ""
    ) -> None:
        """(reason, kind, name, message) each, written in few transactions (a bulk Apply)."""
        puts: list[Put] = []
        for reason, kind, name, message in events:
            now = time.time_ns()
            doc = {
                "time_ns": now,
                "type": admin_pb2.EVENT_TYPE_WARNING if warning else admin_pb2.EVENT_TYPE_NORMAL,
                "reason": reason,
                "kind": clip(kind, MAX_NAME_CHARS),
                "name": clip(name, MAX_NAME_CHARS),
                "message": clip(message, MAX_MESSAGE_CHARS),
                "source": source or self._source,
            }
            # Keys sort in write order within a transaction: that order numbers them (see _sequence).
            key = f"{self._prefix}{now:020d}-{len(puts):04d}-{secrets.token_hex(3)}"
            puts.append(Put(key, json.dumps(doc).encode()))
        for start in range(0, len(puts), _EVENTS_PER_TXN):
            try:
                await self._store.txn([], puts[start : start + _EVENTS_PER_TXN])
            except StoreError as exc:
                log.warning("%d event(s) not stored, first %s: %s", len(puts) - start, events[start][0], exc)
                return

    async def _retained(self) -> tuple[list[tuple[int, KeyValue]], int]:
        """(sequence, entry) in sequence order, and the listing's revision."""
        listing = await self._store.range(self._prefix)
        out = []
        position, previous = 0, -1
        for kv in sorted(listing.kvs, key=lambda kv: (kv.create_revision, kv.key)):
            position = position + 1 if kv.create_revision == previous else 0
            previous = kv.create_revision
            out.append((_sequence(kv.create_revision, position), kv))
        return out, listing.revision

    async def watch(
        self, since_sequence: int, since_time_ns: int | None, kinds: Collection[str], name: str
    ) -> AsyncIterator[admin_pb2.Event]:
        entries, revision = await self._retained()
        replay = since_sequence > 0 or since_time_ns is not None
        last = revision
        if replay:
            for sequence, kv in entries:
                event = _event(kv.value, sequence)
                if since_time_ns is not None:
                    if event.time.ToNanoseconds() < since_time_ns:
                        continue
                elif sequence <= since_sequence:
                    continue
                if _matches(event, kinds, name):
                    yield event
        while True:
            position = 0
            try:
                async with self._store.watch(self._prefix, start_revision=last + 1) as watch:
                    async for change in watch:
                        position = position + 1 if change.revision == last else 0
                        last = change.revision
                        if change.type is not EventType.PUT or change.version != 1:
                            continue
                        event = _event(change.value, _sequence(change.revision, position))
                        if _matches(event, kinds, name):
                            yield event
            except CompactedError:
                _, last = await self._retained()  # a gap: continue live from now

    async def prune(self, now_ns: int | None = None) -> int:
        """Deletes events past the retention age or count (leader-only); returns how many."""
        entries, _ = await self._retained()
        kvs = [kv for _, kv in entries]
        cutoff = (now_ns or time.time_ns()) - self._retain_s * 1_000_000_000
        excess = max(0, len(kvs) - self._retain_count)
        removed = 0
        for i, kv in enumerate(kvs):
            too_old = json.loads(kv.value)["time_ns"] < cutoff
            if i < excess or too_old:
                with contextlib.suppress(StoreError):
                    await self._store.delete(kv.key)
                    removed += 1
        return removed
