"""SA lifecycle against real strongSwan 5.9.8 (kernel-libipsec) in namespaces, with traffic
through meshsec's userspace data plane: CHILD_SA rekeying initiated by either side with short
lifetimes while a ping runs every 10 ms, which must lose nothing across at least three rekeys.

The number of rekeys is read from both ends: meshsec logs `CHILD_SA ... REKEYED` when outbound
traffic moves to the new pair, strongSwan's CHILD_SA ends up with SPIs not seen before."""

from __future__ import annotations

import os
import re
import signal
import time
from typing import Any

import pytest

from tests.harness.netns import Host, Lab, PingResult
from tests.harness.strongswan import CharonFactory, Child, Connection, IkeSa
from tests.interop.meshsec_agent import MeshsecAgent
from tests.interop.topology import (
    MS_INNER,
    SUITES,
    SW_INNER,
    build,
    meshsec_config,
    start_both,
    swan_connection,
    swan_settings,
)

pytestmark = [pytest.mark.netns, pytest.mark.strongswan, pytest.mark.timeout(90)]

PING_INTERVAL = 0.01
PING_COUNT = 1200  # 12 s of pings: at least three rekeys at a 3 s rekey time
REKEY = 3  # seconds


@pytest.fixture
def netns_prefix() -> str:
    return "ik2-"


def _ping(host: Host, count: int, interval: float = PING_INTERVAL) -> PingResult:
    """After the last echo request ping waits at least 2 s (-W) for late replies, so a reply
    delayed by a busy machine is not counted as lost."""
    return host.ping(SW_INNER, src=MS_INNER, count=count, interval=interval, wait=2.0)


def _swan_child(sas: list[IkeSa]) -> Any:
    """The installed CHILD_SA (mid-rekey strongSwan also lists the old or the new pair)."""
    for sa in sas:
        for child in sa.children:
            if sa.state == "ESTABLISHED" and child.name == "net" and child.state == "INSTALLED":
                return child
    return None


def _with_child_lifetimes(conn: Connection, rekey: str, life: str, rand: str) -> Connection:
    (child,) = conn.children
    new_child = Child(child.name, child.local_ts, child.remote_ts, child.esp_proposals,
                      rekey_time=rekey, life_time=life, rand_time=rand)  # fmt: skip
    return Connection(**{**conn.__dict__, "children": (new_child,)})


def _meshsec(role: str, child_rekey: int, child_life: int) -> dict[str, Any]:
    ike, esp, _, _ = SUITES["gcm-x25519"]
    config = meshsec_config(ike, esp, start_action="initiate" if role == "initiator" else "wait",
                            dataplane="userspace")  # fmt: skip
    child = config["connections"]["peer"]["children"]["net"]
    child["rekey_time"] = child_rekey
    child["life_time"] = child_life
    return config


def _rekeys_logged(agent: MeshsecAgent) -> int:
    return len(re.findall(r"CHILD_SA net REKEYED", agent.log_text()))


@pytest.mark.parametrize("rekeyer", ["meshsec", "strongswan"])
@pytest.mark.parametrize("role", ["initiator", "responder"])
def test_child_sa_rekey_under_traffic_loses_nothing(lab: Lab, charons: CharonFactory, role: str,
                                                    rekeyer: str) -> None:  # fmt: skip
    ike, esp, _, _ = SUITES["gcm-x25519"]
    pair = build(lab)
    if rekeyer == "meshsec":
        config = _meshsec(role, REKEY, REKEY + 2)
        conn = _with_child_lifetimes(swan_connection(ike, esp), "300s", "330s", "0s")
    else:
        config = _meshsec(role, 300, 330)
        conn = _with_child_lifetimes(swan_connection(ike, esp), f"{REKEY}s", f"{REKEY + 30}s", "0s")
    sw, agent = start_both(charons, pair, conn, config, role)
    first = sw.wait_for(_swan_child)

    ping = _ping(pair.ms, PING_COUNT)

    rekeys = _rekeys_logged(agent)
    assert rekeys >= 3, agent.log_text()[-3000:]
    assert ping.transmitted == PING_COUNT
    assert ping.received == ping.transmitted, (ping, agent.log_text()[-3000:])
    # strongSwan runs a different pair now, and (being rekeyed, not re-created) only one.
    try:
        last = sw.wait_for(_swan_child)
    except TimeoutError:
        raise AssertionError(sw.list_sas_raw()) from None
    assert {last.spi_in, last.spi_out}.isdisjoint({first.spi_in, first.spi_out})
    ms = agent.established("peer")
    assert ms is not None and len(ms["child_sas"]) in (1, 2)  # a second only mid-rekey
    assert "FAILED" not in agent.log_text()


def _swan_ike(sas: list[IkeSa]) -> IkeSa | None:
    return next((sa for sa in sas if sa.state == "ESTABLISHED" and _swan_child([sa]) is not None), None)


@pytest.mark.parametrize("rekeyer", ["meshsec", "strongswan"])
@pytest.mark.parametrize("role", ["initiator", "responder"])
def test_ike_sa_rekey_under_traffic_loses_nothing(lab: Lab, charons: CharonFactory, role: str,
                                                  rekeyer: str) -> None:  # fmt: skip
    """The IKE SA gets new SPIs and keys three times while the CHILD_SA (untouched) carries a
    10 ms ping; meshsec and strongSwan agree on the final SPIs, and the CHILD_SA still rekeys
    under the newest IKE SA (proving both derived the same SK_d)."""
    ike, esp, _, _ = SUITES["gcm-x25519"]
    pair = build(lab)
    config = _meshsec(role, 300, 330)
    conn = _with_child_lifetimes(swan_connection(ike, esp), "300s", "330s", "0s")
    if rekeyer == "meshsec":
        config["connections"]["peer"]["rekey_time"] = REKEY
    else:
        conn = Connection(
            **{**conn.__dict__, "rekey_time": f"{REKEY}s", "rand_time": "0s", "over_time": "30s"}
        )
    sw, agent = start_both(charons, pair, conn, config, role)
    first = sw.wait_for(_swan_ike)
    first_child = _swan_child([first])

    ping = _ping(pair.ms, PING_COUNT)

    log = agent.log_text()
    assert len(re.findall(r"IKE SA \S+_i \S+_r REKEYED", log)) >= 3, log[-3000:]
    assert ping.transmitted == PING_COUNT
    assert ping.received == ping.transmitted, (ping, log[-3000:])
    last = sw.wait_for(_swan_ike)
    assert (last.initiator_spi, last.responder_spi) != (first.initiator_spi, first.responder_spi)
    ms = agent.wait_for(lambda s: agent.established("peer"))
    assert (ms["initiator_spi"], ms["responder_spi"]) == (last.initiator_spi, last.responder_spi)
    child = _swan_child([last])
    assert child is not None and child.spi_in == first_child.spi_in  # moved, not re-created
    # A CHILD_SA rekey under the newest IKE SA: its KEYMAT comes from the new SK_d.
    sw.swanctl("--rekey", "--child", "net")
    rekeyed = sw.wait_for(lambda sas: (c := _swan_child(sas)) is not None and c.spi_in != child.spi_in and c)
    assert rekeyed
    again = _ping(pair.ms, 20)
    assert again.ok, again
    assert "FAILED" not in agent.log_text()


def test_dpd_detects_killed_strongswan_and_restarts_when_it_returns(lab: Lab, charons: CharonFactory) -> None:
    """strongSwan is SIGKILLed (no DELETE goes out). meshsec probes after dpd delay (2 s) of
    silence and declares the peer dead when the probe stays unanswered for the retransmit
    schedule (1 + 1.4 + 1.96 s): at most 6.4 s after the last message. dpd action restart then
    re-initiates until a new strongSwan answers, and traffic flows again."""
    ike, esp, _, _ = SUITES["gcm-x25519"]
    pair = build(lab)
    config = _meshsec("initiator", 300, 330)
    config["connections"]["peer"]["dpd"] = {"delay": 2, "action": "restart"}
    conn = swan_connection(ike, esp)
    sw = charons.start(pair.sw, [conn], swan_settings())
    agent = MeshsecAgent(pair.ms, config).start()
    agent.wait_for(lambda s: agent.established("peer"))
    sw.wait_for(_swan_child)
    assert _ping(pair.ms, 5, 0.05).ok

    assert sw.proc is not None
    os.kill(sw.proc.pid, signal.SIGKILL)
    sw.proc.wait(timeout=10)
    killed = time.monotonic()
    agent.wait_for(lambda s: "is DEAD" in agent.log_text(), timeout=15)
    detected = time.monotonic() - killed
    assert detected <= 2 + 1 + 1.4 + 1.96 + 1.0, detected  # bound plus polling slack
    assert "dead peer detection: peer not responding" in agent.log_text()

    time.sleep(2)  # a restart attempt or two go unanswered
    sw2 = charons.start(pair.sw, [conn], swan_settings())
    agent.wait_for(lambda s: agent.established("peer"), timeout=20)
    sw2.wait_for(_swan_child)
    back = _ping(pair.ms, 5, 0.05)
    assert back.ok, back
    assert "restarting connection peer" in agent.log_text()


def test_reauthentication_with_traffic(lab: Lab, charons: CharonFactory) -> None:
    """meshsec reauthenticates every ~3 s (a whole new IKE SA and CHILD_SA next to the old
    ones, then deletes the old): strongSwan ends with exactly one IKE SA, traffic keeps flowing.
    Unlike rekeying, reauthentication may lose the packets strongSwan sends during one round
    trip (the IKE_AUTH responder switches to the new CHILD_SA at once), so a few are allowed."""
    ike, esp, _, _ = SUITES["gcm-x25519"]
    pair = build(lab)
    config = _meshsec("initiator", 300, 330)
    config["connections"]["peer"]["reauth_time"] = REKEY
    conn = _with_child_lifetimes(swan_connection(ike, esp), "300s", "330s", "0s")
    sw = charons.start(pair.sw, [conn], swan_settings())
    agent = MeshsecAgent(pair.ms, config).start()
    agent.wait_for(lambda s: agent.established("peer"))
    first = sw.wait_for(_swan_ike)

    ping = _ping(pair.ms, PING_COUNT)

    log = agent.log_text()
    assert log.count("reauthenticated as") >= 3, log[-3000:]
    assert ping.transmitted == PING_COUNT
    assert ping.transmitted - ping.received <= 6, ping  # at most ~2 per reauthentication
    sw.wait_for(lambda sas: len([sa for sa in sas if sa.state == "ESTABLISHED"]) == 1, timeout=10)
    last = sw.wait_for(_swan_ike)
    assert last.initiator_spi != first.initiator_spi
    assert "FAILED" not in log
