"""The adapter's decisions, pure and without sockets: which CHILD_SAs follow a moved IKE SA
(follow.py), when inbound counters are read as proof of life (liveness.py), which socket a
datagram leaves by (endpoints.py), the status document (status.py), and the runtime's view
of a real adapter (runtime.py)."""

from __future__ import annotations

import contextlib
import socket

from meshsec.agent.adapters import endpoints, follow, liveness, runtime
from meshsec.agent.adapters.ike import AdapterSettings, IkeAdapter
from meshsec.agent.adapters.recording import RecordingDataPlane
from meshsec.agent.adapters.records import ChildRecord, SaRecord
from meshsec.agent.adapters.status import child_status, closed_status, sa_status
from meshsec.agent.ike import Address, IkeConfig, IkeSa, State
from meshsec.agent.ike.config import ChildConfig
from meshsec.agent.ike.random import DeterministicRandom
from meshsec.agent.ike.states import ChildState
from meshsec.agent.ike.ts import Ts
from meshsec.agent.node.ike_port import SaPhase
from meshsec.common.secrets import Secret
from tests.agent_standalone.test_install import event

LOCAL, REMOTE = Address("198.18.60.1", 500), Address("198.18.60.2", 500)


def child(spi_in: int, *, name: str = "net", installed: bool = True, **kw: object) -> ChildRecord:
    return ChildRecord(event(spi_in=spi_in, name=name, **kw), LOCAL, REMOTE, installed=installed)


def test_children_left_behind_by_a_moved_ike_sa() -> None:
    here, moved = child(0xC1), child(0xC2)
    floated = Address(REMOTE.host, 4500)
    moves = follow.left_behind([here, moved], LOCAL, REMOTE)
    assert moves == []
    moves = follow.left_behind([here, moved], LOCAL.with_port(4500), floated)
    assert [m.old_key for m in moves] == [here.key, moved.key]
    assert moves[0].child is here


def test_inbound_counters_are_read_after_half_the_dpd_delay_of_silence() -> None:
    assert liveness.check_due(0, last_inbound=5.0, checked_at=0.0) is None  # no DPD: never
    assert liveness.check_due(10, last_inbound=5.0, checked_at=0.0) == 10.0
    assert liveness.check_due(10, last_inbound=5.0, checked_at=8.0) == 13.0  # checked since
    assert liveness.next_scan(100.0, []) == liveness.SCAN_MAX
    assert liveness.next_scan(100.0, [100.25, 103.0]) == 0.25
    assert liveness.next_scan(100.0, [90.0]) == liveness.SCAN_MIN  # overdue: soon, not in a spin
    assert liveness.moved(3, 4) and liveness.moved(4, 0) and not liveness.moved(4, 4)


def status_config() -> IkeConfig:
    net = ChildConfig("net", (Ts.from_cidr("198.19.60.0/24"),), (Ts.from_cidr("198.19.61.0/24"),))
    return IkeConfig("conn", "a.test", "b.test", Secret("psk"), children=(net,))


def test_status_of_an_sa_its_children_and_a_closed_one() -> None:
    config = status_config()
    sa = IkeSa(config, LOCAL, REMOTE, initiator=True, rnd=DeterministicRandom("status"))
    record = SaRecord(sa, None, created=12.0, handle=1)
    installing = child(0xC1, installed=False)
    record.children[0xC1] = installing
    counters = {"bytes_in": 1, "packets_in": 1, "bytes_out": 2, "packets_out": 2}
    doc = sa_status(record, {0xC1: counters}, dataplane=True)
    assert (doc["name"], doc["state"], doc["initiator"], doc["local"]) == (
        "conn",
        "CREATED",
        True,
        str(LOCAL),
    )
    (c,) = doc["child_sas"]  # type: ignore[misc]
    assert (c["state"], c["spi_in"], c["counters"]) == ("INSTALLING", "000000c1", counters)
    assert child_status(installing, None, dataplane=False)["state"] == "INSTALLED"  # nothing to install into
    record.outcome = "failed: internal error"
    closed = closed_status(record)
    assert closed["outcome"] == "failed: internal error" and closed["initiator_spi"] == sa.spi_i.hex()
    assert "redacted" not in str(doc) and "keys_in" not in str(doc)  # no key material in status


def test_every_engine_state_has_a_phase_in_the_reconcilers_view() -> None:
    # A state the engine adds must be placed in the view (ike_port.py) before it can appear.
    assert set(runtime._SA_PHASE) == set(State)
    assert set(runtime._CHILD_PHASE) == set(ChildState)


async def test_the_runtime_views_an_sa_and_ignores_commands_that_no_longer_apply() -> None:
    """A real adapter and engine without sockets: the initiation's datagram has nowhere to go,
    so the IKE SA stays CONNECTING until the reconciler's DELETE; commands for a handle whose
    SA is gone do nothing."""
    adapter = IkeAdapter(
        lambda local, remote: [], dataplane=RecordingDataPlane(), settings=AdapterSettings(bind=())
    )
    await adapter.start()
    try:
        ike = runtime.AdapterRuntime(adapter)
        await ike.initiate(status_config(), REMOTE, LOCAL)
        (view,) = ike.sas()
        assert (view.tunnel, view.phase, view.authenticated, view.children) == (
            "conn",
            SaPhase.CONNECTING,
            True,
            (),
        )
        assert adapter.stats["dropped_no_socket"] == 1
        ike.delete(view.handle)  # not established: forgotten at once
        assert ike.sas() == []
        for stale in (ike.delete, ike.drop, lambda h: ike.delete_child(h, 0xC1)):
            stale(view.handle)
        assert await ike.child_traffic(view.handle, 0xC1) is None
        assert [r.outcome for r in adapter.history] == ["deleted"]
    finally:
        await adapter.close(graceful=False)


def test_a_datagram_leaves_by_the_socket_bound_to_its_address_else_a_wildcard_one() -> None:
    assert endpoints.bind_plan(["0.0.0.0", "0:0::0", "::"], 500) == [
        Address("0.0.0.0", 500), Address("0.0.0.0", 4500), Address("::", 500), Address("::", 4500)
    ]  # fmt: skip
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM)) for _ in range(3)]
        exact = endpoints.Endpoint(sockets[0], Address("198.18.60.1", 4500))
        wild = endpoints.Endpoint(sockets[1], Address("0.0.0.0", 4500))
        ike = endpoints.Endpoint(sockets[2], Address("0.0.0.0", 500))
        all_ = [wild, exact, ike]
        assert endpoints.pick(all_, Address("198.18.60.1", 4500)) is exact
        assert endpoints.pick(all_, Address("198.18.60.9", 4500)) is wild
        assert endpoints.pick(all_, Address("198.18.60.1", 500)) is ike
        assert endpoints.pick(all_, Address("2001:db8::1", 500)) is None  # no IPv6 socket
