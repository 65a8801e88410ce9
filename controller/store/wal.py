"""The embedded store's file: a snapshot line followed by one line per record, each CRC-guarded.

Line format: `<crc32 of the JSON, 8 hex digits> <JSON>\n`. Appends are fsync'ed before the
caller applies the record. A crash can leave a partial last line: it never reached fsync, so no
caller was told it succeeded, and `load` drops it. Damage anywhere else is refused loudly.
Compaction writes a new file next to the old one, fsyncs it and renames it over the old one, so
a crash leaves either the old or the new file, never a mix.
"""

from __future__ import annotations

import fcntl
import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshsec.controller.store.errors import StoreCorruptError, StoreUnavailableError

Record = dict[str, Any]


@dataclass
class Loaded:
    snapshot: Record | None
    records: list[Record]
    torn_bytes: int  # bytes dropped from the end


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

    def load(self) -> Loaded:
        """Read the file, truncating a torn final record; then open it for appending."""
        data = self.path.read_bytes() if self.path.exists() else b""
        lines = data.split(b"\n")
        # The piece after the last newline is empty for an intact file, else a torn write.
        complete, tail = lines[:-1], lines[-1]
        records: list[Record] = []
        good_end = 0
        for number, line in enumerate(complete, start=1):
            try:
                records.append(_decode(line))
            except ValueError as exc:
                if number != len(complete) or tail:
                    raise StoreCorruptError(str(self.path), number, f"unreadable record ({exc})") from None
                break  # a damaged last line: the write never completed
            good_end += len(line) + 1
        torn = len(data) - good_end
        if torn:
            with open(self.path, "r+b") as f:
                f.truncate(good_end)
                os.fsync(f.fileno())
        snapshot = None
        if records and "snapshot" in records[0]:
            snapshot = records.pop(0)["snapshot"]
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        return Loaded(snapshot, records, torn)

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
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1
