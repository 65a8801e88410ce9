"""An asyncio loop in a thread that has joined a lab namespace.

A network namespace is per thread on Linux, so setns(CLONE_NEWNET) in a fresh thread moves only
that thread: sockets opened by coroutines on its loop live in the lab host, while pytest's own
thread stays where it was. The thread ends with the loop, so the switch cannot leak into a pool."""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

CLONE_NEWNET = 0x40000000
T = TypeVar("T")
_libc = ctypes.CDLL(None, use_errno=True)


class NetnsLoop:
    def __init__(self, ns: str) -> None:
        self.ns = ns
        self.loop = asyncio.new_event_loop()
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._main, args=(ready,), name=f"netns-{ns}", daemon=True)
        self._thread.start()
        ready.result(timeout=10)

    def _main(self, ready: concurrent.futures.Future[None]) -> None:
        try:
            fd = os.open(f"/run/netns/{self.ns}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({self.ns}): {os.strerror(err)}")
            finally:
                os.close(fd)
        except BaseException as exc:
            ready.set_exception(exc)
            return
        asyncio.set_event_loop(self.loop)
        ready.set_result(None)
        self.loop.run_forever()
        self.loop.close()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
