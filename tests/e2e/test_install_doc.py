"""docs/install.md, executed: its `sh install-test step=... host=...` blocks run in two network
namespaces acting as a controller host (198.18.0.1) and an agent host (198.18.0.2), each in a
private mount namespace whose /opt/meshsec, /etc/default, /var/lib/meshsec ... are this test's
directories, so the document's paths are used as written. The wheel is built by the document's own
build step; the roles are installed from their locks. systemd does not run here: the units'
ExecStart= lines (EnvironmentFile= substituted) start the daemons, and `systemd-analyze verify`
checks the installed units. The agent must enroll and show as online in `meshctl get nodes`."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness.netns import Host, Lab
from tests.release.pins import REPO

pytestmark = [pytest.mark.slow, pytest.mark.netns]

DOC = REPO / "docs" / "install.md"
STEPS = ("build", "controller-install", "controller-setup", "agent-install", "check")
HOSTS = {"controller": "198.18.0.1/24", "agent": "198.18.0.2/24"}
# The host paths the document writes; each host gets its own directory for each.
HOST_PATHS = (
    "/opt/meshsec",
    "/etc/meshsec",
    "/etc/default",
    "/etc/systemd/system",
    "/var/lib/meshsec",
    "/run/meshsec",
)
HOST_SPECIFIC = "# host-specific:"
_FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)
_VAR = re.compile(r"\$\{(\w+)\}")


@dataclass(frozen=True)
class Block:
    step: str
    host: str
    body: str


def doc_blocks(text: str) -> list[Block]:
    """The tested blocks; every other shell block must say it is host-specific."""
    blocks = []
    for info, body in _FENCE.findall(text):
        words = info.split()
        if words[:2] == ["sh", "install-test"]:
            fields = dict(word.split("=", 1) for word in words[2:])
            blocks.append(Block(fields["step"], fields["host"], body))
        elif words[:1] == ["sh"]:
            assert body.startswith(HOST_SPECIFIC), f"untested shell block, not host-specific:\n{body}"
    return blocks


def environment_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = " ".join(shlex.split(value))
    return values


def exec_start(unit: Path, root: Path) -> list[str]:
    """The unit's ExecStart= as argv, with systemd's substitution: `${X}` one word, `$X` split."""
    settings = dict(
        line.split("=", 1)
        for line in unit.read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    env = environment_file(root / settings["EnvironmentFile"].lstrip("/"))
    argv: list[str] = []
    for word in shlex.split(settings["ExecStart"]):
        if word.startswith("$") and not word.startswith("${"):
            argv += env[word[1:]].split()
        else:
            argv.append(_VAR.sub(lambda m: env[m.group(1)], word))
    return argv


class MountedHost:
    """A lab host whose commands run in a private mount namespace with HOST_PATHS bound to `root`."""

    def __init__(self, host: Host, root: Path, checkout: Path) -> None:
        self.host = host
        self.root = root
        binds = []
        for path in HOST_PATHS:
            (root / path.lstrip("/")).mkdir(parents=True, exist_ok=True)
            binds.append(f"mount --bind {shlex.quote(str(root / path.lstrip('/')))} {shlex.quote(path)}")
        self._prelude = " && ".join([*binds, f"cd {shlex.quote(str(checkout))}", 'exec "$@"'])

    def argv(self, argv: Sequence[str]) -> list[str]:
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", self._prelude, "sh", *argv]

    def path(self, host_path: str) -> Path:
        return self.root / host_path.lstrip("/")


@pytest.fixture
def netns_prefix() -> str:
    return "insd-"


@pytest.fixture
def mount_points() -> Iterator[None]:
    """Empty directories to bind onto where the host lacks them; removed again afterwards."""
    created = []
    for path in map(Path, HOST_PATHS):
        if not path.exists():
            path.mkdir(parents=True)
            created.append(path)
    yield
    for path in reversed(created):
        path.rmdir()


def _env(cache: Path, wheelhouse: Path) -> dict[str, str]:
    """The namespaces have no route to a package index: pip there reads the wheelhouse only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    return {**env, "PIP_CACHE_DIR": str(cache), "PIP_FIND_LINKS": str(wheelhouse), "PIP_NO_INDEX": "1"}


def _wheelhouse(where: Path, cache: Path) -> Path:
    """Both roles' locked wheels, downloaded here (hash-checked) where the index is reachable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    for role in ("controller", "agent"):
        lock = REPO / "requirements" / f"{role}.txt"
        argv = [sys.executable, "-m", "pip", "download", "-q", "--cache-dir", str(cache),
                "--require-hashes", "-r", str(lock), "-d", str(where)]  # fmt: skip
        result = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env, check=False)
        assert result.returncode == 0, result.stderr
    return where


def _run_block(host: MountedHost, block: Block, env: dict[str, str]) -> str:
    result = host.host.run(host.argv(["sh", "-e", "-c", block.body]), check=False, timeout=600, env=env)
    assert result.returncode == 0, (
        f"docs/install.md step {block.step} on {block.host} exited {result.returncode}:\n"
        f"{block.body}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    )
    return result.stdout


def _verify_unit(host: MountedHost, unit: str) -> None:
    if shutil.which("systemd-analyze") is None:
        return
    verify = ["systemd-analyze", "verify", f"/etc/systemd/system/{unit}"]
    result = host.host.run(host.argv(verify), check=False)
    assert result.returncode == 0 and not result.stderr.strip(), f"{unit}: {result.stderr}"


def _node_online(table: str, node: str) -> bool:
    lines = table.splitlines()
    if not lines:
        return False
    online = lines[0].split().index("ONLINE")
    return any(line.split()[:1] == [node] and line.split()[online] == "yes" for line in lines[1:])


def _logs(*paths: Path) -> str:
    return "\n".join(f"--- {p.name}:\n{p.read_text()[-4000:]}" for p in paths if p.exists())


def test_install_doc_blocks_are_tested_or_marked() -> None:
    blocks = doc_blocks(DOC.read_text())
    assert [b.step for b in blocks] == list(STEPS) and {b.host for b in blocks} <= set(HOSTS)


def test_install_doc_installs_a_controller_and_an_agent_that_enrolls(
    lab: Lab, mount_points: None, tmp_path: Path
) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed: the units cannot be verified")
    checkout = tmp_path / "checkout"
    shutil.copytree(
        REPO,
        checkout,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis", "var"
        ),
    )
    (checkout / ".venv").symlink_to(REPO / ".venv")  # the build step's locked build tools
    controller_ns, agent_ns = lab.host("controller"), lab.host("agent")
    lab.link(controller_ns, agent_ns, HOSTS["controller"], HOSTS["agent"], a_ifname="eth0", b_ifname="eth0")
    hosts = {
        "controller": MountedHost(controller_ns, tmp_path / "controller-host", checkout),
        "agent": MountedHost(agent_ns, tmp_path / "agent-host", checkout),
    }
    env = _env(tmp_path / "pip-cache", _wheelhouse(tmp_path / "wheelhouse", tmp_path / "pip-cache"))
    blocks = {b.step: b for b in doc_blocks(DOC.read_text())}

    def step(name: str) -> str:
        return _run_block(hosts[blocks[name].host], blocks[name], env)

    step("build")
    step("controller-install")
    controller = hosts["controller"]
    _verify_unit(controller, "meshsec-controller.service")
    controller_log = tmp_path / "controller.log"
    argv = exec_start(controller.path("/etc/systemd/system/meshsec-controller.service"), controller.root)
    controller_ns.popen(controller.argv(argv), env=env, log=controller_log)
    admin_socket = controller.path("/run/meshsec/admin.sock")
    deadline = time.monotonic() + 60
    while not admin_socket.exists():
        assert time.monotonic() < deadline, f"no admin socket from the controller\n{_logs(controller_log)}"
        time.sleep(0.2)
    step("controller-setup")

    step("agent-install")
    agent = hosts["agent"]
    _verify_unit(agent, "meshsec-agent.service")
    agent_log = tmp_path / "agent.log"
    argv = exec_start(agent.path("/etc/systemd/system/meshsec-agent.service"), agent.root)
    assert "--ca-sha256" in argv and len(argv[argv.index("--ca-sha256") + 1]) == 64
    agent_ns.popen(agent.argv(argv), env=env, log=agent_log)
    deadline = time.monotonic() + 90
    table = ""
    while not _node_online(table, "gw1"):
        assert time.monotonic() < deadline, f"gw1 never online:\n{table}\n{_logs(controller_log, agent_log)}"
        time.sleep(1)
        table = step("check")
    assert agent.path("/var/lib/meshsec").is_dir() and any(agent.path("/var/lib/meshsec").iterdir())
    assert not (checkout / "gw1-token.json").exists(), "the token file stays behind"


def test_exec_start_substitutes_like_systemd(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "x").write_text('# c\nA=one\nB="two three"\n')
    unit = tmp_path / "x.service"
    unit.write_text("[Service]\nEnvironmentFile=/etc/x\nExecStart=/bin/p --a ${A} --b ${B} $B x${A}\n")
    assert exec_start(unit, tmp_path) == ["/bin/p", "--a", "one", "--b", "two three", "two", "three", "xone"]
