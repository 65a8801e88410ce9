"""A controller-managed meshsec gateway serving a strongSwan 5.9.8 road warrior, all real
processes in namespaces: `meshctl apply` of a pool and a user, `meshctl remote-access profile`
renders the laptop's swanctl.conf (device key made here, certificate signed by the controller),
charon connects with it, gets its address from the controller's lease and pings the site behind
the gateway; `meshctl get leases` and the controller's events show the client; removing the
device revokes its certificate and the gateway drops the client within seconds and refuses it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.agent.meshlab import MeshLab, resource, wait_for
from tests.agent.remote_access_lab import CONNECTION, client_sa, eap_user_alice, meshctl
from tests.harness.netns import Lab
from tests.harness.strongswan import DEFAULT_PLUGINS, EAP_PLUGINS, CharonFactory, CharonSettings

pytestmark = [pytest.mark.netns, pytest.mark.strongswan, pytest.mark.timeout(150)]

POOL = {"addresses": ["198.19.61.0/24"], "dns": ["198.19.1.53"],
        "routes": {"mode": "split", "prefixes": ["198.19.1.0/24"]},
        "gateways": {"matchLabels": {"role": "gateway"}}, "auth": {"methods": ["certificate"]}}  # fmt: skip
DEVICES = [{"name": "laptop", "platform": "linux"}, {"name": "phone", "platform": "android"}]


@pytest.fixture
def netns_prefix() -> str:
    return "h17n-"


def _bob(devices: list[dict[str, str]]) -> object:
    spec = {"identity": "bob@example.test", "pool": "staff", "auth": {"method": "certificate"}}
    return resource("RemoteAccessUser", "bob", {**spec, "devices": devices})


def test_controller_managed_gateway_serves_a_road_warrior(lab: Lab, charons: CharonFactory) -> None:
    ml = MeshLab(lab)
    ml.start_controller()
    gw = ml.add_node(1)
    ml.apply(resource("RemoteAccessPool", "staff", POOL), _bob(DEVICES))  # type: ignore[arg-type]
    gw_log = ml.work / f"{gw}.log"
    wait_for("the gateway serving pool staff", lambda: "serving ra-staff" in gw_log.read_text(), 30)

    out = ml.work / "bob-swanctl"
    meshctl(ml, "remote-access", "profile", "bob", "laptop", "--out", str(out))
    rw = lab.host("rw")
    ml.sw.attach(rw, "198.18.0.50/24")
    charon = charons.start(rw, [], CharonSettings(plugins=DEFAULT_PLUGINS, retransmit_tries=2,
                                                  retransmit_timeout=2.0))  # fmt: skip
    for path in out.rglob("*"):
        if path.is_file():
            target = charon.swanctl_dir / path.relative_to(out)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
            target.chmod(path.stat().st_mode & 0o777)
    conf = (charon.swanctl_dir / "swanctl.conf").read_text()
    assert "remote_addrs = 198.18.0.1" in conf and "vips = 0.0.0.0" in conf, conf
    charon.swanctl("--load-all", "--noprompt")
    charon.initiate(CONNECTION, CONNECTION, timeout=30)
    sa = client_sa(charon)
    assert sa is not None, charon.log_text()[-3000:]
    (vip,) = sa["local-vips"]
    assert vip.startswith("198.19.61.")
    child = next(iter(sa["child-sas"].values()))
    assert child["local-ts"] == [f"{vip}/32"] and child["remote-ts"] == ["198.19.1.0/24"]
    ping = rw.run(["ping", "-c", "3", "-i", "0.2", "-W", "2", "-I", vip, "198.19.1.1"], check=False)
    assert ping.returncode == 0, ping.stdout + gw_log.read_text()[-3000:]

    leases = meshctl(ml, "get", "leases")
    assert "bob" in leases and vip in leases and gw in leases, leases

    def lease_traffic() -> dict[str, Any] | None:
        (lease,) = json.loads(meshctl(ml, "get", "leases", "-o", "json"))["items"]
        traffic: dict[str, Any] = lease["traffic"]
        return traffic if traffic["packetsIn"] >= 3 and traffic["packetsOut"] >= 3 else None

    # The gateway's next status report carries the client's CHILD_SA counters to its lease.
    traffic = wait_for("the ping's packets on bob's lease", lease_traffic, 30, interval=1)
    assert traffic["bytesIn"] >= 3 * 84 and traffic["bytesOut"] >= 3 * 84, traffic  # 3 echoes each way
    assert traffic["reportedAt"], traffic
    events = meshctl(ml, "events", "-o", "json")
    assert "RemoteAccessConnected" in events and f"bob (laptop) on {gw} with {vip}" in events, events

    # Dropping the laptop from bob's devices revokes its certificate: off the gateway in seconds.
    ml.apply(_bob(DEVICES[1:]))  # type: ignore[arg-type]
    wait_for("the gateway dropping the revoked laptop", lambda: client_sa(charon) is None, 10)
    assert "is revoked: deleting IKE SA" in gw_log.read_text()
    refused = charon.swanctl("--initiate", "--ike", CONNECTION, "--child", CONNECTION, "--timeout", "10",
                             check=False)  # fmt: skip
    assert refused.returncode != 0
    refusal = "is revoked (AUTHENTICATION_FAILED)"
    wait_for("the refusal in the gateway's log", lambda: refusal in gw_log.read_text(), 10)
    released = meshctl(ml, "events", "-o", "json")
    assert f"bob (laptop) left {gw}" in released, released


def test_controller_managed_gateway_serves_an_eap_mschapv2_road_warrior(
    lab: Lab, charons: CharonFactory
) -> None:
    """The gateway Node holds no password: the NT hash comes from the controller
    (GetEapCredential) when alice names herself, the address from her lease."""
    ml = MeshLab(lab)
    ml.start_controller()
    gw = ml.add_node(1)
    eap_user_alice(ml, POOL, "correct horse battery")
    gw_log = ml.work / f"{gw}.log"
    wait_for("the gateway serving pool staff", lambda: "serving ra-staff-eap" in gw_log.read_text(), 30)

    out = ml.work / "alice-swanctl"
    meshctl(ml, "remote-access", "profile", "alice", "laptop", "--out", str(out))
    rw = lab.host("rw")
    ml.sw.attach(rw, "198.18.0.50/24")
    settings = CharonSettings(
        plugins=(*DEFAULT_PLUGINS, *EAP_PLUGINS), retransmit_tries=2, retransmit_timeout=2.0
    )
    charon = charons.start(rw, [], settings)
    for path in out.rglob("*"):
        if path.is_file():
            target = charon.swanctl_dir / path.relative_to(out)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    conf = (charon.swanctl_dir / "swanctl.conf").read_text()
    assert "auth = eap-mschapv2" in conf, conf
    conf = conf.replace("# secret = <your password>", 'secret = "correct horse battery"')
    (charon.swanctl_dir / "swanctl.conf").write_text(conf)
    charon.swanctl("--load-all", "--noprompt")
    charon.initiate(CONNECTION, CONNECTION, timeout=30)
    sa = client_sa(charon)
    assert sa is not None, charon.log_text()[-3000:] + gw_log.read_text()[-3000:]
    (vip,) = sa["local-vips"]
    assert vip.startswith("198.19.61.")
    ping = rw.run(["ping", "-c", "3", "-i", "0.2", "-W", "2", "-I", vip, "198.19.1.1"], check=False)
    assert ping.returncode == 0, ping.stdout + gw_log.read_text()[-3000:]
    leases = meshctl(ml, "get", "leases")
    assert "alice" in leases and vip in leases, leases
    assert "correct horse" not in gw_log.read_text()

    # A wrong password fails on both sides, and the admin sees why in alice's events: one event
    # for two tries within the minute (the gateway and the controller each limit it).
    charon.swanctl("--terminate", "--ike", CONNECTION, check=False)
    conf = (charon.swanctl_dir / "swanctl.conf").read_text()
    (charon.swanctl_dir / "swanctl.conf").write_text(conf.replace("correct horse", "wrong horse"))
    charon.swanctl("--load-all", "--noprompt")
    for _ in range(2):
        tried = charon.swanctl("--initiate", "--ike", CONNECTION, "--child", CONNECTION, "--timeout", "15",
                               check=False)  # fmt: skip
        assert tried.returncode != 0 and client_sa(charon) is None

    def refusals() -> list[str]:
        lines = meshctl(ml, "events", "-o", "json").splitlines()  # one JSON document per event
        events = [json.loads(line) for line in lines if line.strip()]
        return [e["message"] for e in events if e.get("reason") == "RemoteAccessRefused"]

    (refused,) = wait_for("alice's refusal among the events", refusals, 15, interval=1)
    assert refused.startswith(f"alice refused on {gw} from 198.18.0.50: ") and "password" in refused, refused
    assert "horse" not in refused and "horse" not in gw_log.read_text()
