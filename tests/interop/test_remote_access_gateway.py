"""strongSwan 5.9.8 road warriors against a meshsec gateway (standalone agent) in namespaces,
behind a NAT box, with certificate auth (device certificates from the controller CA) and the
swanctl.conf profile meshctl renders: the client gets an address from the pool and the DNS
server, reaches the server behind the gateway through its CHILD_SA and only the split routes,
many clients at once get distinct addresses, and a full pool refuses the next client with a
clear reason on both sides."""

from __future__ import annotations

import concurrent.futures
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
    dual_stack,
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


CLIENTS = 20


@pytest.mark.timeout(240)
def test_twenty_clients_at_once_get_distinct_addresses_and_each_reaches_the_server(
    lab: Lab, charons: CharonFactory
) -> None:
    """20 charons in 20 namespaces behind one NAT address (a carrier NAT): the gateway tells
    their IKE SAs apart by SPI and port, and each CHILD_SA carries only its own address."""
    site = build(lab)
    # All clients share the NAT's address, so the per-address half-open limits are raised.
    responder = {"cookie_threshold_per_address": CLIENTS, "block_threshold_per_address": CLIENTS}
    agent = start_gateway(site, gateway_config(site, responder=responder))
    clients = [road_warrior(site, charons, profile(site, f"user{i}")) for i in range(CLIENTS)]
    with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(lambda c: c.initiate(CONNECTION, CONNECTION, timeout=60), clients))
    vips = {}
    for i, client in enumerate(clients):
        sa = client_sa(client)
        assert sa is not None, client.log_text()[-2000:]
        vips[f"user{i}@example.test"] = sa["local-vips"][0]
    assert len(set(vips.values())) == CLIENTS
    assert all(ipaddress.ip_address(v) in ipaddress.ip_network(POOL) for v in vips.values())
    status = agent.wait_for(lambda s: s if len(s.get("leases", [])) == CLIENTS else None)
    assert _leases(status) == {user: [vip] for user, vip in vips.items()}
    remotes = {sa["remote"] for sa in status["ike_sas"] if sa["state"] == "ESTABLISHED"}
    assert len(remotes) == CLIENTS  # one NAT address, twenty ports

    def ping(item: tuple[int, Any]) -> str:
        i, client = item
        vip = vips[f"user{i}@example.test"]
        result = client.host.run(["ping", "-c", "2", "-i", "0.2", "-W", "2", "-I", vip, SRV], check=False)
        return "" if result.returncode == 0 else f"user{i} ({vip}): {result.stdout}"

    with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
        failures = [f for f in pool.map(ping, enumerate(clients)) if f]
    assert not failures, failures


@pytest.mark.timeout(120)
def test_a_full_pool_refuses_the_next_client_with_a_clear_reason(lab: Lab, charons: CharonFactory) -> None:
    site = build(lab)
    agent = start_gateway(site, gateway_config(site, addrs="198.19.61.0/30"))  # two addresses
    first, second = (road_warrior(site, charons, profile(site, u)) for u in ("ann", "ben"))
    for client in (first, second):
        client.initiate(CONNECTION, CONNECTION, timeout=20)
    late = road_warrior(site, charons, profile(site, "cid"))
    late.swanctl("--initiate", "--ike", CONNECTION, "--child", CONNECTION, "--timeout", "15", check=False)
    assert client_sa(late) is None
    reason = "pool staff: all 2 addresses of 198.19.61.0/30 are leased; release a lease or enlarge the pool"
    agent.wait_for(lambda s: reason in agent.log_text(), timeout=10)
    assert "road warrior cid@example.test from 198.18.72.2 refused" in agent.log_text()
    assert "INTERNAL_ADDRESS_FAILURE" in late.log_text(), late.log_text()[-3000:]
    assert set(_leases(agent.status())) == {"ann@example.test", "ben@example.test"}
    # A lease given back makes room.
    first.terminate(ike=CONNECTION)
    agent.wait_for(lambda s: len(s.get("leases", [])) == 1, timeout=10)
    # The gateway deletes the refused client's IKE SA (our DELETE may cross charon's handling of
    # the IKE_AUTH answer and then goes again on retransmission), so it starts afresh.
    agent.wait_for(lambda s: all(sa["remote_id"] != "cid@example.test" for sa in s["ike_sas"]), timeout=15)
    assert client_sa(late) is None and not late.list_sas_raw()
    late.initiate(CONNECTION, CONNECTION, timeout=20)
    assert client_sa(late) is not None


@pytest.mark.timeout(120)
def test_dual_stack_client_gets_both_families_dns_and_split_routes(lab: Lab, charons: CharonFactory) -> None:
    """`vips = 0.0.0.0,::` (the profile asks for both once a route is IPv6): INTERNAL_IP4_ADDRESS
    and INTERNAL_IP6_ADDRESS, both DNS servers, both split routes, ping over each family."""
    site = build(lab)
    dual_stack(site)
    config = gateway_config(site)
    config["pools"]["staff"].update(addrs=[POOL, "2001:db8:60::/112"], dns=[DNS, "2001:db8:50::53"],
                                    subnet=["198.19.50.0/24", "2001:db8:50::/64"])  # fmt: skip
    config["connections"]["rw"]["children"]["rw"]["local_ts"] = ["198.19.50.0/24", "2001:db8:50::/64"]
    agent = start_gateway(site, config)
    client = road_warrior(site, charons, profile(site, "dora", routes=("198.19.50.0/24", "2001:db8:50::/64")))
    client.initiate(CONNECTION, CONNECTION, timeout=20)
    sa = client_sa(client)
    assert sa is not None, client.log_text()[-3000:]
    vip4, vip6 = sorted(sa["local-vips"], key=lambda a: ":" in a)
    assert ipaddress.ip_address(vip4) in ipaddress.ip_network(POOL)
    assert ipaddress.ip_address(vip6) in ipaddress.ip_network("2001:db8:60::/112")
    child = next(iter(sa["child-sas"].values()))
    assert sorted(child["local-ts"]) == sorted([f"{vip4}/32", f"{vip6}/128"])
    assert sorted(child["remote-ts"]) == sorted(["198.19.50.0/24", "2001:db8:50::/64"])
    resolv = resolv_conf(client.host).read_text()
    assert f"nameserver {DNS}" in resolv and "nameserver 2001:db8:50::53" in resolv, resolv
    host = client.host
    for src, dst in ((vip4, SRV), (vip6, "2001:db8:50::10")):
        ping = host.run(["ping", "-c", "2", "-i", "0.2", "-W", "2", "-I", src, dst], check=False)
        assert ping.returncode == 0, ping.stdout + ping.stderr + agent.log_text()[-3000:]
    assert _leases(agent.status()) == {"dora@example.test": [vip4, vip6]}
