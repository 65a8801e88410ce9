"""Deleting a remote-access user drops its clients on every gateway and refuses its certificates,
all real processes in namespaces: a controller, two gateway Nodes (meshsec agents) and strongSwan
5.9.8 road warriors. bob's laptop is connected to n1 and his phone to n2 when `meshctl delete
remoteaccessuser bob` runs; the controller pushes the new revocation list with both gateways'
desired state (NodeConfig.revocation), both close his IKE SAs, a reconnect with the laptop's
certificate is refused with AUTHENTICATION_FAILED (also once a new bob with the same devices
exists), and carol's laptop still connects. The controller's events tell each disconnect and
the refusal."""

from __future__ import annotations

import json

import pytest

from tests.agent.meshlab import MeshLab, resource, wait_for
from tests.agent.remote_access_lab import CONNECTION, POOL, RoadWarriors, client_sa, meshctl, profile, user
from tests.harness.netns import Lab
from tests.harness.strongswan import CharonFactory

pytestmark = [pytest.mark.netns, pytest.mark.strongswan, pytest.mark.timeout(240)]


@pytest.fixture
def netns_prefix() -> str:
    return "h17r-"


def test_deleting_a_user_drops_it_on_every_gateway_and_refuses_its_certificate(
    lab: Lab, charons: CharonFactory
) -> None:
    ml = MeshLab(lab)
    ml.start_controller()
    gateways = [ml.add_node(1), ml.add_node(2)]
    ml.apply(resource("RemoteAccessPool", "staff", POOL),
             resource("RemoteAccessUser", "bob", user("bob", ["laptop", "phone"])),
             resource("RemoteAccessUser", "carol", user("carol")))  # fmt: skip
    logs = {gw: ml.work / f"{gw}.log" for gw in gateways}
    for gw, log in logs.items():
        wait_for(f"{gw} serving pool staff", lambda log=log: "serving ra-staff" in log.read_text(), 60)  # type: ignore[misc]

    rws = RoadWarriors(ml, charons)
    laptop = rws.start(profile(ml, "bob", "laptop", "n1"))
    phone = rws.start(profile(ml, "bob", "phone", "n2"))
    carol_files = profile(ml, "carol", "laptop", "n1")
    for client in (laptop, phone):
        client.initiate(CONNECTION, CONNECTION, timeout=60)
    for client, gw in ((laptop, "n1"), (phone, "n2")):
        sa = client_sa(client)
        assert sa is not None, client.log_text()[-3000:] + logs[gw].read_text()[-3000:]
        assert sa["remote-host"] == f"198.18.0.{gw[1:]}"
    listed = json.loads(meshctl(ml, "get", "leases", "-o", "json"))["items"]
    leases = {(x["device"], x["gateway"]) for x in listed}
    assert leases == {("laptop", "n1"), ("phone", "n2")}

    meshctl(ml, "delete", "remoteaccessuser", "bob")
    # Generous bound, no timing assert: the push takes a watch round trip, the poll it replaces 2 s.
    wait_for("both gateways dropping bob", lambda: client_sa(laptop) is None and client_sa(phone) is None, 30)
    for log in logs.values():
        text = log.read_text()
        assert "bob@example.test's certificate" in text, text[-3000:]
        assert "is revoked: deleting IKE SA" in text, text[-3000:]
        # Pushed with the desired state, not polled (agent/gateway/revocation.py logs which).
        assert "revocation list (pushed): 2 new serial(s)" in text, text[-3000:]
    for gw in gateways:
        wait_for(f"{gw} without bob's IKE SA", lambda gw=gw: not [  # type: ignore[misc]
            sa for sa in ml.status(gw)["ike_sas"] if sa.get("remote_id") == "bob@example.test"
        ], 15)  # fmt: skip

    # The same certificate is refused from now on (the gateway checks the list in IKE_AUTH).
    refused = laptop.swanctl("--initiate", "--ike", CONNECTION, "--child", CONNECTION, "--timeout", "20",
                             check=False, timeout=40)  # fmt: skip
    assert refused.returncode != 0 and client_sa(laptop) is None
    wait_for("the refusal on n1", lambda: "is revoked (AUTHENTICATION_FAILED)" in logs["n1"].read_text(), 15)
    wait_for("charon told AUTHENTICATION_FAILED",
             lambda: "received AUTHENTICATION_FAILED notify error" in laptop.log_text(), 15)  # fmt: skip

    # Another user's device still connects to the same gateway.
    carol = rws.start(carol_files)
    carol.initiate(CONNECTION, CONNECTION, timeout=60)
    assert client_sa(carol) is not None, carol.log_text()[-3000:] + logs["n1"].read_text()[-3000:]

    # bob again, same name and devices: his old certificates stay revoked.
    ml.apply(resource("RemoteAccessUser", "bob", user("bob", ["laptop", "phone"])))
    refusal = "is revoked (AUTHENTICATION_FAILED)"
    refusals = logs["n1"].read_text().count(refusal)
    again = laptop.swanctl("--initiate", "--ike", CONNECTION, "--child", CONNECTION, "--timeout", "20",
                           check=False, timeout=40)  # fmt: skip
    assert again.returncode != 0 and client_sa(laptop) is None
    wait_for("the second refusal on n1", lambda: logs["n1"].read_text().count(refusal) > refusals, 15)

    events = meshctl(ml, "events", "-o", "json")
    for told in ("bob (laptop) left n1: user deleted", "bob (phone) left n2: user deleted"):
        assert told in events, events
    assert "RemoteAccessDisconnected" in events
    # The gateway told the controller whose revoked device came back (once a minute per serial).
    assert "bob (laptop) refused on n1 from 198.18.0.100: certificate" in events, events
