"""Kubernetes API servers for tests that drive real processes and containers: kmock emulators
(the only Kubernetes API these machines have, docs/kubernetes.md) served over HTTP on 127.0.0.1
from their own thread and event loop, so a synchronous test can block on podman and meshctl
while operators in containers (``--network host``) list and watch them.

Usage::

    with KubeApis(["east", "west"]) as apis:
        apis["east"].declare("v1/nodes", kind="Node")
        apis["east"].create("/api/v1/nodes", {...})
        kubeconfig = apis["east"].kubeconfig(tmp_path / "east.kubeconfig")
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

T = TypeVar("T")
_TIMEOUT = 30.0


class KubeApi:
    """One emulated API server; every method is synchronous and safe from the test's thread."""

    def __init__(self, apis: KubeApis, name: str, emulator: Any, url: str) -> None:
        self.apis = apis
        self.name = name
        self.emulator = emulator
        self.url = url

    def declare(self, resource: str, *, kind: str, namespaced: bool = False, **info: Any) -> None:
        """Make ``resource`` (``v1/nodes``, ``group/version/plural``) discoverable."""
        import kmock

        self.emulator.resources[resource] = kmock.ResourceInfo(kind=kind, namespaced=namespaced, **info)

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        async def call() -> tuple[int, Any]:
            async with self.emulator.request(method, path, json=body) as response:
                text = await response.text()
                try:
                    return response.status, await response.json(content_type=None)
                except ValueError:
                    return response.status, text

        return self.apis.call(call())

    def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        status, got = self.request("POST", path, body)
        assert status < 300, f"POST {path} on {self.name}: {status} {got}"
        return dict(got)

    def delete(self, path: str) -> None:
        status, got = self.request("DELETE", path)
        assert status < 300, f"DELETE {path} on {self.name}: {status} {got}"

    def get(self, path: str) -> dict[str, Any] | None:
        status, got = self.request("GET", path)
        if status == 404:
            return None
        assert status < 300, f"GET {path} on {self.name}: {status} {got}"
        return dict(got)

    def kubeconfig(self, path: Path) -> Path:
        path.write_text(
            "apiVersion: v1\nkind: Config\n"
            f"clusters: [{{name: {self.name}, cluster: {{server: '{self.url}'}}}}]\n"
            "users: [{name: test, user: {}}]\n"
            f"contexts: [{{name: test, context: {{cluster: {self.name}, user: test}}}}]\n"
            "current-context: test\n"
        )
        path.chmod(0o644)
        return path


class KubeApis:
    """Named kmock emulators in one background event loop; stopped (servers closed) on exit."""

    def __init__(self, names: Iterable[str]) -> None:
        self.names = list(names)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="kube-apis", daemon=True)
        self.apis: dict[str, KubeApi] = {}
        self._stack = contextlib.AsyncExitStack()

    def __getitem__(self, name: str) -> KubeApi:
        return self.apis[name]

    def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(_TIMEOUT)

    def __enter__(self) -> KubeApis:
        import kmock

        self.thread.start()

        async def start() -> None:
            for name in self.names:
                emulator = await self._stack.enter_async_context(kmock.KubernetesEmulator())
                server = await self._stack.enter_async_context(kmock.Server(emulator))
                self.apis[name] = KubeApi(self, name, emulator, str(server.url).rstrip("/"))

        try:
            self.call(start())
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        if self.thread.is_alive():
            with contextlib.suppress(Exception):
                self.call(self._stack.aclose())
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
        if not self.loop.is_running():
            self.loop.close()
