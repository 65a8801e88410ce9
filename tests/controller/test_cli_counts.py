"""`meshsec-controller token create` checks its counts before building the request."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshsec.controller.cli import main


@pytest.mark.parametrize("option", ["--uses", "--ttl"])
@pytest.mark.parametrize("value", ["-1", str(1 << 32)])
def test_token_create_refuses_counts_protobuf_cannot_carry(
    option: str, value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    socket = str(tmp_path / "none.sock")
    with pytest.raises(SystemExit) as exited:
        main(["token", "create", "node-a", "--site", "dc1", "--admin-socket", socket, option, value])
    assert exited.value.code == 2
    assert f"argument {option}" in capsys.readouterr().err
