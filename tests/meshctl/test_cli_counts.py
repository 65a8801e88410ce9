"""Counts that go into uint32 request fields are checked by the argument parser."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshsec.meshctl.cli import main


@pytest.mark.parametrize("option", ["--uses", "--ttl"])
@pytest.mark.parametrize("value", ["-1", str(1 << 32)])
def test_token_create_refuses_counts_protobuf_cannot_carry(
    option: str, value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    socket = f"unix:{tmp_path / 'none.sock'}"
    assert main(["--controller", socket, "token", "create", "node-a", "--site", "dc1", option, value]) == 2
    err = capsys.readouterr().err
    assert option in err and "Traceback" not in err
