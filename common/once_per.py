"""At most once per key per interval: for best-effort reports and events that a peer (or a client
retrying) could otherwise repeat without bound. The table forgets keys once their interval has
passed, so its size is bounded by what can arrive within one interval."""

from __future__ import annotations

from collections.abc import Hashable


class OncePer:
    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._last: dict[Hashable, float] = {}

    def allow(self, key: Hashable, now: float) -> bool:
        """True (and remembered) when `key` was not allowed within the last interval; `now` is
        any monotonic clock the caller keeps using."""
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            return False
        self._last = {k: t for k, t in self._last.items() if now - t < self.interval_s}
        self._last[key] = now
        return True
