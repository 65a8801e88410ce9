"""strongSwan 5.9.8 road warriors against a meshsec gateway (standalone agent) in namespaces,
behind a NAT box, with certificate auth (device certificates from the controller CA) and the
swanctl.conf profile meshctl renders: the client gets an address from the pool and the DNS
server, reaches the server behind the gateway through its CHILD_SA and only the split routes,
many clients at once get distinct addresses, and a full pool refuses the next client with a
clear reason on both sides."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from tests.harness.netns import Lab
from tests.harness.strongswan import CharonFactory
from tests.interop.remote_access import (
    CONNECTION,
    DNS,
    OUTSIDE_SPLIT,
    POOL,
    SRV,
    build,
    client_sa,
    gateway_config,
    profile,
    resolv_conf,
    road_warrior,
    start_gateway,
)

pytestmark = [pytest.mark.netns, pytest.mark.strongswan]


@pytest.fixture
def netns_prefix() -> str:
    return "h17g-"


def _leases(status: dict[str, Any]) -> dict[str, list[str]]:
    return {entry["client"]: entry["addresses"] for entry in status.get("leases", [])}


@pytest.mark.timeout(120)
def test_road_warrior_gets_an_address_and_dns_and_reaches_only_the_split_routes(
    lab: Lab, charons: CharonFactory
) -> None:
    site = build(lab)
    agent = start_gateway(site, gateway_config(site))
    # The client asks for everything (0.0.0.0/0); the gateway narrows it to the split route.
    client = road_warrior(site, charons, profile(site, "bob", routes=("0.0.0.0/0",)))
    client.initiate(CONNECTION, CONNECTION, timeout=20)
    sa = client_sa(client)
    assert sa is not None, client.log_text()[-3000:]
    (vip,) = sa["local-vips"]
    assert ipaddress.ip_address(vip) in ipaddress.ip_network(POOL)
    child = next(iter(sa["child-sas"].values()))
    assert child["local-ts"] == [f"{vip}/32"] and child["remote-ts"] == ["198.19.50.0/24"]
    assert "CPRP(ADDR DNS SUBNET)" in client.log_text()  # the split route went along, too
    assert f"nameserver {DNS}" in resolv_conf(client.host).read_text()
    host = client.host
    ping = host.run(["ping", "-c", "3", "-i", "0.2", "-W", "2", "-I", vip, SRV], check=False)
    assert ping.returncode == 0, ping.stdout + ping.stderr + agent.log_text()[-3000:]
    # Outside the split routes nothing goes through the tunnel.
    outside = host.run(["ping", "-c", "1", "-W", "1", "-I", vip, OUTSIDE_SPLIT], check=False)
    assert outside.returncode != 0
    status = agent.status()
    assert _leases(status) == {"bob@example.test": [vip]}
    connected = f"road warrior bob@example.test connected from 198.18.72.2, virtual address {vip}"
    assert connected in agent.log_text()
    client.terminate(ike=CONNECTION)
    agent.wait_for(lambda s: not s.get("leases"), timeout=10)
    assert "road warrior bob@example.test disconnected (deleted by client)" in agent.log_text()
