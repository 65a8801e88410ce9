"""Inbound ESP as proof of life (RFC 7296 2.4: a liveness check is needed only when nothing came
from the peer). When half an IKE SA's DPD delay passed without a sign of life (nor a check of
its counters) its inbound CHILD_SA counters are read; when they moved the engine hears
`traffic_seen`, which postpones its DPD probe. While traffic flows that is twice per DPD delay,
never per packet. Pure scheduling; the adapter reads the counters."""

from __future__ import annotations

from collections.abc import Iterable

SCAN_MAX = 0.5  # seconds: at most this long until a new IKE SA's first counter read is planned
SCAN_MIN = 0.05  # seconds: the shortest wait between two scans


def check_due(dpd_delay: float, last_inbound: float, checked_at: float) -> float | None:
    """When the SA's counters are next worth reading; None without DPD."""
    if dpd_delay <= 0:
        return None
    return max(last_inbound, checked_at) + dpd_delay / 2


def next_scan(now: float, due: Iterable[float]) -> float:
    """Seconds until the earliest of `due` (times at which an SA is due), at most SCAN_MAX."""
    return max(SCAN_MIN, min([now + SCAN_MAX, *due]) - now)


def moved(before: int, after: int) -> bool:
    """A packet counter moved: something arrived (a counter that went back is a new SA)."""
    return before != after
