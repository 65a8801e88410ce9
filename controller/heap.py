"""When the controller process runs Python's cycle collector.

The controller's heap is mostly long-lived: resources, the mesh index, one gRPC stream per agent,
each node's delta history. CPython's generational collector rescans the survivors of young
collections in the older generations, so with 10k agents connected a join in a full mesh paid
~70 ms of collection on average and one join in four a ~400 ms generation-1 pass over objects
nobody was going to free (measured with gc.callbacks on bench/controller_scale.py). Reference
counting frees nearly everything the controller drops: a full collection after 10k agents
connected found 2,660 unreachable objects among 560k.

So the automatic collector is off and this task runs a full collection when it pays: once the
heap (pymalloc's allocated blocks, cheap to read) has grown by `growth` since the last one, or
`full_every_s` has passed, and the mesh has not changed (`busy()` false) for `quiet_s`, so the
pause (~350 ms at 10k agents) does not land in the middle of a change being pushed. Under changes
that never pause, a heap grown by `growth` twice over is collected regardless.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class HeapSettings:
    interval_s: float = 1.0
    growth: float = 1.0  # a full collection is due once the heap doubled since the last one
    quiet_s: float = 3.0
    full_every_s: float = 3600.0


class HeapKeeper:
    def __init__(
        self,
        busy: Callable[[], bool],
        settings: HeapSettings = HeapSettings(),
        clock: Callable[[], float] = time.monotonic,
        heap_size: Callable[[], int] = sys.getallocatedblocks,
    ) -> None:
        self._busy = busy
        self._settings = settings
        self._clock = clock
        self._heap_size = heap_size
        self._size_after_full = 0
        self._last_full = 0.0
        self._last_busy = 0.0
        self._was_enabled = True
        self.full_collections = 0

    def start(self) -> None:
        """Collect what start-up left behind, then take over from the automatic collector."""
        self._was_enabled = gc.isenabled()
        gc.disable()
        self._full()

    def stop(self) -> None:
        if self._was_enabled:
            gc.enable()

    def tick(self) -> None:
        """One round of the policy (what `run` does every interval)."""
        s, now = self._settings, self._clock()
        if self._busy():
            self._last_busy = now
        size, base = self._heap_size(), self._size_after_full
        due = size > base * (1 + s.growth) or now - self._last_full >= s.full_every_s
        overdue = size > base * (1 + s.growth) ** 2
        if (due and now - self._last_busy >= s.quiet_s) or overdue:
            self._full()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._settings.interval_s)
            self.tick()

    def _full(self) -> None:
        started = time.process_time()
        unreachable = gc.collect()
        self._size_after_full = self._heap_size()
        self._last_full = self._clock()
        self.full_collections += 1
        log.debug(
            "full collection: %d unreachable objects, heap %d blocks, %.0f ms",
            unreachable,
            self._size_after_full,
            (time.process_time() - started) * 1000,
        )
