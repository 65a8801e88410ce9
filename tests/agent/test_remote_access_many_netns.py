"""Twenty strongSwan 5.9.8 road warriors at once on one controller-managed gateway, all real
processes: twenty charons, each in its own namespace behind one masquerading NAT box (one outer
address, twenty ports), ask for an address (`vips = 0.0.0.0`) at the same moment; the gateway
leases each from the controller (AllocateLease, one store transaction per client), so the
controller's allocation is what keeps them distinct. Every client gets its own address from the
pool, its CHILD_SA, and pings the server behind the gateway; `meshctl get leases` lists twenty.
The gateway runs with raised half-open limits (as one behind a carrier NAT should), so no client
is asked for a COOKIE."""

from __future__ import annotations

import concurrent.futures
import ipaddress
import json

import pytest

from tests.agent.meshlab import MeshLab, resource, wait_for
from tests.agent.remote_access_lab import (
    CONNECTION,
    NAT_OUTER,
    POOL,
    POOL_RANGE,
    SRV,
    RoadWarriors,
    client_sa,
    meshctl,
    profile,
    server_behind,
    user,
)
from tests.harness.netns import Lab
from tests.harness.strongswan import Charon, CharonFactory

pytestmark = [pytest.mark.netns, pytest.mark.strongswan, pytest.mark.timeout(420)]

CLIENTS = 20
HALF_OPEN_LIMITS = ("--cookie-threshold", "30", "--cookie-threshold-per-address", "30",
                    "--block-threshold-per-address", "40")  # fmt: skip


@pytest.fixture
def netns_prefix() -> str:
    return "h17m-"


def test_twenty_road_warriors_at_once_get_distinct_controller_leases_and_reach_the_server(
    lab: Lab, charons: CharonFactory
) -> None:
    ml = MeshLab(lab)
    ml.start_controller()
    # Twenty clients behind one carrier NAT address: the gateway's half-open limits are raised
    # above twenty (`meshsec-agent run --cookie-threshold...`), so none is asked for a COOKIE.
    gw = ml.add_node(1, before_agent=server_behind, agent_args=HALF_OPEN_LIMITS)
    names = [f"user{i}" for i in range(CLIENTS)]
    ml.apply(resource("RemoteAccessPool", "staff", POOL),
             *(resource("RemoteAccessUser", n, user(n)) for n in names))  # fmt: skip
    gw_log = ml.work / f"{gw}.log"
    wait_for("the gateway serving pool staff", lambda: "serving ra-staff" in gw_log.read_text(), 60)

    rws = RoadWarriors(ml, charons)
    rws.behind_nat()
    clients: list[Charon] = [rws.start(profile(ml, n, "laptop", gw)) for n in names]

    def connect(client: Charon) -> None:
        # Generous: twenty IKE_AUTHs (each a signature check and a lease transaction) on a small
        # machine, and the gateway asks a busy NAT address for COOKIEs.
        client.swanctl("--initiate", "--ike", CONNECTION, "--child", CONNECTION, "--timeout", "180",
                       timeout=200, check=False)  # fmt: skip

    with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(connect, clients))
    vips: dict[str, str] = {}
    for name, client in zip(names, clients, strict=True):
        sa = client_sa(client)
        assert sa is not None, f"{name}: " + client.log_text()[-2000:] + gw_log.read_text()[-3000:]
        (vips[name],) = sa["local-vips"]
        child = next(iter(sa["child-sas"].values()))
        assert child["local-ts"] == [f"{vips[name]}/32"], child  # narrowed to its own address
        assert sa["remote-host"] == "198.18.0.1" and sa.get("nat-local") == "yes", sa
    assert len(set(vips.values())) == CLIENTS, vips
    assert all(ipaddress.ip_address(v) in ipaddress.ip_network(POOL_RANGE) for v in vips.values())

    # The controller's leases are what the clients got, each on this gateway.
    listed = json.loads(meshctl(ml, "get", "leases", "-o", "json"))["items"]
    leases = {item["user"]: item for item in listed}
    assert set(leases) == set(names)
    for name in names:
        assert leases[name]["addresses"] == [vips[name]] and leases[name]["gateway"] == gw, leases[name]
    remotes = {sa["remote"] for sa in ml.status(gw).get("ike_sas", []) if sa.get("state") == "ESTABLISHED"}
    assert len([r for r in remotes if r.startswith(NAT_OUTER)]) == CLIENTS, remotes  # 1 address, 20 ports
    responder = ml.status(gw)["stats"]["responder"]
    assert not responder.get("cookie_sent") and not responder.get("dropped_overload_address"), responder

    def ping(item: tuple[str, Charon]) -> str:
        name, client = item
        argv = ["ping", "-c", "3", "-i", "0.3", "-W", "3", "-I", vips[name], SRV]
        result = client.host.run(argv, check=False)
        return "" if result.returncode == 0 else f"{name} ({vips[name]}): {result.stdout}{result.stderr}"

    with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
        failures = [f for f in pool.map(ping, zip(names, clients, strict=True)) if f]
    assert not failures, failures

