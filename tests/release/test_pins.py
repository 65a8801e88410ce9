"""The lock files, pyproject.toml's ranges and the generated gRPC code agree with each other.

A drift here is what made `.ci/gen-proto --check` fail on every fresh machine when a new
grpcio-tools was released: these tests fail on the commit that introduces such a drift instead.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from meshsec.common.extras import EXTRAS
from tests.release.pins import REPO, ROLES, base_requirements, extra_requirements, lock_pins, project

GENERATED = REPO / "proto" / "meshsec" / "v1"


def _lower_bound(req: Requirement) -> Version:
    bounds = [Version(s.version) for s in req.specifier if s.operator in (">=", "==")]
    assert len(bounds) == 1, f"{req} needs exactly one lower bound"
    return bounds[0]


def _named(reqs: list[Requirement], name: str) -> Requirement:
    (req,) = [r for r in reqs if canonicalize_name(r.name) == name]
    return req


@pytest.mark.parametrize("role", ROLES)
def test_every_lock_satisfies_the_ranges_of_its_role(role: str) -> None:
    pins = lock_pins(role)
    wanted = base_requirements() + extra_requirements(role)
    for req in wanted:
        name = canonicalize_name(req.name)
        assert name in pins, f"requirements/{role}.txt lacks {req.name} (run bash .ci/lock)"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"requirements/{role}.txt pins {req.name}=={pins[name]}, outside pyproject's {req}"
        )


def test_every_lock_has_the_dev_locks_versions() -> None:
    dev = lock_pins("dev")
    for role in (*ROLES, "build"):
        for name, version in lock_pins(role).items():
            assert dev.get(name) == version, f"{role}.txt pins {name}=={version}, dev.txt {dev.get(name)}"


def test_locks_carry_hashes_for_every_pin() -> None:
    for role in (*ROLES, "build"):
        text = (REPO / "requirements" / f"{role}.txt").read_text()
        blocks = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 2)[2])
        for block in blocks:
            if "==" in block.split("\n", 1)[0]:
                assert "--hash=sha256:" in block, f"{role}.txt: no hash for {block.splitlines()[0]}"


def test_the_build_backend_is_locked() -> None:
    dev, build = lock_pins("dev"), lock_pins("build")
    for name in ("pip", "setuptools", "wheel", "build"):
        assert name in dev, f"dev.txt must lock {name}: scripts/install.sh builds with --no-build-isolation"
        assert name in build, f"build.txt must lock {name}: the image's build stage installs only it"


def test_generated_grpc_code_matches_the_pinned_generator_and_grpcio_floor() -> None:
    tools = _named(extra_requirements("dev"), "grpcio-tools")
    assert len(tools.specifier) == 1 and next(iter(tools.specifier)).operator == "==", (
        "grpcio-tools must be pinned exactly: the committed code is what one version writes"
    )
    generator = _lower_bound(tools)
    assert Version(lock_pins("dev")["grpcio-tools"]) == generator
    floor = _lower_bound(_named(base_requirements(), "grpcio"))
    stubs = sorted(GENERATED.glob("*_pb2_grpc.py"))
    assert stubs
    for stub in stubs:
        (written,) = re.findall(r"^GRPC_GENERATED_VERSION = '([^']+)'", stub.read_text(), re.MULTILINE)
        assert Version(written) == generator, f"{stub.name} was written by grpcio-tools {written}"
        # The stub refuses any grpcio older than its generator: pyproject must not promise less.
        assert Version(written) <= floor, f"{stub.name} needs grpcio>={written}, pyproject allows {floor}"


def test_generated_messages_need_no_newer_protobuf_than_pyproject_allows() -> None:
    floor = _lower_bound(_named(base_requirements(), "protobuf"))
    for module in sorted(GENERATED.glob("*_pb2.py")):
        (written,) = re.findall(r"^# Protobuf Python Version: (\S+)", module.read_text(), re.MULTILINE)
        assert Version(written) <= floor, f"{module.name} needs protobuf>={written}, pyproject allows {floor}"


def test_extras_table_matches_pyproject() -> None:
    optional = project()["optional-dependencies"]
    assert isinstance(optional, dict)
    roles = {name for name in optional if name not in ("all", "dev")}
    assert roles == set(EXTRAS)
    distribution_of: dict[str, str] = {}  # module names that differ from their package's
    for extra, modules in EXTRAS.items():
        names = sorted(canonicalize_name(r.name) for r in extra_requirements(extra))
        assert names == sorted(distribution_of.get(m, m) for m in modules)


def test_gen_proto_refuses_another_generator_version(tmp_path: Path) -> None:
    (tmp_path / ".ci").mkdir()
    shutil.copy2(REPO / ".ci" / "gen-proto", tmp_path / ".ci" / "gen-proto")
    shutil.copytree(REPO / "proto", tmp_path / "proto", ignore=shutil.ignore_patterns("__pycache__"))
    pyproject = (REPO / "pyproject.toml").read_text()
    assert '"grpcio-tools==' in pyproject
    (tmp_path / "pyproject.toml").write_text(
        re.sub(r'"grpcio-tools==[^"]*"', '"grpcio-tools==1.0.0"', pyproject)
    )
    result = subprocess.run(
        ["bash", str(tmp_path / ".ci" / "gen-proto"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable},
        check=False,
    )
    assert result.returncode == 2
    assert "needs grpcio-tools 1.0.0" in result.stderr
