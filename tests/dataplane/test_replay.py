"""Anti-replay window (RFC 4303 3.4.3) and ESN inference (Appendix A2) including the 2^32 wrap."""

from __future__ import annotations

from meshsec.agent.dataplane.userspace.replay import MIN_WINDOW, ReplayWindow


def receive(w: ReplayWindow, seq_low: int) -> int:
    seq = w.infer(seq_low)
    if seq >= 0:
        assert w.accept(seq)
    return seq


def test_in_order_duplicates_and_reordering() -> None:
    w = ReplayWindow(64, esn=False)
    for s in range(1, 11):
        assert receive(w, s) == s
    assert w.infer(5) == -1  # duplicate
    assert receive(w, 20) == 20
    assert receive(w, 15) == 15  # late but inside the window and new
    assert w.infer(15) == -1
    assert w.infer(0) == -1  # sequence number 0 is never sent


def test_window_edge() -> None:
    w = ReplayWindow(64, esn=False)
    receive(w, 100)
    assert w.infer(100 - 64) == -1  # just left the window
    assert receive(w, 100 - 63) == 37  # last slot inside it
    receive(w, 1000)  # a jump larger than the window clears the bitmap
    assert w.bitmap == 1
    assert receive(w, 999) == 999


def test_minimum_window_size() -> None:
    assert ReplayWindow(32, esn=True).size == MIN_WINDOW
    assert ReplayWindow(1024, esn=True).size == 1024


def test_accept_refuses_racing_duplicate() -> None:
    w = ReplayWindow(64, esn=False)
    seq = w.infer(3)
    assert w.accept(seq)
    assert not w.accept(seq)


def test_esn_wraps_into_next_subspace() -> None:
    w = ReplayWindow(128, esn=True)
    top = (1 << 32) - 10
    assert receive(w, top) == top
    # Low bits wrapped: the high 32 bits are inferred as 1.
    assert receive(w, 5) == (1 << 32) | 5
    # A late packet from before the wrap still maps to subspace 0 (window straddles).
    assert receive(w, 0xFFFFFFF8) == 0xFFFFFFF8
    assert w.infer(0xFFFFFFF8) == -1
    # Far below the bottom of a straddling window: belongs to subspace 1 and is new.
    assert w.infer(0x1000) == (1 << 32) | 0x1000


def test_esn_window_within_one_subspace() -> None:
    w = ReplayWindow(64, esn=True)
    base = (7 << 32) | 1000
    w.top = base
    w.bitmap = 1
    assert w.infer(990) == (7 << 32) | 990
    # Below the bottom of a window that does not straddle: the next subspace.
    assert w.infer(10) == (8 << 32) | 10
