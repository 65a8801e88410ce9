"""Traffic totals per (tunnel, CHILD_SA name) that survive rekeys.

A data-plane SA counts its own bytes and packets from zero, and every rekey (or a changed
configuration, or a reinstall after the peer moved) replaces it with a fresh one. The ledger
keeps what the SAs already removed carried (`retired`) and the last reading of each live one,
so the total of a CHILD_SA name is monotonic: live readings plus retired ones. An SA the data
plane dropped on its own (a hard lifetime) can no longer be read; it counts with its last
reading, so a total may miss the bytes since that reading but never goes down.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

TrafficOwner = tuple[str, str]  # (tunnel name, CHILD_SA name)


@dataclass(slots=True)
class Traffic:
    bytes_in: int = 0
    packets_in: int = 0
    bytes_out: int = 0
    packets_out: int = 0

    def add(self, other: Traffic) -> None:
        self.bytes_in += other.bytes_in
        self.packets_in += other.packets_in
        self.bytes_out += other.bytes_out
        self.packets_out += other.packets_out

    def copy(self) -> Traffic:
        return Traffic(self.bytes_in, self.packets_in, self.bytes_out, self.packets_out)


class TrafficLedger:
    """Keyed by any hashable id of an installed pair (the installer uses its ChildKey)."""

    def __init__(self) -> None:
        self.retired: dict[TrafficOwner, Traffic] = {}
        self._owners: dict[object, TrafficOwner] = {}
        self._last: dict[object, Traffic] = {}

    def installed(self, pair: object, owner: TrafficOwner) -> None:
        self._owners[pair] = owner
        self._last[pair] = Traffic()

    def read(self, pair: object, traffic: Traffic) -> None:
        if pair in self._owners:
            self._last[pair] = traffic

    def removed(self, pair: object, final: Traffic | None) -> None:
        """`final`: the pair's reading just before removal, None if it could not be read."""
        owner = self._owners.pop(pair, None)
        last = self._last.pop(pair, None)
        if owner is None:
            return
        self.retired.setdefault(owner, Traffic()).add(final or last or Traffic())

    def moved(self, old: object, new: object) -> None:
        """The pair is known by another id now (it moved to other addresses); the data plane
        carried its counters over, so nothing retires."""
        if old == new or old not in self._owners:
            return
        self._owners[new] = self._owners.pop(old)
        self._last[new] = self._last.pop(old, Traffic())

    def owner(self, pair: object) -> TrafficOwner | None:
        return self._owners.get(pair)

    def totals(self, readings: Iterable[tuple[object, Traffic | None]]) -> dict[TrafficOwner, Traffic]:
        """Retired plus live: `readings` are fresh readings of live pairs (None: unreadable now,
        its last reading counts). A pair removed since it was read is skipped: its final
        reading is in `retired` already."""
        out = {owner: t.copy() for owner, t in self.retired.items()}
        for pair, fresh in readings:
            owner = self._owners.get(pair)
            if owner is None:
                continue
            reading = fresh or self._last.get(pair) or Traffic()
            out.setdefault(owner, Traffic()).add(reading)
        return out

    def retain(self, tunnels: Collection[str]) -> None:
        """Forgets retired totals of tunnels no longer desired (bounded memory and series)."""
        live = {owner[0] for owner in self._owners.values()}
        for owner in [o for o in self.retired if o[0] not in tunnels and o[0] not in live]:
            del self.retired[owner]
