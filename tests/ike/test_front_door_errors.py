"""Unexpected exceptions at the responder's front door are counted AND logged with their
traceback, once per exception type and raising line per minute (issue 18): production must see
a bug, and a flood of one bug must not flood the log."""

from __future__ import annotations

import logging

import pytest

from meshsec.agent.ike.address import Address
from meshsec.agent.ike.random import DeterministicRandom
from meshsec.agent.ike.responder import Responder
from meshsec.agent.ike.sa import IkeSa
from meshsec.common.errorlog import ExceptionLog

from .peers import ike_config

LOCAL, REMOTE = Address("198.18.7.1", 500), Address("198.18.7.2", 500)


def _init(seed: str) -> bytes:
    sa = IkeSa(ike_config(), REMOTE, LOCAL, initiator=True, rnd=DeterministicRandom(seed))
    sa.initiate(0.0)
    (d,) = sa.datagrams_to_send()
    return d.data


def _broken_lookup(local: Address, remote: Address) -> list[object]:
    raise KeyError("a bug in the config lookup")


@pytest.mark.usefixtures("not_strict")
def test_front_door_logs_each_distinct_bug_once_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    responder = Responder(_broken_lookup, rnd=DeterministicRandom("r"))  # type: ignore[arg-type]
    caplog.set_level(logging.ERROR, logger="meshsec.agent.ike.responder")
    for n, now in enumerate((10.0, 11.0, 12.0, 75.0)):
        assert responder.accept(_init(f"i{n}"), LOCAL, REMOTE, now, 0) is None
    assert responder.stats["internal_error"] == 4
    logged = [r for r in caplog.records if r.name == "meshsec.agent.ike.responder"]
    assert len(logged) == 2  # at 10 s, then a minute later (with the two it held back)
    assert all(r.exc_info and r.exc_info[0] is KeyError for r in logged)
    assert "2 more like it" in logged[1].getMessage()
    assert "_broken_lookup" in caplog.text  # the traceback names where it happened


def test_distinct_exceptions_are_each_logged(caplog: pytest.LogCaptureFixture) -> None:
    errors = ExceptionLog(logging.getLogger("test.errorlog"), clock=lambda: 0.0)
    caplog.set_level(logging.ERROR, logger="test.errorlog")
    for exc in (ValueError("a"), ValueError("b"), TypeError("c")):
        try:
            raise exc
        except Exception:
            errors.report("work")
    try:
        raise ValueError("other line")
    except Exception:
        errors.report("work")
    assert [r.exc_info[0] for r in caplog.records if r.exc_info] == [ValueError, TypeError, ValueError]
