"""Embedded store only: what must survive a restart or a crash of the controller process."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from meshsec.controller.store import (
    CompactedError,
    EmbeddedStore,
    EventType,
    ManualClock,
    StoreCorruptError,
    StoreUnavailableError,
)
from meshsec.controller.store.wal import encode


async def test_state_revisions_and_leases_survive_reopen(tmp_path: Path) -> None:
    path, clock = tmp_path / "s.log", ManualClock()
    async with await EmbeddedStore.open(path, clock=clock) as store:
        await store.put("/r/a", b"1")
        created = await store.put("/r/b", b"2")
        await store.put("/r/b", b"3")
        await store.delete("/r/a")
        lease = await store.grant_lease(5)
        await store.put("/r/leased", b"x", lease=lease.id)
        listing = await store.range("/")
    async with await EmbeddedStore.open(path, clock=clock) as store:
        again = await store.range("/")
        assert again == listing
        b = await store.get("/r/b")
        assert b is not None and (b.create_revision, b.version) == (created, 2)
        assert await store.put("/r/c", b"4") == listing.revision + 1
        assert (await store.grant_lease(1)).id != lease.id
        # A reopened store renews leases for a full TTL, then expires them as usual.
        clock.advance(4)
        assert await store.keepalive(lease.id) == 5
        clock.advance(6)
        await _until_gone(store, "/r/leased")


async def _until_gone(store: EmbeddedStore, key: str) -> None:
    for _ in range(200):
        if await store.get(key) is None:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{key} still present")


async def test_torn_last_record_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "s.log"
    async with await EmbeddedStore.open(path) as store:
        await store.put("/k", b"kept")
        revision = store.revision
    intact = path.read_bytes()
    torn = encode({"rev": revision + 1, "ev": [{"k": "/k", "v": "bG9zdA==", "l": 0}]})
    path.write_bytes(intact + torn[: len(torn) // 2])  # the crash hit mid-write
    async with await EmbeddedStore.open(path) as store:
        kv = await store.get("/k")
        assert kv is not None and kv.value == b"kept" and store.revision == revision
        assert path.read_bytes() == intact  # cut back, so the next append starts on a clean line
        await store.put("/k", b"after")
    async with await EmbeddedStore.open(path) as store:
        kv = await store.get("/k")
        assert kv is not None and kv.value == b"after"


async def test_garbled_complete_last_line_is_also_a_torn_write(tmp_path: Path) -> None:
    path = tmp_path / "s.log"
    async with await EmbeddedStore.open(path) as store:
        await store.put("/k", b"kept")
    path.write_bytes(path.read_bytes() + b"\x00\x00\x00\x00\n")  # zero-filled block after power loss
    async with await EmbeddedStore.open(path) as store:
        assert (await store.get("/k")) is not None


async def test_damage_before_the_end_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.log"
    async with await EmbeddedStore.open(path) as store:
        for i in range(3):
            await store.put(f"/k{i}", b"v")
    intact = path.read_bytes()
    lines = intact.split(b"\n")
    lines[1] = lines[1].replace(b"/k1", b"/kX")  # checksum no longer matches
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(StoreCorruptError, match=r"s\.log:2: unreadable record \(checksum mismatch\)"):
        await EmbeddedStore.open(path)
    assert path.read_bytes() != intact  # refused, not "repaired" by truncation
    path.write_bytes(intact)
    async with await EmbeddedStore.open(path) as store:  # and the failed open let go of the file
        assert len((await store.range("/")).kvs) == 3


async def test_damage_before_the_end_starts_only_with_repair_from_what_verifies(tmp_path: Path) -> None:
    path = tmp_path / "s.log"
    async with await EmbeddedStore.open(path) as store:
        for i in range(3):
            await store.put(f"/k{i}", b"v")
    lines = path.read_bytes().split(b"\n")
    lines[1] = lines[1].replace(b"/k1", b"/kX")
    damaged = b"\n".join(lines)
    path.write_bytes(damaged)
    with pytest.raises(StoreCorruptError, match=r"revisions 4\.\.4 verify but follow the damage"):
        await EmbeddedStore.open(path)
    async with await EmbeddedStore.open(path, repair=True) as store:
        assert [kv.key for kv in (await store.range("/")).kvs] == ["/k0"]
        await store.put("/k1", b"again")
    assert [p.read_bytes() for p in tmp_path.glob("s.log.damaged-*")] == [damaged]
    async with await EmbeddedStore.open(path) as store:  # repaired for good: no flag needed again
        assert [kv.key for kv in (await store.range("/")).kvs] == ["/k0", "/k1"]


async def test_final_record_missing_only_its_newline_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "s.log"
    async with await EmbeddedStore.open(path) as store:
        await store.put("/a", b"1")
        await store.put("/b", b"2")
    intact = path.read_bytes()
    path.write_bytes(intact[:-1])
    async with await EmbeddedStore.open(path) as store:
        assert [kv.key for kv in (await store.range("/")).kvs] == ["/a", "/b"]
        assert path.read_bytes() == intact  # the newline put back, so the next append starts clean
        await store.put("/c", b"3")
    async with await EmbeddedStore.open(path) as store:
        assert len((await store.range("/")).kvs) == 3


@pytest.mark.parametrize("cut", [400, "last line"])
async def test_lost_acknowledged_records_refuse_to_open_and_name_the_revisions(
    tmp_path: Path, cut: int | str
) -> None:
    path = tmp_path / "s.log"
    async with await EmbeddedStore.open(path) as store:
        for i in range(6):
            await store.put(f"/site/s{i}", b"x" * 150)
        last = store.revision
    intact = path.read_bytes()
    end = len(intact) - 400 if isinstance(cut, int) else intact.rstrip(b"\n").rfind(b"\n") + 1
    path.write_bytes(intact[:end])
    kept = intact[:end].count(b"\n")  # records that survive whole: revisions 2..kept+1
    with pytest.raises(StoreCorruptError, match=rf"acknowledged revisions {kept + 2}\.\.{last} are missing"):
        await EmbeddedStore.open(path)
    assert path.read_bytes() == intact[:end]  # left as found
    async with await EmbeddedStore.open(path, repair=True) as store:
        assert store.revision == kept + 1
        assert [kv.key for kv in (await store.range("/")).kvs] == [f"/site/s{i}" for i in range(kept)]


async def test_torn_end_of_a_log_without_acked_mark_cannot_be_judged_and_is_refused(tmp_path: Path) -> None:
    """A log from before `.acked` existed: nothing says whether its torn end was acknowledged."""
    path = tmp_path / "s.log"
    async with await EmbeddedStore.open(path) as store:
        await store.put("/k", b"kept")
    (tmp_path / "s.log.acked").unlink()
    path.write_bytes(path.read_bytes() + b'0123abcd {"rev": 3')
    with pytest.raises(StoreCorruptError, match=r"no s\.log\.acked"):
        await EmbeddedStore.open(path)
    async with await EmbeddedStore.open(path, repair=True) as store:
        assert (await store.get("/k")) is not None


async def test_compaction_keeps_state_and_watchable_history_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "s.log"
    async with await EmbeddedStore.open(path) as store:
        first = await store.put("/k", b"1")
        lease = await store.grant_lease(30)
        await store.put("/leased", b"l", lease=lease.id)
        middle = await store.put("/k", b"2")
        await store.put("/k", b"3")
        await store.compact(middle)
        size_after_compaction = path.stat().st_size
    async with await EmbeddedStore.open(path) as store:
        with pytest.raises(CompactedError):
            async with store.watch("/", start_revision=first) as watch:
                await watch.__anext__()
        async with store.watch("/k", start_revision=middle) as watch:
            assert [(await watch.__anext__()).value for _ in range(2)] == [b"2", b"3"]
        leased = await store.get("/leased")
        assert leased is not None and leased.lease == lease.id
        await store.revoke_lease(lease.id)
        assert await store.get("/leased") is None
    assert not (tmp_path / "s.log.compact").exists()
    assert size_after_compaction < 1000


async def test_log_compacts_itself_and_stays_small(tmp_path: Path) -> None:
    path = tmp_path / "s.log"
    async with await EmbeddedStore.open(path, compact_after_records=50, retain_revisions=10) as store:
        for i in range(500):
            await store.put("/counter", str(i).encode())
        assert path.read_bytes().count(b"\n") <= 51
        with pytest.raises(CompactedError):
            async with store.watch("/", start_revision=store.revision - 60) as watch:
                await watch.__anext__()
    async with await EmbeddedStore.open(path) as store:
        kv = await store.get("/counter")
        assert kv is not None and kv.value == b"499" and kv.version == 500


async def test_second_open_of_the_same_file_is_refused(tmp_path: Path) -> None:
    async with await EmbeddedStore.open(tmp_path / "s.log"):
        with pytest.raises(StoreUnavailableError, match="in use"):
            await EmbeddedStore.open(tmp_path / "s.log")


async def test_closed_store_refuses_work_and_ends_watches(tmp_path: Path) -> None:
    store = await EmbeddedStore.open(tmp_path / "s.log")
    watch = store.watch("/", start_revision=1)
    await store.close()
    with pytest.raises(StoreUnavailableError):
        await watch.__anext__()
    with pytest.raises(StoreUnavailableError):
        await store.put("/k", b"v")


_WRITER = """
import asyncio, sys
from meshsec.controller.store import EmbeddedStore
async def main():
    store = await EmbeddedStore.open(sys.argv[1])
    i = 0
    while True:
        await store.put(f"/n/{i:06d}", b"x" * (i % 300))
        print(i, flush=True)  # acknowledged: the record is on disk
        i += 1
asyncio.run(main())
"""


async def test_every_acknowledged_write_survives_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "s.log"
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    acknowledged = -1
    try:
        assert writer.stdout is not None
        for line in writer.stdout:
            acknowledged = int(line)
            if acknowledged >= 150:
                break
    finally:
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
    async with await EmbeddedStore.open(path) as store:
        keys = [kv.key for kv in (await store.range("/n/")).kvs]
        assert len(keys) >= acknowledged + 1
        assert keys == [f"/n/{i:06d}" for i in range(len(keys))]  # no holes, nothing invented
        async with store.watch("/n/", start_revision=2) as watch:
            first = await watch.__anext__()
            assert (first.type, first.key) == (EventType.PUT, "/n/000000")


async def test_cancelled_writers_leave_memory_and_file_in_agreement(tmp_path: Path) -> None:
    """A caller cancelled mid-write (a timeout, a shutdown) must not split memory from the log."""
    path = tmp_path / "s.log"
    async with await EmbeddedStore.open(path) as store:
        for i in range(60):
            writer = asyncio.create_task(store.put(f"/c/{i}", b"v"))
            for _ in range(i % 4):
                await asyncio.sleep(0)
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
            await store.put("/c/after", str(i).encode())
        live = await store.range("/")
    async with await EmbeddedStore.open(path) as store:
        assert await store.range("/") == live
