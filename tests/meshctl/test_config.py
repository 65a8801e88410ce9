"""meshctl's contexts file: set/use/get/delete contexts, where the file is found, its mode, and
clear errors for a broken file or an unknown context (no controller is needed)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
import yaml

from meshsec.meshctl.cli import main


def test_contexts_are_set_used_listed_and_deleted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "meshsec" / "config"
    (tmp_path / "ca.pem").write_text("ca")
    (tmp_path / "me.pem").write_text("cert")
    (tmp_path / "me-key.pem").write_text("key")

    def meshctl(*args: str) -> int:
        return main(["--config", str(config), "config", *args])

    assert meshctl("set-context", "prod", "--server", "198.18.0.1:7443") == 0
    assert meshctl("set-context", "lab", "--server", "unix:/run/meshsec-lab/admin.sock") == 0
    assert meshctl(
        "set-context", "prod", "--ca", str(tmp_path / "ca.pem"), "--cert", str(tmp_path / "me.pem"),
        "--key", str(tmp_path / "me-key.pem"), "--server-name", "ctl.example.net",
    ) == 0  # fmt: skip
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    capsys.readouterr()
    assert meshctl("view", "-o", "json") == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["current-context"] == "prod"  # the first context becomes current
    assert doc["contexts"][0] == {
        "name": "prod",
        "server": "198.18.0.1:7443",
        "ca": str((tmp_path / "ca.pem").resolve()),  # outside the config's folder: absolute
        "cert": str((tmp_path / "me.pem").resolve()),
        "key": str((tmp_path / "me-key.pem").resolve()),
        "server-name": "ctl.example.net",
    }
    assert meshctl("use-context", "lab") == 0
    assert capsys.readouterr().out == "switched to context lab\n"
    assert meshctl("get-contexts") == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[0].split()[:3] == ["CURRENT", "NAME", "SERVER"]
    assert [r.split()[:2] for r in rows[2:]] == [["*", "lab"]] and rows[1].split()[0] == "prod"
    assert meshctl("current-context") == 0 and capsys.readouterr().out == "lab\n"
    assert meshctl("use-context", "nope") == 2
    err = capsys.readouterr().err
    assert "no context 'nope'" in err and "(contexts: lab, prod)" in err
    assert meshctl("delete-context", "lab") == 0
    assert yaml.safe_load(config.read_text())["current-context"] == ""
    assert meshctl("set-context", "new") == 2  # a new context needs --server
    assert "--server is required" in capsys.readouterr().err


def test_meshconfig_env_and_broken_files_are_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "elsewhere"
    monkeypatch.setenv("MESHCONFIG", str(config))
    assert main(["config", "set-context", "a", "--server", "198.18.0.1:7443"]) == 0
    assert yaml.safe_load(config.read_text())["contexts"][0]["name"] == "a"
    config.write_text("contexts:\n- name: a\n  server: x:1\n  token: nope\n")
    capsys.readouterr()
    assert main(["get", "sites"]) == 2
    assert "contexts[0]: unknown field(s) token" in capsys.readouterr().err
    config.write_text("contexts: [")
    assert main(["--context", "a", "get", "sites"]) == 2
    assert "not valid YAML" in capsys.readouterr().err
