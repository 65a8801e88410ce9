"""`--log-format json`: every line on stderr is one JSON object, tracebacks included (as one
field, not as extra lines), and secrets stay redacted. Run in a child process so the real
stderr stream and handler setup are what is checked, as the commands do it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from meshsec.agent.cli import build_parser as agent_parser
from meshsec.controller.cli import _serve_parser as controller_parser
from meshsec.meshctl.cli import build_parser as meshctl_parser
from meshsec.meshctl.errors import UsageError

PSK = "correct-horse-battery-staple"
CHILD = f"""
import logging
from meshsec.common.logging import configure
from meshsec.common.secrets import Secret

configure("info", log_format="json")
log = logging.getLogger("meshsec.test")
psk = Secret({PSK!r})
log.info("tunnel t1 uses psk %s", psk, extra={{"psk": psk, "tunnel": "t1"}})
try:
    raise RuntimeError("boom\\nsecond line")
except RuntimeError:
    log.exception("reconcile pass failed for %s", psk)
log.warning('quotes " and newlines\\n stay inside the string')
"""


def run_child(code: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    assert done.stdout == ""
    return done.stderr.splitlines()


def test_json_lines_hold_tracebacks_and_redact_secrets() -> None:
    lines = run_child(CHILD)
    records = [json.loads(line) for line in lines]  # every line is one whole JSON object
    assert [r["level"] for r in records] == ["INFO", "ERROR", "WARNING"]
    assert all(r["logger"] == "meshsec.test" and r["ts"] for r in records)
    first, failed, quoted = records
    assert first["message"] == "tunnel t1 uses psk Secret(<28 bytes redacted>)"
    assert first["psk"] == "Secret(<28 bytes redacted>)" and first["tunnel"] == "t1"
    assert failed["exc_info"].startswith("Traceback (most recent call last):")
    assert failed["exc_info"].endswith("RuntimeError: boom\nsecond line")
    assert quoted["message"] == 'quotes " and newlines\n stay inside the string'
    assert PSK not in "\n".join(lines)


def test_text_format_is_the_default() -> None:
    lines = run_child(CHILD.replace('log_format="json"', 'log_format="text"'))
    assert " INFO    meshsec.test: tunnel t1 uses psk Secret(<28 bytes redacted>)" in lines[0]
    assert "Traceback (most recent call last):" in lines
    assert PSK not in "\n".join(lines)


@pytest.mark.parametrize(
    ("parser", "argv"),
    [
        (agent_parser, ["--log-format", "json", "--config", "x.yaml"]),
        (agent_parser, ["run", "--controller", "c:1", "--node", "n", "--state-dir", "s",
                        "--log-format", "json"]),
        (controller_parser, ["--log-format", "json"]),
        (meshctl_parser, ["--log-format", "json", "get", "nodes"]),
    ],
)
def test_every_command_takes_log_format(parser, argv) -> None:  # type: ignore[no-untyped-def]
    assert parser().parse_args(argv).log_format == "json"
    with pytest.raises((SystemExit, UsageError)):  # meshctl's parser raises its own error
        parser().parse_args([a if a != "json" else "xml" for a in argv])
