"""The image's two recipes describe one image: deploy/Dockerfile (for builders with a registry) and
scripts/build-image.sh (offline, mmdebstrap + podman) install the same Debian packages
(deploy/image/packages.txt) on the same suite and snapshot (deploy/image/debian.conf) with the same
configuration (deploy/image/config.dockerfile), and those packages provide every program the agent
and the controller execute. tests/e2e/test_image.py checks the built image itself."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IMAGE_DIR = ROOT / "deploy" / "image"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
BUILD_SCRIPT = ROOT / "scripts" / "build-image.sh"
# What runs inside the image; meshctl's lab and probes run on an admin's host.
IMAGE_CODE = ("agent", "controller", "common")
_SPAWNERS = {"run", "Popen", "check_call", "check_output", "call", "create_subprocess_exec"}
_MODULES = {"subprocess", "asyncio"}
_IMPORTED_SPAWNERS = {"Popen", "create_subprocess_exec"}


def image_packages() -> list[str]:
    lines = (IMAGE_DIR / "packages.txt").read_text().splitlines()
    return [name for line in lines if (name := line.split("#", 1)[0].strip())]


def debian_conf() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in (IMAGE_DIR / "debian.conf").read_text().splitlines()
             if line and not line.startswith("#"))
    return {key: value for key, value in pairs}


def runtime_stage() -> list[str]:
    """The Dockerfile's last stage (from its last FROM), continuation lines joined."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    last_from = max(i for i, line in enumerate(lines) if line.startswith("FROM "))
    return lines[last_from:]


def _first_programs(node: ast.expr, lists: dict[str, set[str]]) -> set[str]:
    """The program an argv expression starts with: a literal list, a name bound to one, or ``*name``."""
    if isinstance(node, ast.Starred):
        node = node.value
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, ast.List) and node.elts:
        return _first_programs(node.elts[0], lists)
    if isinstance(node, ast.Name):
        return lists.get(node.id, set())
    return set()


def _programs_in(tree: ast.Module) -> Iterator[str]:
    lists: dict[str, set[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.List):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    lists.setdefault(target.id, set()).update(_first_programs(node.value, lists))
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and node.args):
            continue
        if _spawns(node.func):
            yield from _first_programs(node.args[0], lists)


def _spawns(func: ast.expr) -> bool:
    """``subprocess.run(...)``, ``asyncio.create_subprocess_exec(...)`` and the from-imported
    ``Popen``/``create_subprocess_exec``: not any function that happens to be called ``call`` or
    ``run`` (the data-plane daemon's ``call("drops")`` is an RPC)."""
    if isinstance(func, ast.Attribute):
        return func.attr in _SPAWNERS and isinstance(func.value, ast.Name) and func.value.id in _MODULES
    return isinstance(func, ast.Name) and func.id in _IMPORTED_SPAWNERS


def executed_programs() -> set[str]:
    """Every program the image's code starts (subprocess/asyncio argv whose program is a literal)."""
    found: set[str] = set()
    for folder in IMAGE_CODE:
        for path in sorted((ROOT / folder).rglob("*.py")):
            found.update(_programs_in(ast.parse(path.read_text(), str(path))))
    return found


def test_both_recipes_install_the_one_package_list() -> None:
    stage = runtime_stage()
    copied = [line for line in stage if line.startswith("COPY deploy/image/packages.txt ")]
    assert len(copied) == 1, "the runtime stage must COPY deploy/image/packages.txt"
    target = copied[0].split()[-1]
    installs = [line for line in stage if "apt-get install" in line]
    assert len(installs) == 1 and target in installs[0], installs  # it installs from that file
    assert not re.search(r"apt-get install[^&]*\b(python3|iproute2|nftables)\b", installs[0])
    script = BUILD_SCRIPT.read_text()
    assert "deploy/image/packages.txt" in script and '--include="$(IFS=,; echo "${packages[*]}")"' in script
    assert image_packages() == sorted(set(image_packages()), key=image_packages().index)  # no repeats


def test_both_recipes_configure_the_image_alike() -> None:
    wanted = [line for line in (IMAGE_DIR / "config.dockerfile").read_text().splitlines()
              if line and not line.startswith("#")]
    assert {line.split()[0] for line in wanted} >= {"ENV", "USER", "CMD", "ENTRYPOINT", "WORKDIR"}
    stage = runtime_stage()
    assert [line for line in stage if line in wanted] == wanted  # all of them, in this order
    assert all(line in wanted for line in stage if line.split()[0] in {"ENV", "USER", "CMD", "ENTRYPOINT"})
    assert "deploy/image/config.dockerfile" in BUILD_SCRIPT.read_text()


def test_both_recipes_create_the_same_user_and_directories() -> None:
    recipe = (IMAGE_DIR / "install-deps.sh").read_text().replace("\\\n", " ")
    wanted = [" ".join(line.split()) for line in recipe.splitlines()
              if line.split()[:1] in (["useradd"], ["mkdir"], ["chown"])]
    assert len(wanted) == 3, wanted
    stage = " ".join(" ".join(runtime_stage()).split())
    for command in wanted:
        assert command in stage, command


def test_both_recipes_start_from_one_debian() -> None:
    conf = debian_conf()
    match = re.search(r"^ARG DEBIAN_IMAGE=debian:(\w+)-(\d{8})-slim$", DOCKERFILE.read_text(), re.M)
    assert match is not None
    assert (match[1], match[2]) == (conf["SUITE"], conf["SNAPSHOT"][:8])
    assert all(line.startswith("FROM ${DEBIAN_IMAGE}") for line in DOCKERFILE.read_text().splitlines()
               if line.startswith("FROM "))


def test_executed_programs_come_from_the_image_packages() -> None:
    programs = executed_programs()
    assert {"ip", "nft"} <= programs, programs
    if shutil.which("dpkg") is None:
        pytest.skip("needs dpkg to map programs to packages")
    for program in sorted(programs):
        assert shutil.which(program) is not None, f"{program} is not installed here (scripts/install.sh)"
        assert _package_of(program) in image_packages(), f"{program}: its package is not in packages.txt"


def _package_of(program: str) -> str:
    """The Debian package shipping ``.../bin/<program>`` or ``.../sbin/<program>`` (usrmerge-proof)."""
    listing = subprocess.run(["dpkg", "-S", f"bin/{program}"], capture_output=True, text=True,
                             check=False).stdout
    owners = {line.split(":", 1)[0] for line in listing.splitlines()
              if re.search(rf"/s?bin/{re.escape(program)}$", line)}
    assert len(owners) == 1, f"{program}: owners {owners}"
    return owners.pop()


def test_program_scan_reads_argv_forms() -> None:
    code = (
        "import asyncio, subprocess\n"
        "subprocess.run(['tc', 'qdisc'])\n"
        "argv = ['ethtool', '-k']\n"
        "asyncio.create_subprocess_exec(*argv)\n"
        "asyncio.create_subprocess_exec('bridge', 'link')\n"
        "subprocess.run(cmd)\n"
        "Popen(['conntrack', '-L'])\n"
        "call('drops')\n"
        "self._call('list')\n"
        "runner.run(['not-a-program'])\n"
    )
    assert set(_programs_in(ast.parse(code))) == {"tc", "ethtool", "bridge", "conntrack"}


def test_a_fresh_machine_gets_the_image_tools() -> None:
    """scripts/install.sh (what CI and a new developer run) installs what building and running the
    image needs: the build script's and the container harness's tools."""
    install = (ROOT / "scripts" / "install.sh").read_text()
    block = re.search(r"^APT_PACKAGES=\((.*?)^\)", install, re.M | re.S)
    assert block is not None
    packages = set(block[1].split())
    assert {"mmdebstrap", "podman", "runc"} <= packages
