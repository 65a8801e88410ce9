"""One contract, two backends: every test runs on the embedded store and on a real etcd."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import pytest

from meshsec.controller.store import (
    CompactedError,
    Compare,
    CompareOp,
    CompareTarget,
    ConflictError,
    Delete,
    Event,
    EventType,
    LeaderElection,
    LeaseNotFoundError,
    Put,
    Store,
    StoreError,
    Watch,
)

if TYPE_CHECKING:  # the fixture's type; conftest modules are not imported by name
    from conftest import StoreKit

# etcd ends an expired lease up to ~0.5 s after its TTL; the embedded store as soon as the clock says so.
SETTLE = 5.0


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = SETTLE) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def take(watch: Watch, count: int, timeout: float = SETTLE) -> list[Event]:
    return [await asyncio.wait_for(watch.__anext__(), timeout) for _ in range(count)]


async def nothing_more(watch: Watch) -> bool:
    try:
        await asyncio.wait_for(watch.__anext__(), 0.2)
    except TimeoutError:
        return True
    return False


async def test_put_get_and_revisions(store_kit: StoreKit) -> None:
    store, p = store_kit.store, store_kit.prefix
    first = await store.put(p + "a", b"1")
    second = await store.put(p + "a", b"2")
    assert second == first + 1
    kv = await store.get(p + "a")
    assert kv is not None
    assert (kv.value, kv.create_revision, kv.mod_revision, kv.version) == (b"2", first, second, 2)
    assert await store.get(p + "missing") is None


async def test_range_is_by_prefix_and_sorted(store_kit: StoreKit) -> None:
    store, p = store_kit.store, store_kit.prefix
    for key in ("res/b", "res/a", "res/c/deep", "resx", "other"):
        await store.put(p + key, key.encode())
    listing = await store.range(p + "res/")
    assert [kv.key for kv in listing.kvs] == [p + "res/a", p + "res/b", p + "res/c/deep"]
    assert listing.revision == max(kv.mod_revision for kv in (await store.range(p)).kvs)


async def test_range_in_the_past_sees_the_keys_as_they_were(store_kit: StoreKit) -> None:
    store, p = store_kit.store, store_kit.prefix
    first = await store.put(p + "a", b"1")
    await store.put(p + "b", b"x")
    middle = await store.put(p + "a", b"2")
    await store.delete(p + "b")
    await store.put(p + "c", b"y")
    then = await store.range(p, revision=first)
    assert [(kv.key, kv.value, kv.mod_revision) for kv in then.kvs] == [(p + "a", b"1", first)]
    assert then.revision == first
    at_middle = await store.range(p, revision=middle)
    assert [(kv.key, kv.value) for kv in at_middle.kvs] == [(p + "a", b"2"), (p + "b", b"x")]
    now = await store.range(p)
    assert [(kv.key, kv.value) for kv in now.kvs] == [(p + "a", b"2"), (p + "c", b"y")]
    # Compacted away: the same clear error a watch gets.
    await store.compact(now.revision)
    with pytest.raises(CompactedError):
        await store.range(p, revision=first)


async def test_put_compare_and_swap(store_kit: StoreKit) -> None:
    store, key = store_kit.store, store_kit.prefix + "doc"
    created = await store.put(key, b"v1", expect_mod_revision=0)
    with pytest.raises(ConflictError):
        await store.put(key, b"again", expect_mod_revision=0)
    updated = await store.put(key, b"v2", expect_mod_revision=created)
    with pytest.raises(ConflictError) as stale:
        await store.put(key, b"lost update", expect_mod_revision=created)
    assert stale.value.key == key
    kv = await store.get(key)
    assert kv is not None and (kv.value, kv.mod_revision) == (b"v2", updated)


async def test_delete_compare_and_swap(store_kit: StoreKit) -> None:
    store, key = store_kit.store, store_kit.prefix + "doc"
    created = await store.put(key, b"v1")
    await store.put(key, b"v2")
    with pytest.raises(ConflictError):
        await store.delete(key, expect_mod_revision=created)
    assert await store.get(key) is not None
    current = await store.get(key)
    assert current is not None
    assert await store.delete(key, expect_mod_revision=current.mod_revision) is True
    before = (await store.range(store_kit.prefix)).revision
    assert await store.delete(key) is False
    assert (await store.range(store_kit.prefix)).revision == before  # deleting nothing writes nothing


async def test_txn_is_all_or_nothing(store_kit: StoreKit) -> None:
    store, p = store_kit.store, store_kit.prefix
    base = await store.put(p + "guard", b"g")
    await store.put(p + "old", b"o")
    stale = [Compare.mod_revision(p + "guard", base - 1)]
    before = await store.range(p)
    failed = await store.txn(stale, [Put(p + "new1", b"1"), Put(p + "new2", b"2"), Delete(p + "old")])
    assert not failed.succeeded
    after = await store.range(p)
    assert after.kvs == before.kvs and after.revision == before.revision

    guards = [Compare.mod_revision(p + "guard", base), Compare.value(p + "old", b"o")]
    applied = await store.txn(guards, [Put(p + "new1", b"1"), Put(p + "new2", b"2"), Delete(p + "old")])
    assert applied.succeeded and applied.revision == before.revision + 1
    listing = await store.range(p)
    assert [kv.key for kv in listing.kvs] == [p + "guard", p + "new1", p + "new2"]
    assert {kv.mod_revision for kv in listing.kvs if kv.key != p + "guard"} == {applied.revision}


async def test_txn_compare_targets(store_kit: StoreKit) -> None:
    store, key = store_kit.store, store_kit.prefix + "k"
    await store.put(key, b"b")
    await store.put(key, b"b")
    version_is_2 = Compare(key, CompareTarget.VERSION, CompareOp.EQUAL, 2)
    value_below_c = Compare(key, CompareTarget.VALUE, CompareOp.LESS, b"c")
    created_later = Compare(key, CompareTarget.CREATE_REVISION, CompareOp.GREATER, 10**9)
    assert (await store.txn([version_is_2, value_below_c], [])).succeeded
    assert not (await store.txn([version_is_2, created_later], [Put(key, b"x")])).succeeded
    assert (await store.txn([Compare.absent(store_kit.prefix + "nope")], [])).succeeded


async def test_txn_refuses_touching_a_key_twice(store_kit: StoreKit) -> None:
    key = store_kit.prefix + "k"
    with pytest.raises(ValueError, match="once"):
        await store_kit.store.txn([], [Put(key, b"1"), Delete(key)])
    assert await store_kit.store.get(key) is None


async def test_watch_from_revision_sees_puts_and_deletes_in_order(store_kit: StoreKit) -> None:
    store, p = store_kit.store, store_kit.prefix
    start = await store.put(p + "w/a", b"1")
    await store.put(p + "elsewhere", b"not watched")
    await store.put(p + "w/b", b"2")
    async with store.watch(p + "w/", start_revision=start) as watch:
        gone = await store.delete(p + "w/a")
        assert gone
        events = await take(watch, 3)
        assert [(e.type, e.key, e.value) for e in events] == [
            (EventType.PUT, p + "w/a", b"1"),
            (EventType.PUT, p + "w/b", b"2"),
            (EventType.DELETE, p + "w/a", b""),
        ]
        revisions = [e.revision for e in events]
        assert revisions == sorted(revisions) and revisions[0] == start
        assert await nothing_more(watch)


async def test_list_then_watch_misses_nothing(store_kit: StoreKit) -> None:
    store, p = store_kit.store, store_kit.prefix
    await store.put(p + "x", b"0")
    listing = await store.range(p)
    written = await store.put(p + "y", b"1")  # between list and watch: must still be seen
    async with store.watch(p, start_revision=listing.revision + 1) as watch:
        (event,) = await take(watch, 1)
        assert (event.key, event.revision) == (p + "y", written)


async def test_watch_resumes_after_reconnect(store_kit: StoreKit) -> None:
    p = store_kit.prefix
    store = store_kit.store
    start = await store.put(p + "1", b"a")
    await store.put(p + "2", b"b")
    watch = store.watch(p, start_revision=start)
    seen = await take(watch, 2)
    last = seen[-1].revision

    store = await store_kit.reopen()
    with pytest.raises(StoreError):  # the old connection's watch fails rather than going quiet
        await asyncio.wait_for(watch.__anext__(), SETTLE)
    await watch.aclose()
    missed = [await store.put(p + "3", b"c"), await store.delete(p + "1")]
    async with store.watch(p, start_revision=last + 1) as resumed:
        events = await take(resumed, 2)
        assert [(e.type, e.key) for e in events] == [(EventType.PUT, p + "3"), (EventType.DELETE, p + "1")]
        assert events[0].revision == missed[0]
        assert await nothing_more(resumed)


async def test_compacted_revision_is_a_clear_error_and_resync_works(store_kit: StoreKit) -> None:
    store, p = store_kit.store, store_kit.prefix
    old = await store.put(p + "k", b"1")
    await store.put(p + "k", b"2")
    latest = await store.put(p + "k", b"3")
    await store.compact(latest)
    with pytest.raises(CompactedError) as err:
        async with store.watch(p, start_revision=old) as watch:
            await asyncio.wait_for(watch.__anext__(), SETTLE)
    assert err.value.requested_revision == old and err.value.compact_revision == latest
    # The caller's way out: list again, then watch from the listed revision on.
    listing = await store.range(p)
    assert [kv.value for kv in listing.kvs] == [b"3"]
    async with store.watch(p, start_revision=listing.revision + 1) as watch:
        written = await store.put(p + "k", b"4")
        (event,) = await take(watch, 1)
        assert event.revision == written


async def test_lease_expiry_removes_keys_and_is_watched(store_kit: StoreKit) -> None:
    store, p = store_kit.store, store_kit.prefix
    lease = await store.grant_lease(1)
    assert lease.ttl >= 1
    written = await store.put(p + "leased", b"x", lease=lease.id)
    await store.put(p + "plain", b"y")
    kv = await store.get(p + "leased")
    assert kv is not None and kv.lease == lease.id
    async with store.watch(p + "leased", start_revision=written + 1) as watch:
        await store_kit.pass_time(lease.ttl + 1)
        (event,) = await take(watch, 1)
        assert (event.type, event.key) == (EventType.DELETE, p + "leased")
    assert await store.get(p + "leased") is None
    assert await store.get(p + "plain") is not None
    with pytest.raises(LeaseNotFoundError):
        await store.keepalive(lease.id)
    with pytest.raises(LeaseNotFoundError):
        await store.put(p + "late", b"z", lease=lease.id)


async def test_keepalive_holds_a_lease_past_its_ttl(store_kit: StoreKit) -> None:
    store, key = store_kit.store, store_kit.prefix + "held"
    lease = await store.grant_lease(2)
    await store.put(key, b"x", lease=lease.id)
    for _ in range(5):  # 5 x 0.5 s > the 2 s ttl
        await store_kit.pass_time(0.5)
        assert await store.keepalive(lease.id) >= 1
    assert await store.get(key) is not None
    await store.revoke_lease(lease.id)
    assert await store.get(key) is None
    with pytest.raises(LeaseNotFoundError):
        await store.revoke_lease(lease.id)


async def _leader_after(task: asyncio.Task[None], election: LeaderElection) -> None:
    await asyncio.wait_for(task, SETTLE)
    assert election.is_leader


async def _contenders(kit: StoreKit) -> tuple[LeaderElection, LeaderElection, Store]:
    other = await kit.peer()
    # 2 s rather than etcd's 1 s minimum: a busy CI machine must not miss a renewal and flap.
    a = LeaderElection(kit.store, "controller", "replica-a", ttl=2, prefix=kit.prefix)
    b = LeaderElection(other, "controller", "replica-b", ttl=2, prefix=kit.prefix)
    return a, b, other


async def test_election_one_leader_and_resign_hands_over(store_kit: StoreKit) -> None:
    a, b, _ = await _contenders(store_kit)
    await asyncio.wait_for(a.campaign(), SETTLE)
    b_campaign = asyncio.create_task(b.campaign())
    await asyncio.sleep(0.3)
    assert a.is_leader and not b_campaign.done() and not b.is_leader
    assert await b.leader() == "replica-a"
    await a.resign()
    assert not a.is_leader
    await _leader_after(b_campaign, b)
    assert await a.leader() == "replica-b"
    await b.resign()


async def test_election_revoked_lease_deposes_leader_and_other_wins(store_kit: StoreKit) -> None:
    a, b, other = await _contenders(store_kit)
    await asyncio.wait_for(a.campaign(), SETTLE)
    b_campaign = asyncio.create_task(b.campaign())
    await other.revoke_lease(a.lease_id)  # e.g. an operator, or the store losing it
    await asyncio.wait_for(a.wait_lost(), SETTLE)
    assert not a.is_leader
    await _leader_after(b_campaign, b)
    await a.abandon()
    await b.resign()


async def test_election_expired_lease_passes_leadership(store_kit: StoreKit) -> None:
    a, b, _ = await _contenders(store_kit)
    await asyncio.wait_for(a.campaign(), SETTLE)
    seen: list[str | None] = []

    async def observe() -> None:
        async for leader in b.observe():
            seen.append(leader)

    observer = asyncio.create_task(observe())
    b_campaign = asyncio.create_task(b.campaign())
    await a.abandon()  # a crashed: nobody renews its lease any more
    await store_kit.pass_time(3)
    await _leader_after(b_campaign, b)
    await eventually(lambda: asyncio.sleep(0, seen[-1:] == ["replica-b"]))
    assert seen[0] == "replica-a" and None in seen
    observer.cancel()
    await b.resign()
