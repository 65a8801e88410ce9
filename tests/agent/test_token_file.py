"""The bootstrap token file as `meshsec-agent run` reads it: an empty one is a configuration error
naming the file (exit code EXIT_CONFIG), after the agent started and stopped cleanly (IKE on
127.77.9.1, recording data plane; the bootstrap listener is never contacted)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from meshsec.agent.cli import EXIT_CONFIG, run_until_stopped
from meshsec.agent.node.agent import NodeAgentConfig, read_token, run
from meshsec.agent.node.credentials import EnrollmentError


def config(tmp_path: Path, token: bytes) -> NodeAgentConfig:
    token_file = tmp_path / "node.token"
    token_file.write_bytes(token)
    ca = tmp_path / "ca.pem"
    ca.write_text("not used: the token is read first\n")
    return NodeAgentConfig(
        controller="127.0.0.1:1",
        bootstrap="127.0.0.1:1",
        node="nt",
        state_dir=tmp_path / "state",
        token_file=token_file,
        ca_file=ca,
        dataplane="none",
        ike_port=15620,
        bind=("127.77.9.1",),
        addresses=("127.77.9.1",),
    )


@pytest.mark.timeout(30)
@pytest.mark.parametrize("content", [b"", b"\n", b"  \n\n"])
def test_an_empty_token_file_is_a_config_error_naming_it(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = config(tmp_path, content)
    with caplog.at_level(logging.ERROR, logger="meshsec.agent"):
        assert run_until_stopped(run(cfg), config_errors=(EnrollmentError,)) == EXIT_CONFIG
    assert f"bootstrap token file {cfg.token_file} is empty" in caplog.text


def test_the_token_is_the_first_line(tmp_path: Path) -> None:
    path = tmp_path / "t"
    path.write_bytes(b"\n  tok-123  \nsecond line\n")
    assert read_token(path).reveal() == b"tok-123"
