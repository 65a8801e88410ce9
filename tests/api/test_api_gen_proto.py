"""`.ci/gen-proto --check`: passes on the committed tree, fails loudly when a .proto changed alone."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ENV_PYTHON = {"PYTHON": sys.executable}


def _run(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(root / ".ci" / "gen-proto"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", **ENV_PYTHON},
        check=False,
    )


def _copy_of_repo_proto(tmp_path: Path) -> Path:
    (tmp_path / ".ci").mkdir()
    shutil.copy2(REPO / ".ci" / "gen-proto", tmp_path / ".ci" / "gen-proto")
    shutil.copytree(REPO / "proto", tmp_path / "proto", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(REPO / "pyproject.toml", tmp_path / "pyproject.toml")  # gen-proto reads its pin there
    return tmp_path


def test_committed_generated_code_is_current() -> None:
    result = _run(REPO, "--check")
    assert result.returncode == 0, result.stderr
    assert "current" in result.stdout


def test_check_names_the_stale_file_when_a_proto_changed(tmp_path: Path) -> None:
    root = _copy_of_repo_proto(tmp_path)
    agent_proto = root / "proto" / "meshsec" / "v1" / "agent.proto"
    agent_proto.write_text(
        agent_proto.read_text().replace("message StatusAck {", "message StatusAck {\n  string note = 99;")
    )
    result = _run(root, "--check")
    assert result.returncode == 1
    assert "proto/meshsec/v1/agent_pb2.py is stale" in result.stderr
    assert "run .ci/gen-proto" in result.stderr

    regenerated = _run(root)
    assert regenerated.returncode == 0, regenerated.stderr
    assert _run(root, "--check").returncode == 0


def test_check_notices_generated_code_without_a_source(tmp_path: Path) -> None:
    root = _copy_of_repo_proto(tmp_path)
    (root / "proto" / "meshsec" / "v1" / "gone_pb2.py").write_text("# left behind\n")
    result = _run(root, "--check")
    assert result.returncode == 1
    assert "gone_pb2.py has no .proto source" in result.stderr
