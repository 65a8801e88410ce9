"""A bug hit while handling one packet costs that packet and is logged with its traceback, once
per exception type and raising line per minute, not only counted (issue 18)."""

from __future__ import annotations

import logging
import socket
import types

import pytest

from meshsec.agent.dataplane.userspace.io import Readers


def _buggy_handler(packet: bytes) -> None:
    raise ZeroDivisionError(f"bug on a {len(packet)}-byte packet")


def test_reader_logs_a_packet_handling_bug_once(caplog: pytest.LogCaptureFixture) -> None:
    engine = types.SimpleNamespace(now=0.0)  # _reader only stamps the time on the engine
    readers = Readers(engine, out=None)  # type: ignore[arg-type]
    caplog.set_level(logging.ERROR, logger="meshsec.agent.dataplane.userspace.io")
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        b.setblocking(False)
        for n in range(3):
            a.send(bytes(20 + n))
        readers._reader(b, _buggy_handler)()
    assert readers.internal_errors == 3
    (record,) = [r for r in caplog.records if r.exc_info]
    assert record.exc_info is not None and record.exc_info[0] is ZeroDivisionError
    assert "_buggy_handler" in caplog.text
