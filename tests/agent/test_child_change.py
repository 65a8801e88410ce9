"""A tunnel's CHILD_SA settings change (here its selectors grow by a second prefix) while the IKE
SA stays: the reconciler replaces the CHILD_SA make-before-break on the established IKE SA.

Two reconcilers drive real IKE adapters (real engines, UDP on 127.77.0.x) over recording data
planes. The "flow" is the data-plane state a packet meets, sampled at every turn of the event
loop (every data-plane call completes between two turns): the sender's outbound policy for the
packet, the newest outbound SA of that policy's reqid (the one that carries it), and at the
receiver the inbound SA with that SPI and an inbound policy whose template accepts its reqid.
Any sample where a packet on the first prefix could not get through counts as a loss."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import Iterator

import pytest

from meshsec.agent.adapters.recording import RecordingDataPlane
from meshsec.agent.dataplane.api import Direction
from meshsec.v1 import common_pb2
from tests.agent.test_reconciler import Side, desire, end, until

pytestmark = pytest.mark.timeout(60)

A_HOST, B_HOST = "198.19.1.10", "198.19.2.10"  # the tunnel's first selectors: 198.19.1/24 === 198.19.2/24
B_SECOND = "198.19.3.10"  # the prefix added behind b


def undeliverable(src: RecordingDataPlane, dst: RecordingDataPlane, from_ip: str, to_ip: str) -> str | None:
    """Why a packet from_ip -> to_ip sent by `src` would not arrive at `dst` now (None: it would)."""
    s, d = ipaddress.ip_address(from_ip), ipaddress.ip_address(to_ip)

    def policy(dp: RecordingDataPlane, direction: Direction, a: object, b: object) -> int | None:
        for (sel, dirn), pol in dp.policies.items():
            if dirn is direction and a in sel.src and b in sel.dst and pol.template is not None:
                return pol.template.reqid
        return None

    reqid = policy(src, Direction.OUT, s, d)
    if reqid is None:
        return "no outbound policy"
    carriers = [sa for sa in src.sas.values() if sa.direction is Direction.OUT and sa.reqid == reqid]
    if not carriers:
        return f"no outbound SA for reqid {reqid}"
    inbound = dst.sas.get(carriers[-1].id)  # the newest outbound SA of the reqid carries it
    if inbound is None or inbound.direction is not Direction.IN:
        return f"receiver lacks inbound SA {carriers[-1].id.spi:#010x}"
    if policy(dst, Direction.IN, s, d) != inbound.reqid:
        return "receiver's inbound policy does not accept the SA's reqid"
    return None


class Flow:
    """Samples both directions of a flow on the first prefix until stopped."""

    def __init__(self, a: Side, b: Side) -> None:
        self.a, self.b = a, b
        self.samples = 0
        self.lost: list[str] = []
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            for why in (
                undeliverable(self.a.dataplane, self.b.dataplane, A_HOST, B_HOST),
                undeliverable(self.b.dataplane, self.a.dataplane, B_HOST, A_HOST),
            ):
                self.samples += 1
                if why is not None:
                    self.lost.append(why)
            await asyncio.sleep(0)

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


def ends(a: Side, b: Side, second: bool, both: bool = False) -> Iterator[tuple[Side, object]]:
    ta = end("t1", "a", "b", a.addr, b.addr, initiator=True)
    tb = end("t1", "b", "a", b.addr, a.addr, initiator=both)
    if second:
        ta.children[0].remote_ts.append(common_pb2.TrafficSelector(cidr="198.19.3.0/24"))
        tb.children[0].local_ts.append(common_pb2.TrafficSelector(cidr="198.19.3.0/24"))
    yield a, ta
    yield b, tb


def apply(a: Side, b: Side, *, second: bool, only: Side | None = None, both: bool = False) -> None:
    for side, t in ends(a, b, second, both):
        if only is None or side is only:
            desire(side, t)  # type: ignore[arg-type]


def one_child_each(a: Side, b: Side) -> bool:
    return all(s.live_children() == 1 and len(s.dataplane.sas) == 2 for s in (a, b))


def second_prefix_works(a: Side, b: Side) -> bool:
    return (
        undeliverable(a.dataplane, b.dataplane, A_HOST, B_SECOND) is None
        and undeliverable(b.dataplane, a.dataplane, B_SECOND, A_HOST) is None
    )


async def established(a: Side, b: Side) -> list[str]:
    await until("established", lambda: len(a.established()) == 1 and a.established() == b.established())
    await until("CHILD_SA installed at both ends", lambda: one_child_each(a, b))
    assert second_prefix_works(a, b) is False
    return a.established()


@pytest.mark.parametrize(
    ("lagging_responder", "both"),
    [(False, False), (True, False), (False, True)],
    ids=["both-ends", "responder-later", "both-designated"],
)
async def test_selectors_grow_without_loss_on_the_kept_prefix(
    pair: list[Side], lagging_responder: bool, both: bool
) -> None:
    """`both`: both ends think they are the designated initiator (as after a controller flip),
    so both replace the CHILD_SA at once and must agree on the one to keep; deleting the other
    pair, which one end may be sending on, can lose what is in flight (not counted here)."""
    a, b = pair
    apply(a, b, second=False, both=both)
    ike = await established(a, b)
    first_child = list(a.adapter.active()[0].children)
    flow = Flow(a, b)
    try:
        if lagging_responder:
            # The designated initiator learns of the change first: its new CHILD_SA is narrowed by
            # b to the old selectors; once b has the change and its CHILD_SA still has the old
            # config after the grace, b replaces it itself.
            apply(a, b, second=True, only=a)
            await until(
                "a replaced its CHILD_SA",
                lambda: one_child_each(a, b) and list(a.adapter.active()[0].children) != first_child,
            )
            assert not second_prefix_works(a, b)
            apply(a, b, second=True, only=b)
        else:
            apply(a, b, second=True, both=both)
        await until("the second prefix works", lambda: second_prefix_works(a, b))
        await until("one CHILD_SA per end, old one removed", lambda: one_child_each(a, b))
        await asyncio.sleep(0.5)  # and nothing else happens
    finally:
        await flow.stop()
    assert flow.samples > 1000
    lost = f"{len(flow.lost)} of {flow.samples} samples lost: {sorted(set(flow.lost))}"
    assert both or flow.lost == [], lost
    assert a.established() == ike == b.established(), "the IKE SA was replaced"
    assert list(a.adapter.active()[0].children) != first_child
    assert one_child_each(a, b) and second_prefix_works(a, b)
    # The CHILD_SA has the new selectors at both ends, from the new config.
    for side in (a, b):
        (child,) = side.adapter.active()[0].sa.children.values()
        assert len(child.ts_local) + len(child.ts_remote) == 3

    # And back, at both ends at once: the previous change's CHILD_SAs (made by a replacement)
    # do not make the non-designated end replace it too (that would be a duplicate to delete).
    flow = Flow(a, b)
    try:
        apply(a, b, second=False, both=both)
        await until(
            "the second prefix is gone", lambda: not second_prefix_works(a, b) and one_child_each(a, b)
        )
        await asyncio.sleep(0.5)
    finally:
        await flow.stop()
    assert both or flow.lost == [], f"{len(flow.lost)} of {flow.samples} samples lost on the way back"
    assert a.established() == ike == b.established() and one_child_each(a, b)


async def test_ike_change_still_replaces_the_ike_sa(pair: list[Side]) -> None:
    a, b = pair
    apply(a, b, second=False)
    ike = await established(a, b)
    for side, t in ends(a, b, second=True):
        t.ike_proposals[:] = ["aes128gcm16-prfsha256-x25519"]  # type: ignore[attr-defined]
        desire(side, t)  # type: ignore[arg-type]
    await until(
        "a new IKE SA with the new selectors",
        lambda: (
            len(a.established()) == 1
            and a.established() != ike
            and a.established() == b.established()
            and second_prefix_works(a, b)
        ),
    )
