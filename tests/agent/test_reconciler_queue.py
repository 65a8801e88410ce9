"""The reconciler against a fake IKE runtime and a fake clock (tests/agent/fake_runtime.py): no
sockets, no engines, no sleeps. Each test sets up desired and observed state, runs the due
tunnels (`process`), and checks the commands issued and when each tunnel asks to be looked at
again. The real engines and sockets are in test_reconciler.py and test_child_change.py."""

from __future__ import annotations

import asyncio
import dataclasses
import random

import pytest

from meshsec.agent.ike import (
    Algorithms,
    ChildSaFailed,
    FailureReason,
    IkeSaEstablished,
    IkeSaFailed,
    InitialContactReceived,
    strict,
)
from meshsec.agent.node.convergence import SAME_RACE_S, child_steps
from meshsec.agent.node.ike_port import ChildPhase, SaPhase
from meshsec.agent.node.reconciler import BACKOFF_MAX, BACKOFF_MIN, CHILD_GRACE, Reconciler
from meshsec.agent.node.translate import plan
from meshsec.agent.node.workqueue import WorkQueue
from meshsec.v1 import agent_pb2
from tests.agent.fake_runtime import FakeClock, FakeRuntime
from tests.agent.test_desired import tunnel


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def ike() -> FakeRuntime:
    return FakeRuntime()


def reconciler(ike: FakeRuntime, clock: FakeClock, *, grace: float = 10.0) -> Reconciler:
    return Reconciler(ike, responder_grace=grace, clock=clock, rng=random.Random(7))


def desire(r: Reconciler, *tunnels: agent_pb2.DesiredTunnel, version: int = 1) -> None:
    r.set_desired({t.tunnel_id: t for t in tunnels}, version)


def initiations(ike: FakeRuntime) -> list[tuple[object, ...]]:
    return [c for c in ike.calls if c[0] == "initiate"]


async def test_the_designated_initiator_initiates_at_once_then_backs_off(
    ike: FakeRuntime, clock: FakeClock
) -> None:
    t = tunnel("t1")
    t.remote_endpoints.add(address="198.18.0.3")
    r = reconciler(ike, clock)
    desire(r, t)
    await r.process()
    assert initiations(ike) == [("initiate", "t1", "127.77.0.2")]
    ike.live.clear()  # the attempt failed: no SA
    await r.process()
    assert len(initiations(ike)) == 1  # nothing due before the back-off ran out
    due = r.queue.next_due()
    assert due is not None and BACKOFF_MIN * 0.5 <= due - clock() <= BACKOFF_MIN * 1.5
    clock.t = due
    await r.process()
    assert initiations(ike)[1] == ("initiate", "t1", "198.18.0.3")  # the next endpoint


async def test_the_other_end_waits_for_the_responder_grace(ike: FakeRuntime, clock: FakeClock) -> None:
    r = reconciler(ike, clock, grace=10.0)
    desire(r, tunnel("t1", initiator=False))
    await r.process()
    assert not initiations(ike)
    assert r.queue.next_due() == pytest.approx(clock() + 10.0)  # requeued for the grace's end
    clock.advance(10.0)
    await r.process()
    assert len(initiations(ike)) == 1


async def test_after_a_restart_the_other_end_initiates_at_once(ike: FakeRuntime, clock: FakeClock) -> None:
    r = reconciler(ike, clock)
    r.restarted = True
    desire(r, tunnel("t1", initiator=False))
    await r.process()
    assert len(initiations(ike)) == 1


async def test_an_established_matching_sa_is_left_alone(ike: FakeRuntime, clock: FakeClock) -> None:
    t = tunnel("t1")
    r = reconciler(ike, clock)
    desire(r, t)
    ike.add(r.plans["t1"].ike)
    await r.process()
    await r.reconcile()
    assert ike.calls == []
    assert r.reconciled_version == 1


async def test_an_sa_of_a_removed_or_changed_tunnel_is_deleted_once(
    ike: FakeRuntime, clock: FakeClock
) -> None:
    t1, t2 = tunnel("t1"), tunnel("t2")
    r = reconciler(ike, clock)
    desire(r, t1, t2)
    old1, old2 = ike.add(r.plans["t1"].ike), ike.add(r.plans["t2"].ike)
    t2.ike_proposals[:] = ["aes128gcm16-prfsha256-x25519"]
    desire(r, t2, version=2)
    await r.process()
    assert ("delete", old1.handle) in ike.calls and ("delete", old2.handle) in ike.calls
    await r.reconcile()  # level-triggered: a DELETING SA is not deleted again
    assert ike.calls.count(("delete", old1.handle)) == 1
    assert [c[1] for c in initiations(ike)] == ["t2"]  # the changed tunnel comes back


async def test_a_desired_state_without_tunnels_is_reconciled(ike: FakeRuntime, clock: FakeClock) -> None:
    """A site's non-gateway node gets desired states with routes and no tunnels: each counts as
    applied (its readiness probe waits for that), and so does the one that removes the last tunnel."""
    r = reconciler(ike, clock)
    desire(r, version=3)
    await r.process()
    assert r.reconciled_version == 3
    desire(r, tunnel("t1"), version=4)
    await r.process()
    assert r.reconciled_version == 4
    desire(r, version=5)
    await r.process()
    assert r.reconciled_version == 5


@pytest.mark.parametrize(
    ("a_designated", "b_designated"), [(True, False), (False, True), (True, True), (False, False)]
)
async def test_both_ends_delete_the_same_duplicate_whoever_thinks_it_is_the_initiator(
    clock: FakeClock, a_designated: bool, b_designated: bool
) -> None:
    """Both ends initiated at once: a's SA (SPIi 09..) and b's (SPIi 01..), each end holding both.
    Both must delete the same one; after a controller flip both believe they are the designated
    initiator (and before the new config reaches them, neither may), and when each kept its own
    the tunnel went down and, both initiating again, could stay down."""
    deleted = []
    for designated, mine, theirs in ((a_designated, b"\x09" * 8, b"\x01" * 8),
                                     (b_designated, b"\x01" * 8, b"\x09" * 8)):  # fmt: skip
        end = FakeRuntime()
        r = reconciler(end, clock)
        desire(r, tunnel("t1", initiator=designated))
        config = r.plans["t1"].ike
        by_spi = {mine: end.add(config, initiator=True, spi_i=mine, established_at=1.0),
                  theirs: end.add(config, initiator=False, spi_i=theirs, established_at=1.2)}  # fmt: skip
        await r.process()
        (call,) = end.calls
        deleted.append(next(spi for spi, sa in by_spi.items() if ("delete", sa.handle) == call))
    assert deleted == [b"\x09" * 8, b"\x09" * 8]  # the lowest SPIi stays, at both ends


async def test_a_duplicate_much_newer_than_the_other_wins(ike: FakeRuntime, clock: FakeClock) -> None:
    """An SA established long before the other is stale (its peer restarted and made the new one),
    whatever the SPIs."""
    r = reconciler(ike, clock)
    desire(r, tunnel("t1", initiator=True))
    config = r.plans["t1"].ike
    old = ike.add(config, initiator=True, spi_i=b"\x01" * 8, established_at=1.0)
    new = ike.add(config, initiator=False, spi_i=b"\x09" * 8, established_at=1.0 + SAME_RACE_S + 5)
    await r.process()
    assert ike.calls == [("delete", old.handle)]
    assert new.phase is SaPhase.ESTABLISHED


async def test_a_child_only_change_replaces_the_child_and_keeps_the_ike_sa(
    ike: FakeRuntime, clock: FakeClock
) -> None:
    t = tunnel("t1")
    r = reconciler(ike, clock)
    desire(r, t)
    sa = ike.add(r.plans["t1"].ike)
    (old,) = sa.children
    t.children[0].remote_ts[0].cidr = "198.19.3.0/24"
    desire(r, t, version=2)
    await r.process()
    assert ike.calls == [("reconfigure", sa.handle), ("replace_child", sa.handle, old.spi_in, "mesh")]
    await r.reconcile()
    assert len(ike.calls) == 2  # on its way: not asked again, and the IKE SA stays
    ike.finish_replacement(sa, old, sa.config.children[0])
    await r.reconcile()
    assert len(ike.calls) == 2  # the engine deletes the old pair: nothing left to do
    assert r.reconciled_version == 2


async def test_a_stale_pair_the_engine_did_not_link_is_deleted_once_a_current_one_carries_traffic(
    ike: FakeRuntime, clock: FakeClock
) -> None:
    t = tunnel("t1")
    r = reconciler(ike, clock)
    desire(r, t)
    sa = ike.add(r.plans["t1"].ike)
    (old,) = sa.children
    t.children[0].remote_ts[0].cidr = "198.19.3.0/24"
    desire(r, t, version=2)
    sa.config = r.plans["t1"].ike
    current = ike.child(sa.config.children[0], ready=False)  # installing, outbound not live yet
    sa.children.append(current)
    await r.process()
    assert ike.calls == []  # neither replaced again nor deleted while the new pair is not ready
    sa.children[-1] = dataclasses.replace(current, ready=True)
    await r.reconcile()
    assert ike.calls == [("delete_child", sa.handle, old.spi_in)]
    await r.reconcile()
    assert ike.calls.count(("delete_child", sa.handle, old.spi_in)) == 1


async def test_the_other_end_replaces_a_changed_child_only_after_the_grace(
    ike: FakeRuntime, clock: FakeClock
) -> None:
    t = tunnel("t1", initiator=False)
    r = reconciler(ike, clock)
    desire(r, t)
    sa = ike.add(r.plans["t1"].ike, initiator=False)
    t.children[0].remote_ts[0].cidr = "198.19.3.0/24"
    desire(r, t, version=2)
    await r.process()
    assert ike.calls == [("reconfigure", sa.handle)]
    assert r.queue.next_due() == pytest.approx(clock() + CHILD_GRACE)  # requeued for the grace's end
    clock.advance(CHILD_GRACE)
    await r.process()
    assert ike.calls[-1] == ("replace_child", sa.handle, sa.children[0].spi_in, "mesh")


async def test_one_tunnels_exception_requeues_only_that_tunnel_with_back_off(
    ike: FakeRuntime, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(strict, "enabled", False)  # the point here is what happens without strict mode
    r = reconciler(ike, clock)
    ike.fail_initiate["t1"] = RuntimeError("a bug")
    desire(r, tunnel("t1"), tunnel("t2"), version=5)
    await r.process()
    assert sorted(c[1] for c in initiations(ike)) == ["t1", "t2"]  # t2 went ahead
    rt = r.runtime["t1"]
    assert rt.last_error is not None and rt.last_error.reason == "INTERNAL_ERROR"
    assert r.stats["reconcile_errors"] == 1
    assert r.reconciled_version == 0  # t1 has not been reconciled to version 5
    first = r.queue.next_due()
    assert first is not None and first - clock() == pytest.approx(r.queue.backoff_min)
    clock.advance(BACKOFF_MAX)  # past the tunnel's own back-off between attempts too
    await r.process()
    assert r.queue.failures("t1") == 2
    second = r.queue.next_due()
    assert second is not None and second - clock() == pytest.approx(2 * r.queue.backoff_min)  # backs off
    del ike.fail_initiate["t1"]
    clock.advance(BACKOFF_MAX)
    await r.process()
    assert r.queue.failures("t1") == 0 and r.reconciled_version == 5


async def test_in_strict_mode_a_tunnels_exception_is_raised(
    ike: FakeRuntime, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(strict, "enabled", True)
    r = reconciler(ike, clock)
    ike.fail_initiate["t1"] = RuntimeError("a bug")
    desire(r, tunnel("t1"))
    with pytest.raises(RuntimeError, match="a bug"):
        await r.process()
    assert "t1" in r.queue  # requeued all the same


async def test_an_unreachable_peer_is_a_tunnel_error_not_a_reconcile_failure(
    ike: FakeRuntime, clock: FakeClock
) -> None:
    r = reconciler(ike, clock)
    ike.fail_initiate["t1"] = OSError("Network is unreachable")
    desire(r, tunnel("t1"))
    await r.process()
    rt = r.runtime["t1"]
    assert rt.last_error is not None and rt.last_error.reason == "PEER_UNREACHABLE"
    assert r.stats["reconcile_errors"] == 0 and r.reconciled_version == 1


async def test_a_fresh_reconciler_converges_from_the_state_it_finds(
    ike: FakeRuntime, clock: FakeClock
) -> None:
    """After a crash of the reconciler (not of the SAs): desired and observed state are all it
    needs, so a new one keeps the matching SA and removes the one nobody wants any more."""
    first = reconciler(ike, clock)
    desire(first, tunnel("t1"), tunnel("t2"))
    kept, orphan = ike.add(first.plans["t1"].ike), ike.add(first.plans["t2"].ike)
    second = reconciler(ike, clock)
    desire(second, tunnel("t1"))
    await second.process()
    assert ike.calls == [("delete", orphan.handle)]
    assert kept.phase is SaPhase.ESTABLISHED


async def test_events_go_to_their_tunnel_and_unauthenticated_ones_to_none(
    ike: FakeRuntime, clock: FakeClock
) -> None:
    r = reconciler(ike, clock)
    desire(r, tunnel("t1"))
    await r.process()
    spoofed = ike.add(r.plans["t1"].ike, initiator=False, authenticated=False, phase=SaPhase.CONNECTING)
    r.changed.clear()
    r.on_event(
        spoofed.view(), IkeSaFailed("NO_PROPOSAL_CHOSEN notify sent", FailureReason.NO_PROPOSAL_CHOSEN)
    )
    assert r.runtime["t1"].last_error is None and not r.changed.is_set()
    sa = ike.add(r.plans["t1"].ike)
    r.on_event(
        sa.view(), ChildSaFailed("mesh", "the peer refused the selectors", FailureReason.TS_UNACCEPTABLE)
    )
    error = r.runtime["t1"].last_error
    assert error is not None and error.reason == "TS_UNACCEPTABLE"
    r.on_event(sa.view(), IkeSaFailed("no answer", FailureReason.TIMEOUT))
    error = r.runtime["t1"].last_error
    assert error is not None and error.reason == "TIMEOUT" and "t1" in r.queue


async def test_initial_contact_drops_the_older_sas_of_the_tunnel(ike: FakeRuntime, clock: FakeClock) -> None:
    r = reconciler(ike, clock)
    desire(r, tunnel("t1"), tunnel("t2"))
    stale = ike.add(r.plans["t1"].ike, established_at=5.0)
    other = ike.add(r.plans["t2"].ike, established_at=5.0)
    fresh = ike.add(
        r.plans["t1"].ike, initiator=False, created=9.0, established_at=None, phase=SaPhase.CONNECTING
    )
    r.on_event(fresh.view(), InitialContactReceived("b"))
    assert ike.calls == []  # not from within the engine's event dispatch
    await asyncio.sleep(0)  # the loop's next turn
    assert ike.calls == [("drop", stale.handle)] and other.handle in ike.live


async def test_an_established_event_resets_the_back_off(ike: FakeRuntime, clock: FakeClock) -> None:
    r = reconciler(ike, clock)
    desire(r, tunnel("t1"))
    await r.process()
    sa = next(iter(ike.live.values()))
    sa.phase = SaPhase.ESTABLISHED
    assert r.runtime["t1"].attempts == 1
    algorithms = Algorithms(encr=20, encr_key_bits=256, integ=None)
    r.on_event(sa.view(), IkeSaEstablished(sa.spi_i, b"\x01" * 8, True, "a", "b", algorithms, False, "t1"))
    assert r.runtime["t1"].attempts == 0 and "t1" in r.queue


def test_the_work_queue_keeps_a_key_once_at_its_earliest_time() -> None:
    q: WorkQueue[str] = WorkQueue(backoff_min=1.0, backoff_max=4.0)
    q.add_after("a", 5.0, now=0.0)
    q.add_after("a", 2.0, now=0.0)
    q.add_after("a", 9.0, now=0.0)
    assert len(q) == 1 and q.next_due() == 2.0
    assert q.pop_due(1.0) == [] and q.pop_due(2.0) == ["a"] and len(q) == 0
    assert [q.failed("b", now=0.0) for _ in range(4)] == [1.0, 2.0, 4.0, 4.0]  # capped
    q.forget("b")
    assert q.failed("b", now=0.0) == 1.0


def test_crossing_replacements_are_left_to_the_engine(ike: FakeRuntime) -> None:
    """Two current pairs of one name (both ends replaced at once): the engine's collision
    rules delete the loser; the reconciler deleting one too could hit the winner."""
    t = tunnel("t1")
    sa = ike.add(plan(t, None).ike)
    (old,) = sa.children
    t.children[0].remote_ts[0].cidr = "198.19.3.0/24"
    sa.config = plan(t, None).ike
    ours, theirs = ike.child(sa.config.children[0]), ike.child(sa.config.children[0])
    sa.children = [dataclasses.replace(old, phase=ChildPhase.RETIRING), ours, theirs]
    steps = child_steps(sa.view(), designated=True, stale_since={}, deleting=set(), now=0.0, grace=2.0)
    assert steps.delete == [] and steps.replace == [] and steps.wait is None
