"""`meshctl version` shows its own release and the controller's; an unreachable controller is an
error after the client's line (kubectl-style), and `--client` makes no call at all."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meshsec.common.version import VERSION
from meshsec.meshctl.cli import main
from meshsec.meshctl.errors import EXIT_OK
from tests.release.pins import project


def test_version_reports_the_controller_it_reached(
    controller: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert project()["version"] == VERSION
    assert main(["--controller", str(controller), "version"]) == EXIT_OK
    assert capsys.readouterr().out.splitlines() == [
        f"meshctl:    {VERSION}",
        f"controller: {VERSION} (replica t)",
    ]
    assert main(["--controller", str(controller), "version", "-o", "json"]) == EXIT_OK
    assert json.loads(capsys.readouterr().out) == {"meshctl": VERSION, "controller": VERSION, "replica": "t"}


def test_version_without_a_controller(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    absent = str(tmp_path / "admin.sock")
    assert main(["--controller", absent, "version"]) != EXIT_OK
    captured = capsys.readouterr()
    assert captured.out == f"meshctl:    {VERSION}\n"
    assert "cannot reach the controller" in captured.err
    assert main(["--controller", absent, "version", "--client"]) == EXIT_OK
    assert capsys.readouterr().out == f"meshctl:    {VERSION}\n"
