"""A peer's ID is its own choice of bytes: rendered for humans (events, failure reasons, logs) it
shows control characters escaped, while matching a configuration still uses the raw bytes."""

from __future__ import annotations

import logging

import pytest

from meshsec.agent.ike.constants import IdType
from meshsec.agent.ike.events import IkeSaEstablished, IkeSaFailed
from meshsec.agent.ike.identity import Identity, printable
from tests.ike.peers import Pair, ike_config, of_type, responder_config

# A newline forging a second log line, then ANSI escapes that clear the screen and colour text.
HOSTILE = "@alice.example\nINFO forged line\x1b[2J\x1b[31m"


def shows_no_control(text: str) -> bool:
    return text.isprintable()


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("alice.example", "alice.example"),
        ("a\nb", "a\\x0ab"),
        ("\x1b[31m", "\\x1b[31m"),
        ("tab\there\x7f", "tab\\x09here\\x7f"),
        ("back\\x0aslash", "back\\\\x0aslash"),  # a literal backslash cannot pose as an escape
        ("r\u202etl", "r\\u202etl"),  # bidi override
        ("bücher.example", "bücher.example"),
    ],
)
def test_printable(raw: str, shown: str) -> None:
    assert printable(raw) == shown


def test_undecodable_bytes_show_as_hex() -> None:
    assert str(Identity(IdType.FQDN, b"x\xff\xfey")) == "x\\xff\\xfey"
    assert str(Identity(IdType.RFC822_ADDR, b"a@b\r\n")) == "a@b\\x0d\\x0a"


def test_hostile_id_is_matched_raw_and_shown_escaped(caplog: pytest.LogCaptureFixture) -> None:
    pair = Pair(ike_config(local_id=HOSTILE), [responder_config(remote_id=HOSTILE)])
    with caplog.at_level(logging.DEBUG):
        pair.connect()
    [est] = of_type(pair.events_r, IkeSaEstablished)
    raw = Identity.parse(HOSTILE)
    assert pair.responder.remote_identity == raw  # the configured raw ID matched
    assert est.remote_id == "alice.example\\x0aINFO forged line\\x1b[2J\\x1b[31m"
    assert of_type(pair.events_i, IkeSaEstablished)[0].local_id == est.remote_id
    assert all(shows_no_control(r.getMessage()) for r in caplog.records)


def test_hostile_id_in_a_failure_reason_is_escaped() -> None:
    pair = Pair(ike_config(local_id=HOSTILE), [responder_config(remote_id="someone.else")])
    pair.connect()
    [failed] = of_type(pair.events_r, IkeSaFailed)
    assert "alice.example\\x0aINFO forged line\\x1b[2J" in failed.reason
    assert shows_no_control(failed.reason)
