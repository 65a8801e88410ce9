"""The embedded store's file: a snapshot line followed by one line per record, each CRC-guarded.

Line format: `<crc32 of the JSON, 8 hex digits> <JSON>\n`. Appends are fsync'ed before the
caller applies the record. Compaction writes a new file next to the old one, fsyncs it and renames
it over the old one, so a crash leaves either the old or the new file, never a mix.

A damaged end of the log looks the same whether it is a write that was cut short by a crash (its
caller never heard back, nothing is lost) or acknowledged records damaged afterwards. What tells
them apart is `<path>.acked`, the position (revision, next lease id) of the last record whose
append returned, rewritten in place after every fsync. It is not fsync'ed itself: a process
crash cannot lose it (the page cache survives), a power cut can only leave an older position, so
it never claims more than the log held. `load` keeps every record that verifies (a final record
that lost only its newline included) and then:

- nothing missing up to the acknowledged position: an unverifiable remainder is a torn write that
  was never acknowledged; it is cut off (`Loaded.torn_bytes`).
- acknowledged records missing (cut off, garbled), damage before the last line, or no `.acked`
  to decide by: `StoreCorruptError` naming the lost revisions, file untouched; `repair=True`
  keeps a copy (`<path>.damaged-<unix time>`), cuts the log back to the records that verify
  without a gap and carries on from there.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from meshsec.controller.store.errors import StoreCorruptError, StoreUnavailableError

log = logging.getLogger(__name__)
Record = dict[str, Any]


class Position(NamedTuple):
    """How far a log reaches: its revision and the next lease id (grants have no revision)."""

    revision: int
    next_lease: int

    def after(self, record: Record) -> Position:
        if "snapshot" in record:
            snap = record["snapshot"]
            return Position(int(snap["rev"]), int(snap["next_lease"]))
        return Position(
            max(self.revision, int(record.get("rev", 0))),
            max(self.next_lease, int(record["grant"]) + 1 if "grant" in record else 0),
        )

    def covers(self, other: Position) -> bool:
        return self.revision >= other.revision and self.next_lease >= other.next_lease


EMPTY = Position(1, 1)  # an empty store (mvcc.Mvcc's starting point)


@dataclass
class Loaded:
    snapshot: Record | None
    records: list[Record]
    torn_bytes: int  # bytes of a never-acknowledged write dropped from the end
    repaired: str = ""  # what `repair` gave up, for the operator ("" when nothing)


def encode(record: Record) -> bytes:
    body = json.dumps(record, separators=(",", ":"), sort_keys=True).encode()
    return b"%08x %s\n" % (zlib.crc32(body), body)


def _decode(line: bytes) -> Record:
    crc_text, sep, body = line.partition(b" ")
    if not sep or len(crc_text) != 8:
        raise ValueError("no checksum")
    if int(crc_text, 16) != zlib.crc32(body):
        raise ValueError("checksum mismatch")
    record = json.loads(body)
    if not isinstance(record, dict):
        raise ValueError("record is not an object")
    return record


def _lost(intact: Position, acked: Position | None, stranded: list[int]) -> str:
    """The acknowledged data a cut back to `intact` gives up, in words."""
    parts = []
    if acked is not None and acked.revision > intact.revision:
        parts.append(f"acknowledged revisions {intact.revision + 1}..{acked.revision} are missing")
    if acked is not None and acked.next_lease > intact.next_lease:
        parts.append(f"acknowledged lease grants {intact.next_lease}..{acked.next_lease - 1} are missing")
    if stranded:
        parts.append(f"records of revisions {stranded[0]}..{stranded[-1]} verify but follow the damage")
    return "; ".join(parts)


class Wal:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock_fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise StoreUnavailableError(f"{path} is in use by another process") from None
        self._fd: int | None = None
        self._acked_fd = -1
        self._position = EMPTY

    def load(self, *, repair: bool = False) -> Loaded:
        """Read the file and settle a damaged end (module docstring); then open it for appending."""
        data = self.path.read_bytes() if self.path.exists() else b""
        acked = self._read_acked(fresh=not data)
        lines = data.split(b"\n")
        if not lines[-1]:
            lines.pop()  # the empty piece after the final newline of an intact file
        records: list[Record] = []
        position = EMPTY
        good_end = 0
        damaged: tuple[int, str] | None = None  # (line number, why)
        for number, line in enumerate(lines, start=1):
            try:
                record = _decode(line)
            except ValueError as exc:
                damaged = (number, f"unreadable record ({exc})")
                break
            records.append(record)
            position = position.after(record)
            good_end = min(good_end + len(line) + 1, len(data))
        if damaged is None and good_end == len(data) and (acked is None or position.covers(acked)):
            if data and not data.endswith(b"\n"):
                self._write_at(len(data), b"\n")  # a final record that lost only its newline
            return self._opened(records, 0, position)
        stranded = []
        if damaged is not None:
            for line in lines[damaged[0] :]:
                try:
                    stranded.append(int(_decode(line).get("rev", 0)))
                except ValueError:
                    continue
            stranded = sorted(r for r in stranded if r)
        lost = _lost(position, acked, stranded)
        torn = damaged is not None and damaged[0] == len(lines) and acked is not None and not lost
        if torn:
            log.warning(
                "%s: dropped %d bytes after revision %d: a write the crash cut short, never acknowledged",
                self.path,
                len(data) - good_end,
                position.revision,
            )
            self._truncate(good_end)
            return self._opened(records, len(data) - good_end, position)
        number, why = damaged if damaged is not None else (len(lines) + 1, "log ends early")
        if acked is None:
            lost = lost or f"no {self._acked_path.name} to tell an unacknowledged torn write from lost data"
        problem = f"{why}; {lost}; the log verifies up to revision {position.revision}"
        if not repair:
            raise StoreCorruptError(
                str(self.path), number, f"{problem}. Start once with --repair-store to continue from there"
            )
        backup = self.path.with_name(f"{self.path.name}.damaged-{int(time.time())}")
        shutil.copyfile(self.path, backup)
        self._truncate(good_end)
        if good_end and data[good_end - 1 : good_end] != b"\n":
            self._write_at(good_end, b"\n")
        repaired = f"{self.path}:{number}: {problem}; cut back to it, the damaged file is kept as {backup}"
        log.error("store repaired: %s", repaired)
        loaded = self._opened(records, 0, position)
        loaded.repaired = repaired
        return loaded

    def _opened(self, records: list[Record], torn_bytes: int, position: Position) -> Loaded:
        snapshot = None
        if records and "snapshot" in records[0]:
            snapshot = records.pop(0)["snapshot"]
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._position = position
        self._acknowledge()
        return Loaded(snapshot, records, torn_bytes)

    def _truncate(self, size: int) -> None:
        with open(self.path, "r+b") as f:
            f.truncate(size)
            os.fsync(f.fileno())

    def _write_at(self, offset: int, data: bytes) -> None:
        with open(self.path, "r+b") as f:
            f.seek(offset)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    @property
    def _acked_path(self) -> Path:
        return self.path.with_name(f"{self.path.name}.acked")

    def _read_acked(self, *, fresh: bool) -> Position | None:
        """The last acknowledged position; EMPTY for a new store, None when unknown (a log written
        before `.acked` existed, or the file is unreadable)."""
        try:
            revision, next_lease = self._acked_path.read_text().split()
            return Position(int(revision), int(next_lease))
        except FileNotFoundError:
            return EMPTY if fresh else None
        except (OSError, ValueError):
            log.warning("%s is unreadable; the end of the log cannot be checked against it", self._acked_path)
            return None

    def _acknowledge(self) -> None:
        """Record `_position` as acknowledged: fixed width, rewritten in place (no fsync, see above)."""
        text = b"%020d %020d\n" % self._position
        try:
            if self._acked_fd < 0:
                self._acked_fd = os.open(self._acked_path, os.O_WRONLY | os.O_CREAT, 0o600)
            if os.pwrite(self._acked_fd, text, 0) != len(text):
                raise OSError(f"short write to {self._acked_path}")
        except OSError:
            # The record itself is durable; a stale mark only weakens the next start's check.
            log.exception("could not update %s", self._acked_path)

    def append(self, record: Record) -> None:
        if self._fd is None:
            raise StoreUnavailableError(f"{self.path} is closed")
        line = encode(record)
        end = os.lseek(self._fd, 0, os.SEEK_END)
        try:
            if os.write(self._fd, line) != len(line):
                raise OSError(f"short write to {self.path}")
            os.fsync(self._fd)
        except OSError:
            # Cut the partial record off so the next append does not bury it mid-file.
            os.ftruncate(self._fd, end)
            raise
        self._position = self._position.after(record)
        self._acknowledge()

    def rewrite(self, snapshot: Record, records: list[Record]) -> None:
        """Replace the file with `snapshot` plus `records`, atomically."""
        tmp = self.path.with_name(self.path.name + ".compact")
        with open(tmp, "wb") as f:
            f.write(encode({"snapshot": snapshot}))
            for record in records:
                f.write(encode(record))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        # Switch to the new file before anything else can fail: appends to the old, now unlinked,
        # inode would be lost.
        if self._fd is not None:
            os.close(self._fd)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def close(self) -> None:
        if self._acked_fd >= 0:
            os.close(self._acked_fd)
            self._acked_fd = -1
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1
