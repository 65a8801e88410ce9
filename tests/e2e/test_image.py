"""The meshsec image (scripts/build-image.sh), run for real with podman: it holds every Debian
package deploy/image/packages.txt names and every program the agent executes; the controller runs
from it as its unprivileged user; two agent containers, each in its own node namespace, enroll with
bootstrap tokens and bring up a tunnel (userspace ESP over TUN) that carries a ping between the
sites' addresses.

Namespace prefix ``mi-``; underlay 198.18.64.0/24, site addresses 198.19.64.0/24 and 198.19.65.0/24.
"""

from __future__ import annotations

import ast
import hashlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.container_mesh import (
    ESTABLISHED,
    Phases,
    agent_ready,
    gateway_sites,
    logs_on_failure,
    start_agent,
    start_controller,
    token_for,
    wait_for,
    write_bootstrap,
)
from tests.harness.containers import (
    LABEL,
    OWNER_LABEL,
    REPO_ROOT,
    RUN_LIMITS,
    Containers,
    meshsec_image,
    podman,
    process_identity,
    remove_orphans,
    run_once,
)
from tests.harness.netns import Lab, list_namespaces
from tests.release.test_image_recipe import executed_programs, image_packages

pytestmark = [pytest.mark.podman, pytest.mark.netns, pytest.mark.slow]

CONTROLLER = "198.18.64.1"
NODES = {  # node: (underlay address, site, site prefix, the node's own address in it)
    "mi-a": ("198.18.64.11", "site-a", "198.19.64.0/24", "198.19.64.1"),
    "mi-b": ("198.18.64.12", "site-b", "198.19.65.0/24", "198.19.65.1"),
}


def manifest() -> str:
    return gateway_sites(NODES, "image-test", "image-mesh")


@pytest.fixture(scope="module")
def image() -> str:
    return meshsec_image()


@pytest.fixture
def netns_prefix() -> str:
    return "mi-"


@pytest.fixture
def pods(lab: Lab, tmp_path: Path) -> Iterator[Containers]:
    containers = Containers(tmp_path / "containers", lab=lab, prefix="mi")
    yield containers
    containers.close()


def test_image_holds_the_packages_and_programs(image: str) -> None:
    listed = run_once(image, ["dpkg-query", "--show", "--showformat", "${Package}\\n"]).split()
    assert set(image_packages()) <= set(listed), set(image_packages()) - set(listed)
    programs = sorted(executed_programs())
    assert {"ip", "nft"} <= set(programs), programs  # the scan finds what the agent is known to run
    found = run_once(image, ["sh", "-c", 'for p in "$@"; do command -v "$p" || echo "missing $p"; done',
                             "sh", *programs, "meshsec-agent", "meshsec-controller", "meshctl"])
    assert "missing" not in found, found
    user = run_once(image, ["id", "-u"])
    assert user.strip() == "10001"  # the controller and operator never run as root by default


def test_image_holds_this_tree(image: str) -> None:
    """Every module of meshsec in the image is the one in this checkout (no stale layer or wheel)."""
    script = (
        "import hashlib, json, pathlib, meshsec\n"
        "root = pathlib.Path(meshsec.__path__[0])\n"
        "print(json.dumps({str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()"
        " for p in root.rglob('*.py')}))\n"
    )
    inside = json.loads(run_once(image, ["python3", "-c", script]))
    roots = next(node.value for node in ast.parse((REPO_ROOT / "setup.py").read_text()).body
                 if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "ROOTS")
    here = {}
    for package, folder in ast.literal_eval(roots).items():
        base = REPO_ROOT / folder
        for path in base.rglob("*.py"):
            key = str(Path(*package.split(".")[1:], path.relative_to(base)))
            here[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    assert inside == here


def test_two_agent_containers_enroll_and_carry_a_ping(image: str, lab: Lab, pods: Containers,
                                                      tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    phase = Phases(capsys, "image smoke")
    underlay = lab.switch("sw")
    ctl_host = lab.host("ctl")
    underlay.attach(ctl_host, f"{CONTROLLER}/24")
    ctl = start_controller(pods, image, ctl_host, CONTROLLER, tmp_path)
    ctl.apply(manifest())
    agents = {}
    for node, (underlay_address, site, _, inner) in NODES.items():
        host = lab.host(node)
        underlay.attach(host, f"{underlay_address}/24")
        host.add_loopback_address(f"{inner}/32")
        token = token_for(ctl, node, site)
        ca_pem = ctl.paths.ca_cert.read_bytes()
        bootstrap = write_bootstrap(tmp_path / f"bootstrap-{node}", token.token, ca_pem)
        agent = start_agent(pods, image, host, node, ctl, bootstrap, tmp_path / f"state-{node}",
                            token.ca_cert_sha256, address=underlay_address)
        agents[node] = (host, agent)
    phase("controller and agents started")

    def enrolled() -> bool:
        return all((n.get("status") or {}).get("phase") == "Enrolled" for n in ctl.nodes().values())

    wait_for("both agents to enroll", enrolled, timeout=60, on_timeout=lambda: logs_on_failure(pods))
    wait_for("the tunnel to be established",
             lambda: ctl.tunnels().get("mi-a <-> mi-b", {}).get("state") == ESTABLISHED,
             timeout=90, on_timeout=lambda: logs_on_failure(pods))
    phase("tunnel established")
    host_a = agents["mi-a"][0]
    src, dst = NODES["mi-a"][3], NODES["mi-b"][3]
    wait_for(f"a ping {src} -> {dst} through the tunnel",
             lambda: host_a.ping(dst, src=src, count=2, wait=1).ok, timeout=30,
             on_timeout=lambda: logs_on_failure(pods))
    phase("ping through the tunnel")
    # The controller saw traffic-carrying SAs from both ends: their reports name CHILD_SAs.
    tunnel = ctl.tunnels()["mi-a <-> mi-b"]
    assert all((end.get("status") or {}).get("childSas") for end in tunnel["ends"]), tunnel
    for _, agent in agents.values():
        assert agent.running()
        assert agent_ready(agent) == ""  # the DaemonSet's readiness probe agrees


def test_a_failing_test_leaves_no_container_and_no_namespace(image: str, tmp_path: Path) -> None:
    """The harness's promise to every container test: whatever fails, the containers go (by ID,
    before their namespaces) and so do the namespaces."""
    failing = pytest.raises(RuntimeError, match="a test failing mid-way")
    with failing, Lab(prefix="mi-", workdir=tmp_path) as lab:
        pods = Containers(tmp_path / "containers", lab=lab, prefix="mi")
        host = lab.host("doomed")
        sleeper = pods.run("sleeper", image, ["sleep", "600"], netns=host.ns)
        assert sleeper.running()
        assert pods.leftovers() == [sleeper.id]
        raise RuntimeError("a test failing mid-way")
    assert pods.leftovers() == []
    assert host.ns not in list_namespaces()
    assert (tmp_path / "containers" / "sleeper.log").exists()  # its output was kept for the reader


def test_the_containers_of_a_killed_run_go_with_the_next_run(image: str, tmp_path: Path) -> None:
    """A run killed outright closes nothing: its containers, labelled with their owner process,
    are removed by the next run's harness, while a live run's are left alone."""
    killed = subprocess.Popen(["sleep", "60"])
    owner = process_identity(killed.pid)
    killed.kill()
    killed.wait()
    assert owner is not None and process_identity(killed.pid) is None
    orphan = podman("run", "--detach", "--name", f"mi-orphan-{killed.pid}", "--label", f"{LABEL}=orphan",
                    "--label", f"{OWNER_LABEL}={owner}", "--network", "none", *RUN_LIMITS,
                    image, "sleep", "600").strip()
    with Containers(tmp_path / "live", prefix="mi") as live:
        alive = live.run("alive", image, ["sleep", "600"])
        with Containers(tmp_path / "next", prefix="mi"):  # the next run starting
            known = podman("ps", "--all", "--quiet", "--no-trunc").split()
            assert orphan not in known
            assert alive.id in known
        assert remove_orphans() == []
