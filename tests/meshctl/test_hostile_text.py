"""A node cannot write terminal control sequences through meshctl.

A hostile agent enrolls with a hostname and agent version full of ESC/CSI/OSC, C1 and bidi
characters and reports a failed tunnel whose error says the same; meshctl's tables, describe,
events (table and --watch lines) and error messages show those characters escaped, while its
own colours (forced on as for a terminal) still come through.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from meshsec.controller.mesh import tunnel_id
from meshsec.controller.server import Controller
from meshsec.meshctl import cli
from meshsec.meshctl.errors import UserError
from meshsec.meshctl.events import event_line
from meshsec.meshctl.printable import printable
from meshsec.meshctl.table import Column, Styled, render
from meshsec.v1 import admin_pb2, agent_pb2, agent_pb2_grpc, common_pb2
from tests.controller.ctl_harness import (
    CALL_TIMEOUT,
    EnrolledNode,
    bootstrap_channel,
    create_token,
    join,
    running_controller,
)
from tests.controller.test_mesh_support import policy, site
from tests.harness.tls import new_key_and_csr

pytestmark = pytest.mark.timeout(60)

# Retitle the window (OSC), clear the screen (CSI), a C1 CSI, a bell, a carriage return that
# would overwrite the line, a newline that would forge one, and a right-to-left override.
HOSTILE = "x\x1b]0;owned\x07\x1b[2J\x9b31m\rfake\nline\u202eevil\x00"
ESCAPED = "x\\x1b]0;owned\\x07\\x1b[2J\\x9b31m\\x0dfake\\x0aline\\u202eevil\\x00"
OUR_COLOURS = re.compile(r"\x1b\[(?:0|1|31|32|33|36|90)m")


def assert_safe(text: str) -> None:
    """Nothing but meshctl's own SGR colour codes, printable characters and line breaks."""
    rest = OUR_COLOURS.sub("", text)
    assert all(c.isprintable() or c == "\n" for c in rest), repr(rest)


def test_printable_escapes_every_control_character_and_nothing_else() -> None:
    assert printable(HOSTILE) == ESCAPED
    assert printable("dc1-gw1 ünïcode 東京 v1.2") == "dc1-gw1 ünïcode 东京 v1.2".replace("东", "東")
    assert printable("a\nb\x1b", keep_newlines=True) == "a\nb\\x1b"
    assert printable("\U000e0001") == "\\U000e0001"  # a tag character (format, invisible)
    for code in [*range(0x20), 0x7F, *range(0x80, 0xA0)]:
        assert printable(chr(code)).startswith("\\x")


def test_tables_measure_and_print_the_escaped_text_and_keep_colour() -> None:
    table = render(
        [Column("NAME"), Column("STATE")],
        [[HOSTILE, Styled("FAILED", "red")], ["ok", Styled("UP", "green")]],
        colour=True,
    )
    assert_safe(table)
    assert ESCAPED in table and "\x1b[31mFAILED\x1b[0m" in table and "\x1b[32mUP\x1b[0m" in table
    plain = render([Column("NAME"), Column("STATE")], [[HOSTILE, "FAILED"], ["ok", "UP"]])
    lines = plain.splitlines()
    assert len(lines) == 3 and lines[1].index("FAILED") == lines[2].index("UP")  # aligned


def test_event_lines_and_error_reports_are_escaped() -> None:
    event = admin_pb2.Event(reason="TunnelFailed", message=HOSTILE, type=admin_pb2.EVENT_TYPE_WARNING)
    event.involved.kind, event.involved.name = "Tunnel", HOSTILE
    line = event_line(event)
    assert_safe(line) and "\n" not in line
    assert line.count(ESCAPED) == 2

    class Tty:
        def __init__(self) -> None:
            self.text = ""

        def write(self, text: str) -> int:
            self.text += text
            return len(text)

        def isatty(self) -> bool:
            return True

    out = Tty()
    cli.report(UserError(f"apply: {HOSTILE}\n  second line", hint=HOSTILE), out)  # type: ignore[arg-type]
    assert_safe(out.text)
    # Errors keep line breaks (meshctl lays out validation problems one per line); nothing else.
    kept = ESCAPED.replace("\\x0a", "\n")
    assert out.text == f"\x1b[31merror:\x1b[0m apply: {kept}\n  second line\n\x1b[33mhint:\x1b[0m {kept}\n"


async def _enroll_hostile(ctl: Controller, name: str) -> EnrolledNode:
    key, csr = new_key_and_csr(name)
    facts = agent_pb2.NodeFacts(
        addresses=[common_pb2.Endpoint(address="198.18.0.9", scope=common_pb2.ADDRESS_SCOPE_PRIVATE)],
        agent_version=HOSTILE,
        hostname=HOSTILE,
    )
    async with bootstrap_channel(ctl) as channel:
        response = await agent_pb2_grpc.AgentServiceStub(channel).Enroll(
            agent_pb2.EnrollRequest(
                bootstrap_token=await create_token(ctl, "dc1", name),
                node_name=name,
                csr_pem=csr.decode(),
                facts=facts,
            ),
            timeout=CALL_TIMEOUT,
        )
    return EnrolledNode(
        name, key, response.certificate_pem.encode(), response.ca_bundle_pem.encode(), response
    )


async def test_meshctl_against_a_real_controller_escapes_what_a_hostile_node_sends(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.delenv("NO_COLOR", raising=False)
    async with running_controller(
        tmp_path,
        site("dc1", ["198.19.1.0/24"]),
        site("dc2", ["198.19.2.0/24"]),
        policy("mesh", "full-mesh", "node"),
    ) as ctl:
        evil = await _enroll_hostile(ctl, "evil")
        await join(ctl, "dc2", "good", "198.18.0.2")
        tid = tunnel_id("MeshPolicy/mesh", "evil", "good")
        failed = agent_pb2.TunnelStatus(tunnel_id=tid, peer_name="good", state=common_pb2.TUNNEL_STATE_FAILED)
        failed.last_error.reason, failed.last_error.message = HOSTILE, HOSTILE
        report = agent_pb2.StatusReport(
            node_name="evil", agent_instance_id="i", seq=1, full=True, tunnels=[failed]
        )
        report.node.facts.agent_version = HOSTILE
        report.node.facts.hostname = HOSTILE
        async with evil.channel(ctl) as channel:
            await agent_pb2_grpc.AgentServiceStub(channel).ReportStatus(report, timeout=CALL_TIMEOUT)
        assert ctl.config.admin_socket is not None
        socket = str(ctl.config.admin_socket)

        async def meshctl(*args: str) -> str:
            # meshctl is synchronous; in a thread so this loop keeps serving it.
            assert await asyncio.to_thread(cli.main, ["--controller", socket, *args]) == 0
            captured = capsys.readouterr()
            assert_safe(captured.out)
            assert_safe(captured.err)
            return captured.out

        wide = await meshctl("get", "nodes", "-o", "wide")
        assert ESCAPED in wide and "\x1b[32myes\x1b[0m" in wide  # the agent version; our colour
        tunnels = await meshctl("get", "tunnels", "-o", "wide")
        assert ESCAPED in tunnels and "\x1b[31mFAILED\x1b[0m" in tunnels
        node = await meshctl("describe", "node", "evil")
        assert f"Agent:        {ESCAPED}" in node and f"meshsec.io/hostname={ESCAPED}" in node
        assert f"evil (evil <-> good): {ESCAPED} {ESCAPED}" in node  # last errors
        tunnel = await meshctl("describe", "tunnel", tid)
        assert f"last error: {ESCAPED} {ESCAPED}" in tunnel
        events = await meshctl("events")
        assert f"evil: tunnel to good failed {ESCAPED}: {ESCAPED}" in events
        dot = await meshctl("topology")
        assert "evil" in dot
