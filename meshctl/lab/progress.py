"""Waiting for tunnels with a progress display, bounded in time, naming what is stuck."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TextIO

from meshsec.meshctl.table import paint, use_colour

UP_STATES = ("ESTABLISHED", "REKEYING")


@dataclass(frozen=True)
class WaitResult:
    states: dict[str, str]
    seconds: float

    @property
    def stuck(self) -> dict[str, str]:
        return {name: state for name, state in self.states.items() if state not in UP_STATES}


def wait_for_tunnels(
    poll: Callable[[], Mapping[str, str]],
    timeout: float,
    *,
    stream: TextIO | None = None,
    interval: float = 0.5,
) -> WaitResult:
    """Poll {tunnel label: state} until all are up or ``timeout`` passes."""
    stream = stream or sys.stderr
    start = time.monotonic()
    tty = bool(getattr(stream, "isatty", lambda: False)())
    colour = use_colour(stream)
    last_line = ""
    states: dict[str, str] = {}
    while True:
        states = dict(poll())
        elapsed = time.monotonic() - start
        up = sum(1 for s in states.values() if s in UP_STATES)
        waiting = ", ".join(f"{n} {s}" for n, s in sorted(states.items()) if s not in UP_STATES)
        line = f"  tunnels up {up}/{len(states)}" + (f"  (waiting: {waiting})" if waiting else "")
        if tty:
            text = paint(line[:150], "green" if up == len(states) else "", colour)
            stream.write(f"\r\x1b[2K{text} {elapsed:4.0f}s")
            stream.flush()
        elif line != last_line:
            stream.write(f"{line} [{elapsed:.1f}s]\n")
            stream.flush()
        last_line = line
        if states and up == len(states):
            break
        if elapsed >= timeout:
            break
        time.sleep(interval)
    if tty:
        stream.write("\n")
    return WaitResult(states, time.monotonic() - start)
