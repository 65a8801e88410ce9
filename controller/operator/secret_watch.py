"""Watches of the Kubernetes Secrets ExternalGateways reference, so that editing one rotates the
PSK at once rather than on the next resync (`psk.PskSync` keeps the references).

One watch per referenced Secret, in the operator's Secret namespace, with the field selector
``metadata.name=NAME``: the API server sends this operator the events of those Secrets only, as
kubelet watches the Secrets its pods mount. Not a kopf handler: kopf watches a resource across
the operator's whole scope (here cluster-wide, for the cluster-scoped CRDs), which would stream
every Secret of every namespace, data included, to the operator and need a ClusterRole on
Secrets. An event carries no more than a wake-up: the data is dropped where the event is parsed
and the value read again through `PskSync`, which writes only when it changed; an event naming
another Secret (a server that ignores the selector) is dropped unread. The stream ends at the
server's timeout or a failure and is opened again; its first events (the Secret as it is) re-sync
what changed meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, Protocol

log = logging.getLogger(__name__)

RETRY_SECONDS = 5.0  # after a failed or refused watch
REOPEN_SECONDS = 1.0  # after a stream the server ended: never a tight loop on a closing server
SERVER_TIMEOUT_SECONDS = 300  # the API server ends each watch after this; it is then reopened
CHANGES = frozenset({"ADDED", "MODIFIED", "DELETED"})


class SecretEvents(Protocol):
    def changes(self, namespace: str, name: str) -> AsyncIterator[str]:
        """The event types (ADDED, MODIFIED, DELETED) of Secret `name` until the stream ends;
        raises when it cannot be opened or fails."""


class WatchRefused(Exception):
    """An ERROR event (the server's Status; never a Secret's data)."""


class SecretWatcher:
    """One watch task per Secret name `watch` was last given; `on_change(name)` after each event."""

    def __init__(
        self, events: SecretEvents, namespace: str, on_change: Callable[[str], Awaitable[None]]
    ) -> None:
        self.events = events
        self.namespace = namespace
        self.on_change = on_change
        self._tasks: dict[str, asyncio.Task[None]] = {}

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self._tasks)

    def watch(self, names: Iterable[str]) -> None:
        """Follow exactly `names` from now on (called from the event loop)."""
        wanted = set(names)
        for name in [n for n in self._tasks if n not in wanted]:
            self._tasks.pop(name).cancel()
            log.info("Secret %s/%s: no ExternalGateway references it; watch stopped", self.namespace, name)
        for name in sorted(wanted - self._tasks.keys()):
            self._tasks[name] = asyncio.get_running_loop().create_task(
                self._follow(name), name=f"secret-watch-{name}"
            )
            log.info("Secret %s/%s: watched for ExternalGateway PSK rotation", self.namespace, name)

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _follow(self, name: str) -> None:
        where = f"Secret {self.namespace}/{name}"
        while True:
            try:
                async for kind in self.events.changes(self.namespace, name):
                    log.debug("%s: %s", where, kind)
                    await self.on_change(name)
                delay = REOPEN_SECONDS
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the API server away, a refused watch: keep trying
                log.warning("%s: watch failed (%s); again in %.0f s", where, _why(exc), RETRY_SECONDS)
                delay = RETRY_SECONDS
            await asyncio.sleep(delay)


def _why(exc: Exception) -> str:
    """The exception's type and HTTP status, or the Status's reason of an ERROR event: never
    its text otherwise (an ApiException's text holds the response body)."""
    if isinstance(exc, WatchRefused):
        return f"refused: {exc}"
    status = getattr(exc, "status", None)
    return f"{type(exc).__name__} {status}" if isinstance(status, int) else type(exc).__name__


class KubernetesSecretWatch:
    """`SecretEvents` over the official client: its blocking stream is read in a daemon thread
    (a pending read must not hold the operator's exit) and shut down when the consumer stops."""

    def __init__(self, api_client: Any, server_timeout: int = SERVER_TIMEOUT_SECONDS) -> None:
        from kubernetes import client

        self._api = client.CoreV1Api(api_client)
        self._server_timeout = server_timeout

    async def changes(self, namespace: str, name: str) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str | BaseException | None] = asyncio.Queue()
        stopped = threading.Event()
        responses: list[Any] = []

        def post(item: str | BaseException | None) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(queue.put_nowait, item)

        def pump() -> None:
            try:
                response: Any = self._api.list_namespaced_secret(
                    namespace,
                    field_selector=f"metadata.name={name}",
                    watch=True,
                    timeout_seconds=self._server_timeout,
                    _preload_content=False,
                )
                responses.append(response)
                if stopped.is_set():
                    response.shutdown()
                    response.close()
                    return
                for kind in _event_types(_lines(response), name):
                    post(kind)
                post(None)
            except BaseException as exc:
                if not stopped.is_set():
                    post(exc)

        threading.Thread(target=pump, name=f"secret-watch-{name}", daemon=True).start()
        try:
            while True:
                item = await queue.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stopped.set()
            for response in responses:
                with contextlib.suppress(Exception):
                    response.shutdown()  # wakes the thread's pending read (urllib3 >= 2.3)
                with contextlib.suppress(Exception):
                    response.close()  # and ends the stream at the server: not back to the pool


def _lines(response: Any) -> Iterable[str]:
    from kubernetes.watch.watch import iter_resp_lines

    lines: Iterable[str] = iter_resp_lines(response)  # type: ignore[no-untyped-call]
    return lines


def _event_types(lines: Iterable[str], name: str) -> Iterable[str]:
    """The type of each event on Secret `name`; the objects, data included, are dropped here."""
    for line in lines:
        if not line.strip():
            continue
        event = json.loads(line)
        kind = str(event.get("type", ""))
        obj = event.get("object") or {}
        if kind == "ERROR":  # a Status: its reason and code say why (410 Gone: reopen)
            raise WatchRefused(f"{obj.get('code', '')} {obj.get('reason', '')}".strip())
        named = (obj.get("metadata") or {}).get("name")
        del event, obj
        if kind in CHANGES and named == name:
            yield kind
