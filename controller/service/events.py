"""Controller events, kept in the store so that every replica can replay and stream them.

An event's sequence is the store revision that created it, which increases across the whole
controller cluster. Retention is by age and count; the leader prunes (`prune`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Collection

from meshsec.controller.store import CompactedError, EventType, KeyValue, Store, StoreError
from meshsec.v1 import admin_pb2, common_pb2

log = logging.getLogger(__name__)


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
        now = time.time_ns()
        doc = {
            "time_ns": now,
            "type": admin_pb2.EVENT_TYPE_WARNING if warning else admin_pb2.EVENT_TYPE_NORMAL,
            "reason": reason,
            "kind": kind,
            "name": name,
            "message": message,
            "source": source or self._source,
        }
        key = f"{self._prefix}{now:020d}-{secrets.token_hex(3)}"
        try:
            await self._store.put(key, json.dumps(doc).encode())
        except StoreError as exc:
            log.warning("event %s for %s/%s not stored: %s", reason, kind, name, exc)

    async def _retained(self) -> tuple[list[KeyValue], int]:
        listing = await self._store.range(self._prefix)
        return sorted(listing.kvs, key=lambda kv: kv.create_revision), listing.revision

    async def watch(
        self, since_sequence: int, since_time_ns: int | None, kinds: Collection[str], name: str
    ) -> AsyncIterator[admin_pb2.Event]:
        kvs, revision = await self._retained()
        replay = since_sequence > 0 or since_time_ns is not None
        last = revision
        if replay:
            for kv in kvs:
                event = _event(kv.value, kv.create_revision)
                if since_time_ns is not None:
                    if event.time.ToNanoseconds() < since_time_ns:
                        continue
                elif kv.create_revision <= since_sequence:
                    continue
                if _matches(event, kinds, name):
                    yield event
        while True:
            try:
                async with self._store.watch(self._prefix, start_revision=last + 1) as watch:
                    async for change in watch:
                        last = change.revision
                        if change.type is not EventType.PUT or change.version != 1:
                            continue
                        event = _event(change.value, change.revision)
                        if _matches(event, kinds, name):
                            yield event
            except CompactedError:
                _, last = await self._retained()  # a gap: continue live from now

    async def prune(self, now_ns: int | None = None) -> int:
        """Deletes events past the retention age or count (leader-only); returns how many."""
        kvs, _ = await self._retained()
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
