"""The reconciler driving two real IKE adapters (real engines, UDP on 127.77.0.x) over a
recording data plane (the one part that is not real: no packets are encrypted here; the
namespace tests cover that). Proves the duplicate resolution, INITIAL_CONTACT after a restart,
tunnel removal and replacement on a configuration change."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import pytest

from meshsec.agent.adapters import takeover
from meshsec.agent.adapters.ike import AdapterSettings, IkeAdapter
from meshsec.agent.adapters.recording import RecordingDataPlane
from meshsec.agent.adapters.runtime import AdapterRuntime, view_of
from meshsec.agent.dataplane.api import SaCounters
from meshsec.agent.node.reconciler import Reconciler
from meshsec.agent.node.report import ReportBuilder
from meshsec.v1 import agent_pb2, common_pb2
from tests.agent.test_desired import tunnel

pytestmark = pytest.mark.timeout(60)
PORT = 15500


@dataclass
class Side:
    name: str
    addr: str
    dataplane: RecordingDataPlane
    adapter: IkeAdapter
    reconciler: Reconciler
    task: asyncio.Task[None]

    def established(self) -> list[str]:
        return [r.sa.spi_i.hex() for r in self.adapter.active() if r.sa.established]

    def live_children(self) -> int:
        return sum(len(r.children) for r in self.adapter.active())


def end(
    tid: str, me: str, peer: str, my_addr: str, peer_addr: str, *, initiator: bool
) -> agent_pb2.DesiredTunnel:
    t = tunnel(tid, peer, initiator=initiator)
    t.local_endpoint.address = my_addr
    t.remote_endpoints[0].address = peer_addr
    t.local_id.value, t.remote_id.value = me, peer
    child = t.children[0]
    if me == "b":  # the selectors mirrored at the other end
        child.local_ts[0].cidr, child.remote_ts[0].cidr = child.remote_ts[0].cidr, child.local_ts[0].cidr
    return t


async def start_side(name: str, addr: str, *, restarted: bool = False) -> Side:
    dp = RecordingDataPlane()
    await dp.start()
    holder: list[Reconciler] = []
    adapter = IkeAdapter(
        lambda local, remote: holder[0].lookup(local, remote),
        dataplane=dp,
        settings=AdapterSettings(bind=(addr,), ike_port=PORT),
        on_event=lambda record, ev: holder[0].on_event(view_of(record), ev),
    )
    rec = Reconciler(AdapterRuntime(adapter), responder_grace=1.0)
    rec.restarted = restarted
    holder.append(rec)
    await adapter.start()
    return Side(name, addr, dp, adapter, rec, asyncio.create_task(rec.run(period=0.2)))


async def stop_side(side: Side, graceful: bool = True) -> None:
    side.task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await side.task
    await side.adapter.close(graceful=graceful, timeout=1.0)
    side.adapter.close_sockets()


async def until(what: str, check, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def desire(side: Side, *tunnels: agent_pb2.DesiredTunnel) -> None:
    side.reconciler.set_desired({t.tunnel_id: t for t in tunnels})


async def test_both_ends_initiating_converge_on_one_ike_sa(pair: list[Side]) -> None:
    a, b = pair
    # Both claim the initiator role (as after a controller flip): both negotiate, one SA stays.
    desire(a, end("t1", "a", "b", a.addr, b.addr, initiator=True))
    desire(b, end("t1", "b", "a", b.addr, a.addr, initiator=True))
    await until(
        "one IKE SA at each end, the same one",
        lambda: len(a.established()) == 1 and a.established() == b.established(),
    )
    await asyncio.sleep(1.0)  # and it stays that way
    assert len(a.established()) == 1 and a.established() == b.established()
    await until(
        "data planes hold only the live CHILD_SA",
        lambda: len(a.dataplane.sas) == 2 and len(b.dataplane.sas) == 2,
    )


async def test_removal_and_configuration_change(pair: list[Side]) -> None:
    a, b = pair
    ta, tb = (
        end("t1", "a", "b", a.addr, b.addr, initiator=True),
        end("t1", "b", "a", b.addr, a.addr, initiator=False),
    )
    desire(a, ta)
    desire(b, tb)
    await until("established", lambda: len(a.established()) == 1 and a.established() == b.established())
    first = a.established()
    # A changed proposal list replaces the IKE SA (at both ends; the peer gets the DELETE).
    ta.ike_proposals[:] = ["aes128gcm16-prfsha256-x25519", *ta.ike_proposals]
    tb.ike_proposals[:] = list(ta.ike_proposals)
    desire(a, ta)
    desire(b, tb)
    await until(
        "replaced",
        lambda: len(a.established()) == 1 and a.established() != first and a.established() == b.established(),
    )
    # Removed at one end: its DELETE tears it down at the other end too, data planes emptied.
    desire(a)
    await until("torn down at both ends", lambda: not a.adapter.active() and not b.established())
    await until(
        "data planes empty", lambda: not a.dataplane.sas and not b.dataplane.sas and not a.dataplane.policies
    )


async def test_restarted_responder_reconnects_and_peer_drops_stale_sa(pair: list[Side]) -> None:
    a, b = pair
    desire(a, end("t1", "a", "b", a.addr, b.addr, initiator=True))
    desire(b, end("t1", "b", "a", b.addr, a.addr, initiator=False))
    await until("established", lambda: len(a.established()) == 1 and a.established() == b.established())
    old = a.established()
    await stop_side(b, graceful=False)  # b crashes: a still holds the SA, knows nothing
    assert a.established() == old
    b2 = await start_side("b", "127.77.0.2", restarted=True)
    pair[1] = b2
    desire(b2, end("t1", "b", "a", b2.addr, a.addr, initiator=False))
    # b2 initiates at once (restart) with INITIAL_CONTACT; a drops the stale SA silently.
    await until(
        "new SA, stale one gone",
        lambda: a.established() == b2.established() and len(a.established()) == 1 and a.established() != old,
    )
    await until("a's data plane holds only the new CHILD_SA", lambda: len(a.dataplane.sas) == 2)
    assert a.live_children() == 1


async def test_the_peer_restarted_without_state_takes_over_make_before_break(
    pair: list[Side], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The answering end of the restarted peer's new IKE SA (its CHILD_SA duplicates the one the
    stale IKE SA still carries) sends on the new pair only once the peer sent on it (the peer
    then surely has its inbound SA), on the old pair's reqid, and removes the old pair after
    that, although INITIAL_CONTACT dropped its IKE SA at once."""
    monkeypatch.setattr(takeover, "WAIT", 600.0)  # only the peer's packet ends the wait here
    a, b = pair
    desire(a, end("t1", "a", "b", a.addr, b.addr, initiator=False))
    desire(b, end("t1", "b", "a", b.addr, a.addr, initiator=True))
    await until("established", lambda: len(a.established()) == 1 and a.established() == b.established())
    ((old,),) = [list(r.children.values()) for r in a.adapter.active()]
    await stop_side(b, graceful=False)
    b2 = await start_side("b", "127.77.0.2", restarted=True)
    pair[1] = b2
    desire(b2, end("t1", "b", "a", b2.addr, a.addr, initiator=True))
    await until("a's new CHILD_SA", lambda: [c for r in a.adapter.active() for c in r.children.values()
                                             if c.installed and c is not old] != [])  # fmt: skip
    (child,) = [c for r in a.adapter.active() for c in r.children.values() if c.installed and c is not old]
    assert not child.outbound_live  # held: the old pair carries a's traffic
    in_id = a.adapter.installer.installed[child.key].inbound.id  # type: ignore[union-attr]
    assert a.adapter.installer.reqid_of(child.key) == a.adapter.installer.reqid_of(old.key)  # type: ignore[union-attr]
    assert f"delete_sa {old.event.spi_out:#010x}" not in a.dataplane.log
    a.dataplane.counted[in_id] = SaCounters(bytes=84, packets=1)  # the peer's first packet on it
    await until("a sends on the new pair", lambda: child.outbound_live)
    await until("a's data plane holds only the new CHILD_SA", lambda: len(a.dataplane.sas) == 2)
    log = a.dataplane.log
    activated = log.index(f"add_sa out {child.event.spi_out:#010x}")
    assert activated > log.index(f"add_sa in {child.event.spi_in:#010x}")
    assert log.index(f"delete_sa {old.event.spi_out:#010x}") > activated
    assert log.index(f"delete_sa {old.event.spi_in:#010x}") > activated
    assert a.adapter.stats["child_takeovers"] == 1


def short_lived(t: agent_pb2.DesiredTunnel) -> agent_pb2.DesiredTunnel:
    t.children[0].lifetimes.CopyFrom(common_pb2.Lifetimes(soft_seconds=3, hard_seconds=20, jitter_seconds=1))
    t.ike_lifetimes.CopyFrom(common_pb2.Lifetimes(soft_seconds=5, hard_seconds=20, jitter_seconds=1))
    return t


def distinct(side: Side) -> list[tuple[str, list[int]]]:
    records = {id(r): r for r in side.adapter.active() if r.sa.established}.values()
    return [(r.sa.spi_i.hex(), sorted(r.children)) for r in records]


async def test_engine_rekeys_are_not_mistaken_for_duplicates(pair: list[Side]) -> None:
    """CHILD_SA and IKE SA rekeys (the engine's, from the tunnel's lifetimes) keep one IKE SA per
    tunnel at both ends: the reconciler neither deletes the successor nor re-initiates."""
    a, b = pair
    desire(a, short_lived(end("t1", "a", "b", a.addr, b.addr, initiator=True)))
    desire(b, short_lived(end("t1", "b", "a", b.addr, a.addr, initiator=False)))
    await until("established", lambda: len(distinct(a)) == 1 and a.established() == b.established())
    ((first_ike, first_children),) = distinct(a)
    seen_ike, seen_children = {first_ike}, set(first_children)
    deadline = asyncio.get_running_loop().time() + 9.0
    while asyncio.get_running_loop().time() < deadline:
        for side in (a, b):
            assert len(distinct(side)) <= 1, (side.name, distinct(side))
        if distinct(a):
            ((ike, children),) = distinct(a)
            seen_ike.add(ike)
            seen_children.update(children)
        await asyncio.sleep(0.1)
    assert len(seen_ike) >= 2, "no IKE SA rekey happened"
    assert len(seen_children) >= 3, "no CHILD_SA rekey happened"
    await until(
        "same SA at both ends",
        lambda: distinct(a) and [x[0] for x in distinct(a)] == [x[0] for x in distinct(b)],
    )
    # The status report carries the rekey times.
    (report,) = await ReportBuilder(a.reconciler).tunnels()
    assert report.ike_sa.last_rekey_at.seconds > 0
    assert report.child_sas and all(c.last_rekey_at.seconds > 0 for c in report.child_sas)
    # Only the CHILD_SA pairs the engine still holds are in the data plane (old ones removed).
    await until(
        "data planes match the live CHILD_SAs",
        lambda: (
            len(a.dataplane.sas) == 2 * a.live_children() and len(b.dataplane.sas) == 2 * b.live_children()
        ),
    )
