"""The embedded store's state machine: keys, revisions, leases and watch history, no I/O.

Every change is a JSON-able *record*; `apply` is the only way state moves, both for live writes
and for replaying the log, so the file and memory cannot disagree.
Record shapes:
  {"rev": n, "ev": [{"k": key, "v": base64, "l": lease} | {"k": key, "d": 1}], "drop": lease?}
  {"grant": lease_id, "ttl": seconds}
  {"drop": lease_id}                      (a lease ending with no keys attached)
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

from meshsec.controller.store.api import Compare, Event, EventType, KeyValue, Op, Put, check_ops
from meshsec.controller.store.errors import CompactedError, LeaseNotFoundError

Record = dict[str, Any]


class Mvcc:
    def __init__(self) -> None:
        self.revision = 1  # as in etcd, an empty store is at revision 1 and the first write makes 2
        self.compact_revision = 0
        self.kvs: dict[str, KeyValue] = {}
        self.leases: dict[int, int] = {}  # lease id -> granted ttl
        self.lease_keys: dict[int, set[str]] = {}
        self.next_lease_id = 1
        # Events from compact_revision on, in revision order, for watches that start in the past.
        self.history: list[Event] = []

    # -- snapshots ------------------------------------------------------------------------------

    def snapshot(self) -> Record:
        return {
            "rev": self.revision,
            "compact": self.compact_revision,
            "next_lease": self.next_lease_id,
            "kvs": [
                [kv.key, _b64(kv.value), kv.create_revision, kv.mod_revision, kv.version, kv.lease]
                for kv in self.kvs.values()
            ],
            "leases": [[lease_id, ttl] for lease_id, ttl in self.leases.items()],
        }

    @classmethod
    def from_snapshot(cls, snap: Record) -> Mvcc:
        state = cls()
        state.revision = int(snap["rev"])
        state.compact_revision = int(snap["compact"])
        state.next_lease_id = int(snap["next_lease"])
        for lease_id, ttl in snap["leases"]:
            state.leases[int(lease_id)] = int(ttl)
            state.lease_keys[int(lease_id)] = set()
        for key, value, create, mod, version, lease in snap["kvs"]:
            kv = KeyValue(str(key), _unb64(value), int(create), int(mod), int(version), int(lease))
            state.kvs[kv.key] = kv
            if kv.lease:
                state.lease_keys[kv.lease].add(kv.key)
        return state

    # -- planning: turn a request into a record, or refuse it ----------------------------------

    def plan_txn(self, compares: Sequence[Compare], ops: Sequence[Op]) -> Record | None:
        """The record that applies `ops`, {} when nothing changes, None when a compare fails."""
        check_ops(ops)
        if not all(compare.holds(self.kvs.get(compare.key)) for compare in compares):
            return None
        events: list[dict[str, Any]] = []
        for op in ops:
            if isinstance(op, Put):
                if op.lease and op.lease not in self.leases:
                    raise LeaseNotFoundError(op.lease)
                events.append({"k": op.key, "v": _b64(op.value), "l": op.lease})
            elif op.key in self.kvs:  # deleting a missing key changes nothing, as in etcd
                events.append({"k": op.key, "d": 1})
        return {"rev": self.revision + 1, "ev": events} if events else {}

    def plan_grant(self, ttl: int) -> Record:
        return {"grant": self.next_lease_id, "ttl": ttl}

    def plan_drop(self, lease_id: int) -> Record:
        if lease_id not in self.leases:
            raise LeaseNotFoundError(lease_id)
        keys = sorted(self.lease_keys[lease_id])
        if not keys:
            return {"drop": lease_id}
        return {"rev": self.revision + 1, "ev": [{"k": key, "d": 1} for key in keys], "drop": lease_id}

    # -- applying -------------------------------------------------------------------------------

    def apply(self, record: Record) -> list[Event]:
        if "grant" in record:
            lease_id = int(record["grant"])
            self.leases[lease_id] = int(record["ttl"])
            self.lease_keys[lease_id] = set()
            self.next_lease_id = max(self.next_lease_id, lease_id + 1)
        events: list[Event] = []
        if "rev" in record:
            revision = int(record["rev"])
            events = [self._apply_event(revision, change) for change in record["ev"]]
            self.revision = revision
            self.history.extend(events)
        if "drop" in record:
            lease_id = int(record["drop"])
            self.leases.pop(lease_id, None)
            self.lease_keys.pop(lease_id, None)
        return events

    def _apply_event(self, revision: int, change: dict[str, Any]) -> Event:
        key = str(change["k"])
        previous = self.kvs.get(key)
        if previous is not None and previous.lease:
            self.lease_keys.get(previous.lease, set()).discard(key)
        if change.get("d"):
            self.kvs.pop(key, None)
            return Event(EventType.DELETE, key, b"", revision)
        lease = int(change["l"])
        kv = KeyValue(
            key,
            _unb64(change["v"]),
            create_revision=previous.create_revision if previous else revision,
            mod_revision=revision,
            version=previous.version + 1 if previous else 1,
            lease=lease,
        )
        self.kvs[key] = kv
        if lease:
            self.lease_keys.setdefault(lease, set()).add(key)
        return Event(EventType.PUT, key, kv.value, revision, kv.create_revision, kv.version, lease)

    # -- reading --------------------------------------------------------------------------------

    def events_since(self, prefix: str, start_revision: int) -> list[Event]:
        if start_revision < self.compact_revision:
            raise CompactedError(start_revision, self.compact_revision)
        return [e for e in self.history if e.revision >= start_revision and e.key.startswith(prefix)]

    def forget_history(self, revision: int) -> None:
        """Drop events before `revision`; like etcd, watching from `revision` itself still works."""
        self.compact_revision = max(self.compact_revision, revision)
        self.history = [e for e in self.history if e.revision >= self.compact_revision]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)
