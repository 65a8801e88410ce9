"""`meshctl token create` tells the operator how to start the agent: that command line must be
one the agent's real parser accepts, with the token where the agent reads it."""

from __future__ import annotations

from pathlib import Path

from meshsec.agent.cli import build_parser
from meshsec.meshctl.commands import agent_enroll_argv


def test_enroll_hint_parses_with_the_agents_own_parser() -> None:
    argv = agent_enroll_argv("dc1-gw1", "ab" * 32)
    assert argv[0] == "meshsec-agent"
    args = build_parser().parse_args(argv[1:])
    assert args.command == "run" and args.node == "dc1-gw1"
    assert args.token_file == Path("/etc/meshsec/token") and args.ca_sha256 == "ab" * 32
    assert args.state_dir == Path("/var/lib/meshsec") and args.bootstrap
