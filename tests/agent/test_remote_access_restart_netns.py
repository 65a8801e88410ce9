"""A controller-managed gateway restarted by kill -9 under a road warrior's 10 ms ping (issue
#17), all real processes: strongSwan 5.9.8 connects with the profile `meshctl remote-access
profile` renders and pings the server behind the gateway; the gateway agent (userspace data
plane: its daemon forwards on while no agent runs) is killed and started again. The new agent
resumes the client's IKE SA from its state file: the client sees the same IKE SA (SPIs), no new
one, the same virtual address; the lease is still the gateway's in `meshctl get leases` (taken
back with AllocateLease); a CHILD_SA rekey over the resumed IKE SA works and stays narrowed to
the address; with the controller down at the restart the SA goes on and the lease is confirmed
once it is back; the client's later disconnect releases the lease (ConnectedClients holds it
again). The loss is printed (target 0) and none is allowed while no agent runs."""

from __future__ import annotations

import datetime
import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.agent.meshlab import MeshLab, resource, wait_for
from tests.agent.remote_access_lab import (
    CONNECTION,
    POOL,
    SRV,
    RoadWarriors,
    client_sa,
    eap_user_alice,
    meshctl,
    profile,
    server_behind,
    user,
)
from tests.harness.netns import Lab, lost_at, parse_ping
from tests.harness.strongswan import Charon, CharonFactory

pytestmark = [pytest.mark.netns, pytest.mark.strongswan, pytest.mark.timeout(360)]
COUNT = 1500  # 15 s at 10 ms


@pytest.fixture
def netns_prefix() -> str:
    return "h17r-"


def _ike_sas(charon: Charon) -> list[dict[str, Any]]:
    return [e[CONNECTION] for e in charon.list_sas_raw() if isinstance(e.get(CONNECTION), dict)]


def _ids(sa: dict[str, Any]) -> tuple[str, str, str]:
    return sa["initiator-spi"], sa["responder-spi"], sa["uniqueid"]


def _child_spis(sa: dict[str, Any]) -> set[tuple[str, str]]:
    return {(c["spi-in"], c["spi-out"]) for c in sa["child-sas"].values()}


def _road_warrior_entries(ml: MeshLab, gw: str) -> list[dict[str, Any]]:
    path = ml.state_dir(gw) / "ike-sas.json"
    if not path.exists():
        return []
    with_sas = json.loads(path.read_bytes())["sas"]
    return [e for e in with_sas if e.get("kind") == "road-warrior"]


def _last_up(log: Path, gw: str) -> float:
    line = [x for x in log.read_text().splitlines() if f"meshsec agent {gw} up" in x][-1]
    return datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def test_a_road_warriors_ike_sa_survives_a_kill_9_gateway_restart(lab: Lab, charons: CharonFactory) -> None:
    ml = MeshLab(lab)
    ml.start_controller()
    gw = ml.add_node(1, before_agent=server_behind)
    ml.apply(resource("RemoteAccessPool", "staff", POOL), resource("RemoteAccessUser", "bob", user("bob")))  # type: ignore[arg-type]
    gw_log = ml.work / f"{gw}.log"
    wait_for("the gateway serving pool staff", lambda: "serving ra-staff" in gw_log.read_text(), 60)
    rws = RoadWarriors(ml, charons)
    charon = rws.start(profile(ml, "bob", "laptop", gw))
    charon.initiate(CONNECTION, CONNECTION, timeout=30)
    before = client_sa(charon)
    assert before is not None, charon.log_text()[-3000:] + gw_log.read_text()[-3000:]
    (vip,) = before["local-vips"]
    host = rws.hosts[0]
    assert host.ping(SRV, src=vip, count=3, wait=1.0).loss_percent == 0
    wait_for("the client's SA in the gateway's IKE state file", lambda: _road_warrior_entries(ml, gw), 20)
    assert "ra-staff" in {e["tunnel"] for e in _road_warrior_entries(ml, gw)}

    ping_log = ml.work / "ping-restart.log"
    ping = host.popen(["ping", "-n", "-D", "-c", str(COUNT), "-i", "0.01", "-W", "1", "-I", vip, SRV],
                      log=ping_log)  # fmt: skip
    time.sleep(1.0)
    killed = time.time()
    ml.stop_agent(gw, signal.SIGKILL)
    time.sleep(1.0)  # no agent: the userspace daemon forwards alone
    ml.start_agent(gw)
    wait_for("the restarted gateway's status", lambda: ml.status(gw), 60)
    agent_up = _last_up(gw_log, gw)
    wait_for("the client's SA resumed", lambda: "road warrior bob@example.test resumed"
             in gw_log.read_text(), 30)  # fmt: skip
    wait_for("the lease taken back", lambda: "lease of resumed client bob@example.test taken back"
             in gw_log.read_text(), 30)  # fmt: skip
    ping.wait(60)
    text = ping_log.read_text()
    assert parse_ping(text).transmitted == COUNT, text[-500:]
    lost = lost_at(text, COUNT)
    print(f"kill -9 gateway restart, road warrior: {len(lost)} of {COUNT} lost "
          f"({', '.join(f'{t - killed:+.2f} s' for t in lost)} from the kill; "
          f"agent up {agent_up - killed:.2f} s after it)")  # fmt: skip
    assert not [t for t in lost if killed - 0.1 <= t <= agent_up], lost  # the daemon alone lost nothing

    # The same IKE SA on the client, no second one, the same address.
    after = client_sa(charon)
    assert after is not None and _ids(after) == _ids(before), (before, after)
    assert len(_ike_sas(charon)) == 1 and after["local-vips"] == [vip]
    assert _child_spis(after) == _child_spis(before)
    resumed = ml.status(gw)["resumed_at_start"]
    assert resumed["road_warriors_resumed"] == 1 and resumed["road_warriors_fallback"] == 0, resumed
    listed = meshctl(ml, "get", "leases")
    assert "bob" in listed and vip in listed and gw in listed, listed

    # The resumed IKE SA works: a CHILD_SA rekey (CREATE_CHILD_SA with it), narrowed again.
    charon.swanctl("--rekey", "--child", CONNECTION)
    wait_for("the CHILD_SA rekeyed", lambda: (sa := client_sa(charon)) is not None
             and _child_spis(sa) and not _child_spis(sa) & _child_spis(before), 20)  # fmt: skip
    rekeyed = client_sa(charon)
    assert rekeyed is not None and _ids(rekeyed) == _ids(before)
    assert next(iter(rekeyed["child-sas"].values()))["local-ts"] == [f"{vip}/32"]
    assert host.ping(SRV, src=vip, count=3, wait=1.0).loss_percent == 0

    # The controller down while the gateway restarts: the SA goes on with its persisted address,
    # the confirmation is retried and lands once the controller is back.
    ml.kill_controller()
    ml.stop_agent(gw, signal.SIGKILL)
    ml.start_agent(gw)
    resumed_line = "road warrior bob@example.test resumed"
    wait_for("resumed without a controller", lambda: gw_log.read_text().count(resumed_line) == 2, 60)
    retrying = "taking the lease of resumed client bob@example.test back failed"
    wait_for("the confirmation retried", lambda: retrying in gw_log.read_text(), 30)
    assert host.ping(SRV, src=vip, count=3, wait=1.0).loss_percent == 0
    still = client_sa(charon)
    assert still is not None and _ids(still) == _ids(before) and len(_ike_sas(charon)) == 1
    ml.start_controller()
    taken_back = "lease of resumed client bob@example.test taken back"
    wait_for("the lease confirmed once the controller is back",
             lambda: gw_log.read_text().count(taken_back) == 2, 90)  # fmt: skip
    listed = meshctl(ml, "get", "leases")
    assert "bob" in listed and vip in listed and gw in listed, listed

    # The client leaves: the restarted gateway releases the lease it took back.
    charon.swanctl("--terminate", "--ike", CONNECTION)
    wait_for("the lease released", lambda: "bob" not in meshctl(ml, "get", "leases"), 20)
    assert "road warrior bob@example.test disconnected (deleted by client)" in gw_log.read_text()

    # Refused (its entry names a pool config this gateway no longer serves, as after the pool's
    # removal): one log line says why, the entry leaves the file, the client reconnects and gets
    # the same address (the lease stayed the gateway's in the store: nobody released it).
    charon.initiate(CONNECTION, CONNECTION, timeout=30)
    again = client_sa(charon)
    assert again is not None
    (vip,) = again["local-vips"]  # a new lease: the last one was released
    wait_for("the new SA in the state file", lambda: any(e["sa"]["spi_r"] == again["responder-spi"]
             for e in _road_warrior_entries(ml, gw)), 20)  # fmt: skip
    keys = [v for e in _road_warrior_entries(ml, gw) for v in e["sa"]["keys"].values() if v]  # AEAD: no SK_a
    ml.stop_agent(gw, signal.SIGKILL)
    state_file = ml.state_dir(gw) / "ike-sas.json"
    doc = json.loads(state_file.read_bytes())
    for entry in doc["sas"]:
        entry["tunnel"] = "ra-gone"
    state_file.write_text(json.dumps(doc))
    ml.start_agent(gw)
    refused = "ra-gone: road-warrior IKE SA not resumed (this gateway no longer serves ra-gone); " \
        "the client reconnects"  # fmt: skip
    wait_for("the refusal logged", lambda: refused in gw_log.read_text(), 60)
    assert gw_log.read_text().count(refused) == 1
    assert ml.status(gw)["resumed_at_start"]["road_warriors_fallback"] == 1
    assert all(e["tunnel"] != "ra-gone" for e in _road_warrior_entries(ml, gw))
    charon.swanctl("--terminate", "--ike", CONNECTION, "--force", "--timeout", "2", check=False)
    charon.initiate(CONNECTION, CONNECTION, timeout=30)
    back = client_sa(charon)
    assert back is not None and back["local-vips"] == [vip] and _ids(back) != _ids(again)
    assert host.ping(SRV, src=vip, count=3, wait=1.0).loss_percent == 0
    text = gw_log.read_text()
    assert keys and not [k for k in keys if k in text]  # no key of the state file in the log


def test_an_eap_mschapv2_road_warriors_ike_sa_survives_a_kill_9_gateway_restart(
    lab: Lab, charons: CharonFactory
) -> None:
    """The same for a password client (ra-staff-eap): its lease is the user's device "eap", its
    identity the EAP identity, both from the snapshot."""
    ml = MeshLab(lab)
    ml.start_controller()
    gw = ml.add_node(1, before_agent=server_behind)
    eap_user_alice(ml, POOL, "correct horse battery")
    gw_log = ml.work / f"{gw}.log"
    wait_for("the gateway serving ra-staff-eap", lambda: "serving ra-staff-eap" in gw_log.read_text(), 60)
    files = profile(ml, "alice", "laptop", gw)
    conf = files / "swanctl.conf"
    secret = 'secret = "correct horse battery"'
    conf.write_text(conf.read_text().replace("# secret = <your password>", secret))
    rws = RoadWarriors(ml, charons)
    charon = rws.start(files, eap=True)
    charon.initiate(CONNECTION, CONNECTION, timeout=30)
    before = client_sa(charon)
    assert before is not None, charon.log_text()[-3000:] + gw_log.read_text()[-3000:]
    (vip,) = before["local-vips"]
    host = rws.hosts[0]
    wait_for("the client's SA in the state file", lambda: [e["tunnel"] for e in _road_warrior_entries(ml, gw)]
             == ["ra-staff-eap"], 20)  # fmt: skip

    ping_log = ml.work / "ping-restart-eap.log"
    count = 1000
    ping = host.popen(["ping", "-n", "-D", "-c", str(count), "-i", "0.01", "-W", "1", "-I", vip, SRV],
                      log=ping_log)  # fmt: skip
    time.sleep(1.0)
    killed = time.time()
    ml.stop_agent(gw, signal.SIGKILL)
    time.sleep(1.0)
    ml.start_agent(gw)
    wait_for("the lease taken back", lambda: "lease of resumed client alice@example.test taken back"
             in gw_log.read_text(), 60)  # fmt: skip
    agent_up = _last_up(gw_log, gw)
    ping.wait(60)
    text = ping_log.read_text()
    assert parse_ping(text).transmitted == count, text[-500:]
    lost = lost_at(text, count)
    print(f"kill -9 gateway restart, EAP road warrior: {len(lost)} of {count} lost; agent up "
          f"{agent_up - killed:.2f} s after the kill")  # fmt: skip
    assert not [t for t in lost if killed - 0.1 <= t <= agent_up], lost
    after = client_sa(charon)
    assert after is not None and _ids(after) == _ids(before) and after["local-vips"] == [vip]
    assert len(_ike_sas(charon)) == 1
    listed = meshctl(ml, "get", "leases")
    assert "alice" in listed and vip in listed and gw in listed, listed
    assert host.ping(SRV, src=vip, count=3, wait=1.0).loss_percent == 0

    charon.swanctl("--terminate", "--ike", CONNECTION)
    wait_for("the lease released", lambda: "alice" not in meshctl(ml, "get", "leases"), 20)
    assert "horse" not in gw_log.read_text()
