"""The store interface: revisions, compare-and-swap, transactions, prefix watches and leases.

Semantics follow etcd v3 so both backends behave alike: one store-wide revision that every
successful write (put, delete, transaction) increments exactly once; per key `create_revision`,
`mod_revision` and `version`; a missing key compares as all zeros.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from types import TracebackType

from meshsec.controller.store.errors import ConflictError


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int = 0


class EventType(enum.Enum):
    PUT = "PUT"
    DELETE = "DELETE"


@dataclass(frozen=True, slots=True)
class Event:
    type: EventType
    key: str
    value: bytes  # empty for DELETE
    revision: int  # the revision of the write that caused the event
    create_revision: int = 0  # 0 for DELETE
    version: int = 0  # 0 for DELETE
    lease: int = 0


@dataclass(frozen=True, slots=True)
class RangeResult:
    kvs: list[KeyValue]
    revision: int  # store revision the read saw; watch from revision + 1 to miss nothing


class CompareTarget(enum.Enum):
    MOD_REVISION = "mod"
    CREATE_REVISION = "create"
    VERSION = "version"
    VALUE = "value"


class CompareOp(enum.Enum):
    EQUAL = "=="
    NOT_EQUAL = "!="
    LESS = "<"
    GREATER = ">"


@dataclass(frozen=True, slots=True)
class Compare:
    key: str
    target: CompareTarget
    op: CompareOp
    operand: int | bytes

    @classmethod
    def mod_revision(cls, key: str, revision: int) -> Compare:
        """Holds while `key` is unchanged since `revision` (0: the key does not exist)."""
        return cls(key, CompareTarget.MOD_REVISION, CompareOp.EQUAL, revision)

    @classmethod
    def absent(cls, key: str) -> Compare:
        return cls(key, CompareTarget.CREATE_REVISION, CompareOp.EQUAL, 0)

    @classmethod
    def value(cls, key: str, value: bytes) -> Compare:
        return cls(key, CompareTarget.VALUE, CompareOp.EQUAL, value)

    def holds(self, kv: KeyValue | None) -> bool:
        """Evaluate against the key's current state (None: missing, compares as zero values)."""
        actual: int | bytes
        if self.target is CompareTarget.VALUE:
            actual = kv.value if kv is not None else b""
        elif kv is None:
            actual = 0
        elif self.target is CompareTarget.MOD_REVISION:
            actual = kv.mod_revision
        elif self.target is CompareTarget.CREATE_REVISION:
            actual = kv.create_revision
        else:
            actual = kv.version
        if type(actual) is not type(self.operand):
            raise TypeError(f"compare on {self.target.value} of {self.key!r} needs a {type(actual).__name__}")
        match self.op:
            case CompareOp.EQUAL:
                return actual == self.operand
            case CompareOp.NOT_EQUAL:
                return actual != self.operand
            case CompareOp.LESS:
                return actual < self.operand  # type: ignore[operator]
            case CompareOp.GREATER:
                return actual > self.operand  # type: ignore[operator]


@dataclass(frozen=True, slots=True)
class Put:
    key: str
    value: bytes
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Delete:
    key: str


Op = Put | Delete


def check_ops(ops: Sequence[Op]) -> None:
    """A transaction touches each key at most once (etcd refuses anything else)."""
    keys = [op.key for op in ops]
    if len(set(keys)) != len(keys):
        raise ValueError(f"a transaction may touch each key once: {sorted(keys)}")


@dataclass(frozen=True, slots=True)
class TxnResult:
    succeeded: bool
    revision: int  # store revision after the transaction (unchanged when nothing was written)


@dataclass(frozen=True, slots=True)
class Lease:
    id: int
    ttl: int  # seconds granted (a backend may round up)


class Watch(abc.ABC):
    """Events under a prefix in revision order; iterate with `async for`, close with `aclose`.

    Iteration raises `CompactedError` when the start revision is no longer in the store's
    history: the caller re-lists (`Store.range`) and watches again from the listed revision + 1.
    """

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    @abc.abstractmethod
    async def __anext__(self) -> Event: ...

    @abc.abstractmethod
    async def aclose(self) -> None: ...

    async def __aenter__(self) -> Watch:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


class Store(abc.ABC):
    """A small revisioned key-value store. Keys are text, values are bytes."""

    @abc.abstractmethod
    async def get(self, key: str) -> KeyValue | None: ...

    @abc.abstractmethod
    async def range(self, prefix: str, *, revision: int = 0) -> RangeResult:
        """Every key starting with `prefix`, sorted by key; as of `revision` if given (0: now).

        A past read raises `CompactedError` once that revision is older than the store's history;
        its result's `revision` is the one asked for."""

    @abc.abstractmethod
    async def txn(self, compares: Sequence[Compare], ops: Sequence[Op]) -> TxnResult:
        """Apply all `ops` at one new revision if every compare holds, else apply nothing."""

    async def put(
        self, key: str, value: bytes, *, expect_mod_revision: int | None = None, lease: int = 0
    ) -> int:
        """Write `key`; with `expect_mod_revision` only if the key is unchanged since then (0: absent).

        Returns the new store revision; raises `ConflictError` when the expectation fails.
        """
        compares = [] if expect_mod_revision is None else [Compare.mod_revision(key, expect_mod_revision)]
        result = await self.txn(compares, [Put(key, value, lease)])
        if not result.succeeded:
            raise ConflictError(key, expect_mod_revision or 0)
        return result.revision

    async def delete(self, key: str, *, expect_mod_revision: int | None = None) -> bool:
        """Remove `key`; returns whether it existed. Raises `ConflictError` like `put`."""
        compares = [Compare(key, CompareTarget.VERSION, CompareOp.GREATER, 0)]
        if expect_mod_revision is not None:
            compares.append(Compare.mod_revision(key, expect_mod_revision))
        result = await self.txn(compares, [Delete(key)])
        if result.succeeded:
            return True
        if expect_mod_revision is not None:
            raise ConflictError(key, expect_mod_revision)
        return False

    @abc.abstractmethod
    def watch(self, prefix: str, *, start_revision: int) -> Watch:
        """Events for keys under `prefix` from `start_revision` (inclusive) on."""

    @abc.abstractmethod
    async def compact(self, revision: int) -> None:
        """Forget history up to and including `revision`; older watches fail with `CompactedError`."""

    @abc.abstractmethod
    async def grant_lease(self, ttl: int) -> Lease: ...

    @abc.abstractmethod
    async def keepalive(self, lease_id: int) -> int:
        """Renew the lease to its full TTL; returns the TTL. Raises `LeaseNotFoundError` once it is gone."""

    @abc.abstractmethod
    async def revoke_lease(self, lease_id: int) -> None:
        """End the lease now, deleting its keys. Raises `LeaseNotFoundError` if it is already gone."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
