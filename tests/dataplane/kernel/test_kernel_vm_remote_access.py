"""Road warriors through the kernel data plane: a standalone meshsec gateway with
`dataplane: kernel` and two strongSwan 5.9.8 road warriors behind a NAT box (the swanctl.conf
meshctl renders, controller-CA device certificates). Each client's virtual address gets XFRM
policies of its own (the gateway's side: the split route; the client's: exactly its /32) and a
route, and each client pings the server behind the gateway. Runs in the qemu kernel lane."""

from __future__ import annotations

import pytest

from tests.dataplane.kernel.conftest import IN_LANE
from tests.harness.netns import Lab
from tests.harness.strongswan import DEFAULT_PLUGINS, CharonFactory
from tests.interop.remote_access import (
    CONNECTION,
    SRV,
    build,
    client_sa,
    gateway_config,
    profile,
    road_warrior,
)
from tests.interop.remote_access import start_gateway as _start

pytestmark = [pytest.mark.kernelvm, pytest.mark.netns, pytest.mark.strongswan, pytest.mark.timeout(600)]
SLOW = 150.0 if IN_LANE else 30.0  # the guest is software-emulated


@pytest.fixture
def netns_prefix() -> str:
    return "kvra-"


def test_each_road_warrior_gets_its_own_kernel_policies(lab: Lab, charons: CharonFactory) -> None:
    site = build(lab)
    config = gateway_config(site)
    config["agent"]["dataplane"] = "kernel"
    agent = _start(site, config, timeout=SLOW)
    # The guest's kernel has ESP: the clients use it too. kernel-libipsec needs /dev/net/tun, which
    # the guest lacks (no tun module); charon 5.9.8 then fails to load that plugin and dies of
    # SIGSEGV on its first vici connection, leaving a socket that refuses swanctl.
    plugins = tuple(p for p in DEFAULT_PLUGINS if p != "kernel-libipsec")
    try:
        users = ("ann", "ben")
        clients = [road_warrior(site, charons, profile(site, u), timeout=SLOW, plugins=plugins)
                   for u in users]  # fmt: skip
    except Exception:
        for log in sorted(lab.workdir.rglob("charon*")):
            print(f"--- {log}\n{log.read_text(errors='replace')[-3000:]}")
        raise
    vips = []
    for client in clients:
        client.initiate(CONNECTION, CONNECTION, timeout=SLOW)
        sa = client_sa(client)
        assert sa is not None, client.log_text()[-3000:]
        vips.append(sa["local-vips"][0])
    assert len(set(vips)) == 2
    policies = site.gw.run(["ip", "xfrm", "policy"]).stdout
    for vip in vips:
        assert f"src 198.19.50.0/24 dst {vip}/32" in policies, policies
        assert f"src {vip}/32 dst 198.19.50.0/24" in policies, policies
    for client, vip in zip(clients, vips, strict=True):
        ping = client.host.run(["ping", "-c", "3", "-i", "0.3", "-W", "5", "-I", vip, SRV], check=False)
        assert ping.returncode == 0, ping.stdout + agent.log_text()[-3000:]
    states = site.gw.run(["ip", "-s", "xfrm", "state"]).stdout
    assert states.count("proto esp") >= 4, states  # two directions per client
