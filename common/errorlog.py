"""Rate-limited logging of unexpected exceptions, for the hot paths that must survive them (the
IKE front door, the data plane's packet readers): each distinct exception, by type and the line
that raised it, is logged with its traceback at most once per `interval`; the others are only
counted and the count rides along with the next report. A flood of one bug cannot flood the
log, and no distinct bug goes unseen."""

from __future__ import annotations

import logging
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable

MAX_KINDS = 1024  # distinct (type, location) pairs remembered; a bug has few


class ExceptionLog:
    def __init__(
        self, logger: logging.Logger, interval: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._logger = logger
        self._interval = interval
        self._clock = clock
        self._last: dict[tuple[str, str, int], float] = {}
        self.suppressed: Counter[tuple[str, str, int]] = Counter()

    def report(self, what: str, now: float | None = None) -> bool:
        """Call from an `except` block. `now` for callers that must not read the clock
        (sans-IO code). True if this one was logged."""
        exc = sys.exc_info()[1]
        if exc is None:
            return False
        frames = traceback.extract_tb(exc.__traceback__)
        where = (frames[-1].filename, frames[-1].lineno or 0) if frames else ("?", 0)
        key = (type(exc).__qualname__, *where)
        at = self._clock() if now is None else now
        last = self._last.get(key)
        if last is not None and at - last < self._interval:
            self.suppressed[key] += 1
            return False
        if last is None and len(self._last) >= MAX_KINDS:
            self._last.pop(next(iter(self._last)))
        self._last[key] = at
        skipped = self.suppressed.pop(key, 0)
        more = f" ({skipped} more like it since the last report)" if skipped else ""
        self._logger.error("%s: unexpected %s%s", what, type(exc).__name__, more, exc_info=exc)
        return True
