"""Dead peer detection (RFC 7296 2.4) with a fake clock: probes only after dpd_delay of silence,
a bounded time to declare the peer dead (dpd_delay + the retransmit schedule), and the
actions clear and restart (which keeps trying until the peer is back)."""

from __future__ import annotations

from meshsec.agent.ike.config import RetransmitConfig
from meshsec.agent.ike.events import (
    ChildSaDeleted,
    ChildSaEstablished,
    IkeSaEstablished,
    IkeSaFailed,
    InitialContactReceived,
    PeerDead,
)

from .lifecycle import Net
from .test_child_rekey import configs
from .test_ike_rekey import connected

FAST = RetransmitConfig(timeout=1.0, base=2.0, tries=3)  # gives up 1+2+4+8 = 15 s after sending


def test_probes_only_after_silence_and_a_live_peer_stays_up() -> None:
    net = connected({"dpd_delay": 10.0, "retransmit": FAST})
    sa = net.a.sa()
    net.advance(9)
    assert sa.stats["dpd_probes"] == 0
    net.advance(2)
    assert sa.stats["dpd_probes"] == 1
    net.advance(100)
    assert 9 <= sa.stats["dpd_probes"] <= 11  # one per dpd_delay of silence
    assert not net.a.of_type(IkeSaFailed) and not net.a.of_type(PeerDead)
    # B has no DPD configured: it only answers.
    assert net.b.sa().stats["dpd_probes"] == 0


def test_traffic_seen_postpones_probes() -> None:
    net = connected({"dpd_delay": 10.0})
    sa = net.a.sa()
    for _ in range(10):
        net.advance(5)
        sa.traffic_seen(net.now)  # the adapter saw inbound ESP
    assert sa.stats["dpd_probes"] == 0


def test_dead_peer_is_declared_within_dpd_delay_plus_retransmit_schedule() -> None:
    net = connected({"dpd_delay": 10.0, "retransmit": FAST})
    silent_since = net.now
    net.filter = lambda direction, d: False  # the peer vanished (and so did its answers)
    for _ in range(200):
        net.advance(0.5)
        if net.a.of_type(IkeSaFailed):
            break
    (failed,) = net.a.of_type(IkeSaFailed)
    assert "dead peer detection" in failed.reason
    assert net.a.of_type(PeerDead) == [PeerDead("clear")]
    # Probe at 10 s, retransmits at +1, +3, +7, give up at +15: dead at 25 s (+ one tick).
    assert 25.0 <= net.now - silent_since <= 25.5
    assert len(net.a.of_type(ChildSaDeleted)) == 1 and net.a.sas() == []
    assert net.a.dp.installed_pairs() == 0


def test_restart_keeps_trying_until_the_peer_returns() -> None:
    a_cfg, _ = configs(dpd_delay=5.0, dpd_action="restart", retransmit=FAST)
    _, b_cfg = configs()  # B only answers (with DPD on both ends, both would restart)
    net = Net([a_cfg], [b_cfg])
    net.a.connect(a_cfg, net.b.addr, net.now)
    net.settle()
    first = net.a.sa()
    net.filter = lambda direction, d: False
    net.advance(60)  # dead at ~20 s, then restarts every ~15 s while B is unreachable
    assert net.a.of_type(PeerDead)[0] == PeerDead("restart")
    assert first.closed
    restarts = sum(sa.stats["restarted"] for sa in net.a.events_sas())
    assert restarts >= 2
    net.filter = None  # B is back (it still has the old SAs: INITIAL_CONTACT tells it)
    net.advance(20)
    live = net.a.sa()
    assert live is not first and live.established and live.restarts >= 1
    assert len(net.a.of_type(IkeSaEstablished)) == 2
    assert len(net.a.of_type(ChildSaEstablished)) == 2
    assert net.a.dp.installed_pairs() == 1
    # B learns from INITIAL_CONTACT that A forgot the old SAs (the adapter then drops them).
    assert net.b.of_type(InitialContactReceived)
