"""An unexpected exception inside the engine fails that IKE SA closed (issue 16): IkeSaFailed
with INTERNAL_ERROR, every CHILD_SA reported deleted (so the data plane drops it), the SA in its
terminal state, counted and logged with the traceback. In strict mode (the whole suite's
default, see tests/conftest.py) the exception propagates instead."""

from __future__ import annotations

import logging

import pytest

from meshsec.agent.ike.events import ChildSaDeleted, ChildSaEstablished, IkeSaFailed
from meshsec.agent.ike.exchanges import informational
from meshsec.agent.ike.failures import FailureReason
from meshsec.agent.ike.sa import ChildState, State
from meshsec.agent.ike.states import TransitionError

from .peers import Pair, ike_config, of_type, responder_config


class _Bug(Exception):
    pass


def _break_liveness(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object) -> None:
        raise _Bug("a bug in the liveness check")

    monkeypatch.setattr(informational.Liveness, "build", broken)


def _established() -> Pair:
    p = Pair(ike_config(), [responder_config()])
    p.connect()
    assert p.initiator.established and len(of_type(p.events_i, ChildSaEstablished)) == 1
    return p


@pytest.mark.usefixtures("not_strict")
def test_a_bug_fails_the_sa_closed_and_reports_its_children(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    p = _established()
    (child,) = p.initiator.children.values()
    _break_liveness(monkeypatch)
    caplog.set_level(logging.ERROR, logger="meshsec.agent.ike.sa")
    p.initiator.check_liveness(p.now)
    p.pump()
    assert p.initiator.state is State.CLOSED and not p.initiator.children
    assert p.initiator.stats["internal_error"] == 1
    (deleted,) = of_type(p.events_i, ChildSaDeleted)
    assert (deleted.spi_in, deleted.spi_out) == (child.spi_in, child.spi_out)
    (failed,) = of_type(p.events_i, IkeSaFailed)
    assert failed.code is FailureReason.INTERNAL_ERROR
    assert p.events_i.index(deleted) < p.events_i.index(failed)  # children first, as on any close
    (record,) = [r for r in caplog.records if r.exc_info]
    assert record.exc_info is not None and record.exc_info[0] is _Bug
    # A closed SA stays closed: more input is dropped and counted, nothing is sent.
    p.initiator.check_liveness(p.now)
    p.initiator.handle_timer(p.now + 100)
    assert p.initiator.datagrams_to_send() == [] and p.initiator.next_timer() is None


def test_strict_mode_raises_the_bug(monkeypatch: pytest.MonkeyPatch) -> None:
    p = _established()
    _break_liveness(monkeypatch)
    with pytest.raises(_Bug):
        p.initiator.check_liveness(p.now)


def test_an_undeclared_transition_raises_in_strict_mode() -> None:
    p = _established()
    (child,) = p.initiator.children.values()
    with pytest.raises(TransitionError, match="INSTALLED -> INSTALLED"):
        child.move_to(ChildState.INSTALLED)
    with pytest.raises(TransitionError, match="ESTABLISHED -> CONNECTING"):
        p.initiator.move_to(State.CONNECTING)
    assert child.state is ChildState.INSTALLED and p.initiator.state is State.ESTABLISHED


@pytest.mark.usefixtures("not_strict")
def test_an_undeclared_transition_fails_the_sa_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    p = _established()

    def wrong_edge(self: informational.Liveness, sa: object, now: float) -> None:
        p.initiator.move_to(State.AUTHENTICATING)

    monkeypatch.setattr(informational.Liveness, "build", wrong_edge)
    p.initiator.check_liveness(p.now)
    p.pump()
    (failed,) = of_type(p.events_i, IkeSaFailed)
    assert failed.code is FailureReason.INTERNAL_ERROR and p.initiator.closed
