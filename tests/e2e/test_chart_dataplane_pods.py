"""The chart's userspace shape run for real with containers of the meshsec image: per node the
data-plane DaemonSet's container (command, arguments, capabilities and mounts as the chart
renders them) and an agent container with the chart's userspace flags, the two sharing a host
directory as the two pods share the `agent.userspace.socketDir` hostPath. Then what a rolling
update of the agent DaemonSet does to a node: its agent container is stopped (SIGTERM, the
chart's 30 s grace) and a new one started, under a 10 ms ping. The daemon container is the same
before and after, the new agent adopts what it holds and resumes the IKE SA; the loss is printed
(target 0; docs/benchmarks.md).

Namespace prefix ``mp-``; underlay 198.18.66.0/24, site addresses 198.19.66.0/24 and 198.19.67.0/24.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshsec.agent.cli import build_parser as agent_parser
from meshsec.agent.dataplane.userspace.daemon import query
from tests.e2e.container_mesh import (
    ESTABLISHED,
    TUN,
    agent_ready,
    gateway_sites,
    logs_on_failure,
    owned_dir,
    start_agent,
    start_controller,
    token_for,
    wait_for,
    write_bootstrap,
)
from tests.harness.containers import Containers, meshsec_image
from tests.harness.netns import Lab, parse_ping

pytest.importorskip("helm_python", reason="helm-python-sdk not installed (k8s test dependency)")
pytestmark = [pytest.mark.podman, pytest.mark.netns, pytest.mark.slow, pytest.mark.timeout(300)]

from tests.k8s.test_chart import container, render  # noqa: E402  (after the skip: it needs helm)

CONTROLLER = "198.18.66.1"
NODES = {  # node: (underlay address, site, site prefix, the node's own address in it)
    "mp-a": ("198.18.66.11", "site-pa", "198.19.66.0/24", "198.19.66.1"),
    "mp-b": ("198.18.66.12", "site-pb", "198.19.67.0/24", "198.19.67.1"),
}


def manifest() -> str:
    return gateway_sites(NODES, "chart-pods", "chart-pods-mesh")


@pytest.fixture
def netns_prefix() -> str:
    return "mp-"


@pytest.fixture
def pods(lab: Lab, tmp_path: Path) -> Iterator[Containers]:
    containers = Containers(tmp_path / "containers", lab=lab, prefix="mp")
    yield containers
    containers.close()


def chart_shape() -> tuple[dict[str, Any], list[str], str]:
    """The daemon's container, the agent's userspace flags and the socket directory's mount
    path, from the default render."""
    r = render()
    daemon = container(r["DaemonSet/mesh-meshsec-dataplane"], "dataplane")
    agent = container(r["DaemonSet/mesh-meshsec-agent"], "agent")
    flags = [a for a in agent["args"] if a.startswith(("--userspace-daemon=", "--dataplane-socket="))]
    args = agent_parser().parse_args(agent["command"][1:] + agent["args"])
    assert args.userspace_daemon == "connect" and len(flags) == 2
    mounts = {m["name"]: m["mountPath"] for m in agent["volumeMounts"]}
    assert {m["name"]: m["mountPath"] for m in daemon["volumeMounts"]}["dataplane-socket"] == (
        mounts["dataplane-socket"])
    return daemon, flags, mounts["dataplane-socket"]


def test_an_agent_pod_replacement_leaves_the_daemon_pod_forwarding(
    lab: Lab, pods: Containers, tmp_path: Path
) -> None:
    image = meshsec_image()
    daemon, flags, socket_mount = chart_shape()
    underlay = lab.switch("sw")
    ctl_host = lab.host("ctl")
    underlay.attach(ctl_host, f"{CONTROLLER}/24")
    ctl = start_controller(pods, image, ctl_host, CONTROLLER, tmp_path)
    ctl.apply(manifest())
    hosts, agents, daemons, starts = {}, {}, {}, {}
    for node, (underlay_address, site, _, inner) in NODES.items():
        host = lab.host(node)
        underlay.attach(host, f"{underlay_address}/24")
        host.add_loopback_address(f"{inner}/32")
        sockets = owned_dir(tmp_path / f"run-{node}")  # the hostPath both pods mount
        daemons[node] = pods.run(
            f"dataplane-{node}", image, [*daemon["command"], *daemon["args"]], netns=host.ns, user="0",
            caps=daemon["securityContext"]["capabilities"]["add"], devices=[TUN],
            volumes=[(sockets, socket_mount)])  # fmt: skip
        token = token_for(ctl, node, site)
        ca_pem = ctl.paths.ca_cert.read_bytes()
        bootstrap = write_bootstrap(tmp_path / f"bootstrap-{node}", token.token, ca_pem)

        def start(node: str = node, host: Any = host, bootstrap: Path = bootstrap, sockets: Path = sockets,
                  sha: str = token.ca_cert_sha256, address: str = underlay_address) -> Any:
            return start_agent(pods, image, host, node, ctl, bootstrap, tmp_path / f"state-{node}", sha,
                               address=address, extra_args=flags, extra_volumes=[(sockets, socket_mount)])

        hosts[node], starts[node] = host, start
        agents[node] = start()

    wait_for("the tunnel to be established",
             lambda: ctl.tunnels().get("mp-a <-> mp-b", {}).get("state") == ESTABLISHED,
             timeout=90, on_timeout=lambda: logs_on_failure(pods))  # fmt: skip
    src, dst = NODES["mp-a"][3], NODES["mp-b"][3]
    wait_for("a ping through the tunnel", lambda: hosts["mp-a"].ping(dst, src=src, count=2, wait=1).ok,
             timeout=30, on_timeout=lambda: logs_on_failure(pods))  # fmt: skip
    wait_for("mp-b's agent ready", lambda: agent_ready(agents["mp-b"]) == "", timeout=30)
    probe = daemon["readinessProbe"]["exec"]["command"]
    ready = daemons["mp-b"].exec(probe, check=False)
    assert ready.returncode == 0, ready.stdout + ready.stderr  # the daemon pod's readiness probe
    held = query(tmp_path / "run-mp-b" / "dataplane.sock")
    assert held["sas"], held  # the daemon container holds the CHILD_SAs, not the agent's

    count = 2500
    ping_log = tmp_path / "ping-replace.log"
    ping = hosts["mp-a"].popen(["ping", "-n", "-c", str(count), "-i", "0.01", "-W", "1", "-I", src, dst],
                               log=ping_log)  # fmt: skip
    time.sleep(1.0)
    t0 = time.monotonic()
    agents["mp-b"].stop(grace=30)  # the kubelet's SIGTERM and the chart's grace period
    stopped = time.monotonic() - t0
    assert pods.remove(agents["mp-b"]) == ""
    agents["mp-b"] = starts["mp-b"]()  # the replacement pod's agent container
    wait_for("the new agent ready", lambda: agent_ready(agents["mp-b"]) == "", timeout=90,
             on_timeout=lambda: logs_on_failure(pods))  # fmt: skip
    back = time.monotonic() - t0
    ping.wait(count * 0.01 + 60)
    result = parse_ping(ping_log.read_text())
    print(f"\nagent container replaced under a 10 ms ping: {result.transmitted - result.received} of "
          f"{result.transmitted} lost; old agent stopped in {stopped:.2f} s, new one ready "
          f"{back:.2f} s after the SIGTERM")  # fmt: skip
    assert result.transmitted == count
    after = query(tmp_path / "run-mp-b" / "dataplane.sock")
    assert after["hello"]["pid"] == held["hello"]["pid"]  # the same daemon process
    assert daemons["mp-b"].running() and daemons["mp-a"].running()
    status = agents["mp-b"].logs()
    assert "resumed 1 IKE SA(s) of 1" in status, status[-2000:]
    assert {sa["spi"] for sa in after["sas"]} == {sa["spi"] for sa in held["sas"]}  # nothing renegotiated
    assert hosts["mp-a"].ping(dst, src=src, count=2, wait=1).ok
