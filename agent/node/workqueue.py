"""Keys waiting to be reconciled, in the manner of controller-runtime's work queue: each key at
most once (adding it again only moves it earlier), `add_after` for a requeue at a later time, and
a per-key exponential back-off for keys whose reconcile raised. No clock and no asyncio here: the
caller passes the time, so the queue is tested without waiting."""

from __future__ import annotations

import heapq
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

FAILURE_BACKOFF_MIN = 0.5
FAILURE_BACKOFF_MAX = 60.0


class WorkQueue(Generic[K]):
    def __init__(
        self, backoff_min: float = FAILURE_BACKOFF_MIN, backoff_max: float = FAILURE_BACKOFF_MAX
    ) -> None:
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self._due: dict[K, float] = {}
        self._heap: list[tuple[float, int, K]] = []  # lazy: an entry counts while it matches _due
        self._seq = 0
        self._failures: dict[K, int] = {}

    def add(self, key: K, now: float) -> None:
        self.add_after(key, 0.0, now)

    def add_after(self, key: K, delay: float, now: float) -> None:
        at = now + max(0.0, delay)
        if self._due.get(key, float("inf")) <= at:
            return
        self._due[key] = at
        self._seq += 1
        heapq.heappush(self._heap, (at, self._seq, key))

    def failed(self, key: K, now: float) -> float:
        """`key`'s reconcile raised: requeues it after its next back-off, which it returns."""
        n = self._failures.get(key, 0)
        self._failures[key] = n + 1
        delay = min(self.backoff_max, self.backoff_min * 2.0 ** min(n, 30))
        self.discard(key)
        self.add_after(key, delay, now)
        return delay

    def forget(self, key: K) -> None:
        """`key` reconciled without raising: its back-off starts over."""
        self._failures.pop(key, None)

    def failures(self, key: K) -> int:
        return self._failures.get(key, 0)

    def discard(self, key: K) -> None:
        self._due.pop(key, None)

    def pop_due(self, now: float) -> list[K]:
        """The keys due at `now`, earliest first; they leave the queue."""
        out: list[K] = []
        while self._heap and self._heap[0][0] <= now:
            at, _, key = heapq.heappop(self._heap)
            if self._due.get(key) == at:
                del self._due[key]
                out.append(key)
        return out

    def next_due(self) -> float | None:
        while self._heap and self._due.get(self._heap[0][2]) != self._heap[0][0]:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def __contains__(self, key: object) -> bool:
        return key in self._due

    def __len__(self) -> int:
        return len(self._due)
