"""Release artefacts: `python -m build` gives an sdist and a wheel (the wheel built from the sdist,
so the sdist is complete); the wheel, installed with a role's lock into a new virtualenv, runs that
role's commands and imports every module from the installation, never from the source tree.

Each virtualenv gets exactly requirements/<role>.txt, so a role extra that lacks a package its
code imports fails here, not on a user's host."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.release.pins import LOCKS, REPO, project

pytestmark = pytest.mark.slow
IMPORT_ALL = Path(__file__).with_name("import_all.py")
VERSION = str(project()["version"])


def _run(argv: Sequence[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    return subprocess.run(
        list(argv), cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


def _ok(argv: Sequence[str], cwd: Path, timeout: float = 600) -> str:
    result = _run(argv, cwd, timeout)
    assert result.returncode == 0, (
        f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    )
    return result.stdout


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("dist")
    # --no-isolation: the build backend is the locked setuptools of this environment.
    _ok([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(REPO)], out)
    (sdist,) = out.glob("meshsec-*.tar.gz")
    (wheel,) = out.glob("meshsec-*.whl")
    assert sdist.name == f"meshsec-{VERSION}.tar.gz" and wheel.name.startswith(f"meshsec-{VERSION}-")
    return {"sdist": sdist, "wheel": wheel, "cache": tmp_path_factory.mktemp("pip-cache")}


def _install(role: str, dist: dict[str, Path], where: Path) -> Path:
    venv.create(where, with_pip=True)
    python = where / "bin" / "python"
    # One pip cache for this test run only: the roles share downloads, nothing comes from earlier runs.
    pip = [str(python), "-m", "pip", "install", "-q", "--cache-dir", str(dist["cache"])]
    _ok([*pip, "--require-hashes", "-r", str(LOCKS / f"{role}.txt")], where)
    _ok([*pip, "--no-deps", str(dist["wheel"])], where)
    return where / "bin"


def _import_all(bin_dir: Path, cwd: Path, *packages: str) -> str:
    """Imports every module of `packages` with the venv's Python in isolated mode (not the source tree)."""
    return _ok([str(bin_dir / "python"), "-I", str(IMPORT_ALL), *packages], cwd)


def test_wheel_with_every_role_runs_all_commands_and_imports_everything(
    dist: dict[str, Path], tmp_path: Path
) -> None:
    bin_dir = _install("all", dist, tmp_path / "venv")
    versions = {
        name: _ok([str(bin_dir / name), "--version"], tmp_path).strip()
        for name in ("meshsec-controller", "meshsec-agent", "meshctl")
    }
    assert versions == {name: f"{name} {VERSION}" for name in versions}
    assert _ok([str(bin_dir / "meshctl"), "version", "--client"], tmp_path).split() == ["meshctl:", VERSION]
    report = _import_all(
        bin_dir,
        tmp_path,
        "meshsec.common",
        "meshsec.v1",
        "meshsec.agent",
        "meshsec.controller",
        "meshsec.meshctl",
    )
    assert "imported" in report
    # The generated API ships with its type stubs and marker (package_data).
    listing = _ok([str(bin_dir / "python"), "-m", "pip", "show", "-f", "meshsec"], tmp_path)
    assert "meshsec/v1/admin_pb2_grpc.pyi" in listing and "meshsec/v1/py.typed" in listing
    operator = _run([str(bin_dir / "python"), "-I", "-m", "meshsec.controller.operator", "--help"], tmp_path)
    assert operator.returncode == 0, operator.stderr


def test_agent_role_alone(dist: dict[str, Path], tmp_path: Path) -> None:
    bin_dir = _install("agent", dist, tmp_path / "venv")
    assert _ok([str(bin_dir / "meshsec-agent"), "--version"], tmp_path).strip() == f"meshsec-agent {VERSION}"
    _import_all(
        bin_dir,
        tmp_path,
        "meshsec.common",
        "meshsec.v1",
        "meshsec.agent",
        "meshsec.meshctl",
        "--skip=meshsec.meshctl.lab",
    )
    # What the agent host lacks is refused with the extra to install, not an ImportError.
    refused = _run([str(bin_dir / "python"), "-I", "-m", "meshsec.controller.operator", "--help"], tmp_path)
    assert refused.returncode == 2
    assert "pip install 'meshsec[operator]'" in refused.stderr and "Traceback" not in refused.stderr
    etcd = _run([str(bin_dir / "meshsec-controller"), "--store", "etcd://127.0.0.1:1"], tmp_path)
    assert etcd.returncode == 2 and "pip install 'meshsec[controller]'" in etcd.stderr


def test_controller_role_alone(dist: dict[str, Path], tmp_path: Path) -> None:
    bin_dir = _install("controller", dist, tmp_path / "venv")
    out = _ok([str(bin_dir / "meshsec-controller"), "--version"], tmp_path)
    assert out.strip() == f"meshsec-controller {VERSION}"
    _import_all(
        bin_dir,
        tmp_path,
        "meshsec.common",
        "meshsec.v1",
        "meshsec.controller",
        "meshsec.meshctl",
        "--skip=meshsec.controller.operator",
        "--skip=meshsec.meshctl.lab",
    )
    refused = _run(
        [
            str(bin_dir / "meshsec-agent"),
            "run",
            "--controller",
            "x:1",
            "--node",
            "n",
            "--state-dir",
            str(tmp_path / "state"),
        ],
        tmp_path,
    )
    assert refused.returncode == 2
    assert "pip install 'meshsec[agent]'" in refused.stderr and "Traceback" not in refused.stderr


def test_sdist_carries_the_sources_the_wheel_needs(dist: dict[str, Path], tmp_path: Path) -> None:
    import tarfile

    with tarfile.open(dist["sdist"]) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    for needed in (
        "pyproject.toml",
        "setup.py",
        "README.md",
        "proto/meshsec/v1/admin.proto",
        "agent/ike/__init__.py",
        "controller/cli.py",
    ):
        assert needed in names, f"sdist lacks {needed}"
    assert json.dumps(sorted(n for n in names if n.startswith("tests/"))) == "[]", "tests do not ship"
