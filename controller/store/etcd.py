"""`Store` on etcd v3 through etcd3aio; the only module that imports etcd3aio.

The watch stream is driven here rather than through `WatchService.watch`: etcd3aio 0.3.0 resumes
a broken stream from the *response header* revision + 1, which skips the rest of a replay that was
interrupted part-way (the header carries the store's current revision, not the event's). We
resume from the last delivered event's revision + 1, as etcd's own Go client does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar

import grpc
import grpc.aio
from etcd3aio import Etcd3Client, EtcdConnectionError, EtcdError, EtcdTransientError, prefix_range_end
from etcd3aio._protobuf import Compare as PbCompare
from etcd3aio._protobuf import WatchCreateRequest, WatchRequest, WatchStub
from etcd3aio.kv import KVService
from etcd3aio.lease import LeaseService
from grpc.aio import EOF  # type: ignore[attr-defined]  # missing from grpc-stubs

from meshsec.controller.store.api import (
    Compare,
    CompareOp,
    CompareTarget,
    Event,
    EventType,
    KeyValue,
    Lease,
    Op,
    Put,
    RangeResult,
    Store,
    TxnResult,
    Watch,
    check_ops,
)
from meshsec.controller.store.errors import (
    CompactedError,
    LeaseNotFoundError,
    StoreError,
    StoreUnavailableError,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

_TARGETS = {
    CompareTarget.VERSION: PbCompare.VERSION,
    CompareTarget.CREATE_REVISION: PbCompare.CREATE,
    CompareTarget.MOD_REVISION: PbCompare.MOD,
    CompareTarget.VALUE: PbCompare.VALUE,
}
_OPS = {
    CompareOp.EQUAL: PbCompare.EQUAL,
    CompareOp.NOT_EQUAL: PbCompare.NOT_EQUAL,
    CompareOp.LESS: PbCompare.LESS,
    CompareOp.GREATER: PbCompare.GREATER,
}
_PB_DELETE = 1  # mvccpb.Event.EventType.DELETE
# A server killed mid-stream can surface as INTERNAL (RST_STREAM) as well as UNAVAILABLE.
_RESUMABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL)


def _key_range(prefix: str) -> tuple[bytes, bytes]:
    if not prefix:  # etcd spells "every key" as ["\0", "\0")
        return b"\0", b"\0"
    return prefix.encode(), prefix_range_end(prefix.encode())


def _kv(pb: Any) -> KeyValue:
    return KeyValue(
        pb.key.decode(),
        bytes(pb.value),
        int(pb.create_revision),
        int(pb.mod_revision),
        int(pb.version),
        int(pb.lease),
    )


def _compare(compare: Compare) -> Any:
    pb = PbCompare(result=_OPS[compare.op], target=_TARGETS[compare.target], key=compare.key.encode())
    if compare.target is CompareTarget.VALUE:
        if not isinstance(compare.operand, bytes):
            raise TypeError(f"compare on value of {compare.key!r} needs bytes")
        pb.value = compare.operand
    elif not isinstance(compare.operand, int):
        raise TypeError(f"compare on {compare.target.value} of {compare.key!r} needs an int")
    elif compare.target is CompareTarget.VERSION:
        pb.version = compare.operand
    elif compare.target is CompareTarget.CREATE_REVISION:
        pb.create_revision = compare.operand
    else:
        pb.mod_revision = compare.operand
    return pb


def _translate(exc: BaseException, lease_id: int = 0) -> BaseException:
    """Map an etcd3aio/gRPC failure to the store's errors (returns `exc` itself when unknown)."""
    if isinstance(exc, EtcdConnectionError | EtcdTransientError | TimeoutError):
        return StoreUnavailableError(f"etcd unavailable: {exc}")
    if isinstance(exc, grpc.aio.AioRpcError):
        detail = exc.details() or ""
        if exc.code() == grpc.StatusCode.NOT_FOUND and "lease not found" in detail:
            return LeaseNotFoundError(lease_id)
        if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return StoreUnavailableError(f"etcd unavailable: {detail}")
        return StoreError(f"etcd: {exc.code().name}: {detail}")
    if isinstance(exc, EtcdError):
        return StoreError(f"etcd: {exc}")
    return exc


def _etcd_detail(exc: StoreError) -> str:
    """The etcd server's message behind a translated error ("" when it did not come from etcd)."""
    cause = exc.__cause__
    return (cause.details() or "") if isinstance(cause, grpc.aio.AioRpcError) else ""


class _EtcdWatch(Watch):
    def __init__(self, store: EtcdStore, prefix: str, start_revision: int) -> None:
        self._store = store
        self._key, self._range_end = _key_range(prefix)
        self._start = start_revision
        self._next = start_revision  # resume point: last delivered event's revision + 1
        self._pending: deque[Event] = deque()
        self._call: grpc.aio.StreamStreamCall[Any, Any] | None = None
        self._closed = False

    async def _read(self) -> Any:
        """The next watch response, opening the stream first if needed; None when the server ends it."""
        if self._call is None:
            self._call = self._store._watch_stub().Watch()
            create = WatchCreateRequest(key=self._key, range_end=self._range_end, start_revision=self._next)
            await self._call.write(WatchRequest(create_request=create))
        response = await self._call.read()
        return None if response is EOF else response

    async def __anext__(self) -> Event:
        backoff = 0.1
        while not self._pending:
            if self._closed:
                raise StoreUnavailableError("watch closed")
            try:
                response = await self._read()
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if (task is not None and task.cancelling()) or not (self._closed or self._store._closed):
                    raise
                # Our own close (the store's channel or this watch) cancelled the call, not the caller.
                self._drop_stream()
                raise StoreUnavailableError("watch closed: the etcd store was closed") from None
            except grpc.aio.AioRpcError as exc:
                self._drop_stream()
                if exc.code() not in _RESUMABLE or self._store._closed:
                    raise _translate(exc) from exc
                log.info(
                    "etcd watch from revision %d interrupted (%s); resuming", self._next, exc.code().name
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            if response is None:  # the server ended the stream: resume like after an error
                self._drop_stream()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            backoff = 0.1
            if response.compact_revision:
                self._drop_stream()
                raise CompactedError(self._next, int(response.compact_revision))
            if response.canceled:
                self._drop_stream()
                raise StoreError(f"etcd cancelled the watch: {response.cancel_reason}")
            for pb in response.events:
                kv = pb.kv
                if pb.type == _PB_DELETE:
                    event = Event(EventType.DELETE, kv.key.decode(), b"", int(kv.mod_revision))
                else:
                    event = Event(
                        EventType.PUT,
                        kv.key.decode(),
                        bytes(kv.value),
                        int(kv.mod_revision),
                        int(kv.create_revision),
                        int(kv.version),
                        int(kv.lease),
                    )
                self._pending.append(event)
        event = self._pending.popleft()
        self._next = event.revision + 1
        return event

    def _drop_stream(self) -> None:
        if self._call is not None:
            self._call.cancel()
        self._call = None

    async def aclose(self) -> None:
        self._closed = True
        self._drop_stream()


class EtcdStore(Store):
    def __init__(self, client: Etcd3Client, timeout: float) -> None:
        self._client = client
        self._timeout = timeout
        self._closed = False

    @classmethod
    async def connect(
        cls,
        endpoints: Sequence[str],
        *,
        timeout: float = 5.0,
        ca_cert: bytes | None = None,
        cert_key: bytes | None = None,
        cert_chain: bytes | None = None,
    ) -> EtcdStore:
        """Connect to `endpoints` ("host:port"); TLS with `ca_cert`, mTLS with a client cert as well."""
        # Enough attempts to ride out a server restart; `timeout` bounds each call's retries overall.
        client = Etcd3Client(
            list(endpoints), rpc_max_attempts=10, ca_cert=ca_cert, cert_key=cert_key, cert_chain=cert_chain
        )
        await client.connect()
        store = cls(client, timeout)
        try:
            await store.get("\0")  # fail now, not at first use, when etcd cannot be reached
        except BaseException:
            await client.close()
            raise
        return store

    async def _call(self, awaitable: Awaitable[T], lease_id: int = 0) -> T:
        if self._closed:
            raise StoreUnavailableError("the etcd store is closed")
        try:
            return await awaitable
        except (EtcdError, grpc.aio.AioRpcError, TimeoutError) as exc:
            raise _translate(exc, lease_id) from exc

    @property
    def _kv(self) -> KVService:
        if self._closed or self._client.kv is None:
            raise StoreUnavailableError("the etcd store is closed")
        return self._client.kv

    @property
    def _lease(self) -> LeaseService:
        if self._closed or self._client.lease is None:
            raise StoreUnavailableError("the etcd store is closed")
        return self._client.lease

    def _watch_stub(self) -> WatchStub:
        # etcd3aio keeps its channel private; we need it for our own watch stream (see module doc).
        channel = self._client._channel
        if self._closed or channel is None:
            raise StoreUnavailableError("the etcd store is closed")
        return WatchStub(channel)

    async def get(self, key: str) -> KeyValue | None:
        kv = self._kv
        response = await self._call(kv.get(key.encode(), timeout=self._timeout))
        return _kv(response.kvs[0]) if response.kvs else None

    async def range(self, prefix: str, *, revision: int = 0) -> RangeResult:
        kv = self._kv
        key, end = _key_range(prefix)
        try:
            response = await self._call(kv.get(key, range_end=end, revision=revision, timeout=self._timeout))
        except StoreError as exc:
            if revision and "compacted" in _etcd_detail(exc):
                raise CompactedError(revision, 0) from exc
            raise
        # etcd's header carries the current revision even for a read in the past.
        return RangeResult([_kv(pb) for pb in response.kvs], revision or int(response.header.revision))

    async def txn(self, compares: Sequence[Compare], ops: Sequence[Op]) -> TxnResult:
        check_ops(ops)
        kv = self._kv
        success = [
            kv.txn_op_put(op.key.encode(), op.value, lease=op.lease)
            if isinstance(op, Put)
            else kv.txn_op_delete(op.key.encode())
            for op in ops
        ]
        lease = next((op.lease for op in ops if isinstance(op, Put) and op.lease), 0)
        response = await self._call(
            kv.txn([_compare(c) for c in compares], success, timeout=self._timeout), lease
        )
        return TxnResult(bool(response.succeeded), int(response.header.revision))

    def watch(self, prefix: str, *, start_revision: int) -> Watch:
        self._watch_stub()  # refuse at once when closed
        return _EtcdWatch(self, prefix, start_revision)

    async def compact(self, revision: int) -> None:
        kv = self._kv
        try:
            await self._call(kv.compact(revision, physical=True, timeout=self._timeout))
        except StoreError as exc:
            detail = _etcd_detail(exc)
            if "future revision" in detail:
                current = await self.range("\0")
                await self.compact(current.revision)
            elif "compacted" not in detail:  # already compacted that far: nothing to do
                raise

    async def grant_lease(self, ttl: int) -> Lease:
        if ttl < 1:
            raise ValueError(f"lease ttl must be at least 1 s, got {ttl}")
        lease = self._lease
        response = await self._call(lease.grant(ttl, timeout=self._timeout))
        if response.error:
            raise StoreError(f"etcd refused a lease: {response.error}")
        return Lease(int(response.ID), int(response.TTL))

    async def keepalive(self, lease_id: int) -> int:
        lease = self._lease
        call = lease.keep_alive(lease_id)
        try:
            async with asyncio.timeout(self._timeout):
                async for response in call:
                    if response.TTL <= 0:
                        raise LeaseNotFoundError(lease_id)
                    return int(response.TTL)
        except (grpc.aio.AioRpcError, TimeoutError) as exc:
            raise _translate(exc, lease_id) from exc
        finally:
            call.cancel()
        raise StoreUnavailableError("etcd closed the keepalive stream without an answer")

    async def revoke_lease(self, lease_id: int) -> None:
        lease = self._lease
        await self._call(lease.revoke(lease_id, timeout=self._timeout), lease_id)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            await self._client.close()
