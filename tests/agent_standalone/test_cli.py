"""`meshsec-agent` end to end: two standalone agents in two namespaces build a tunnel from
their YAML files; `meshsec-agent status` shows it; SIGTERM deletes it at the peer; bad files
are refused with the field path; no key material reaches the logs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from meshsec.agent.cli import main
from tests.harness.netns import Lab
from tests.interop.meshsec_agent import MeshsecAgent

PSK = "cli-test-psk-do-not-log-me"
CLI = [shutil.which("meshsec-agent") or str(Path(sys.executable).with_name("meshsec-agent"))]


def agent_config(me: str, peer: str, my_id: str, peer_id: str, start: str) -> dict[str, object]:
    inner = {"198.18.70.1": "198.19.70.1/32", "198.18.70.2": "198.19.70.2/32"}
    return {
        "agent": {"bind": [me], "dataplane": "none"},
        "connections": {
            "tun": {
                "local_addrs": [me], "remote_addrs": [peer],
                "local": {"id": my_id}, "remote": {"id": peer_id}, "psk": PSK, "start_action": start,
                "children": {"net": {"local_ts": [inner[me]], "remote_ts": [inner[peer]]}},
            }
        },
    }  # fmt: skip


@pytest.mark.netns
@pytest.mark.timeout(60)
def test_two_agents_status_and_shutdown(lab: Lab) -> None:
    ha, hb = lab.host("a"), lab.host("b")
    lab.link(ha, hb, "198.18.70.1/24", "198.18.70.2/24")
    b = MeshsecAgent(hb, agent_config("198.18.70.2", "198.18.70.1", "b.test", "a.test", "wait")).start()
    a = MeshsecAgent(ha, agent_config("198.18.70.1", "198.18.70.2", "a.test", "b.test", "initiate")).start()
    sa_a = a.wait_for(lambda s: a.established("tun"))
    sa_b = b.wait_for(lambda s: b.established("tun"))
    assert (sa_a["initiator_spi"], sa_a["responder_spi"]) == (sa_b["initiator_spi"], sa_b["responder_spi"])

    table = subprocess.run([*CLI, "status", "--socket", str(a.status_socket)], capture_output=True, text=True)
    assert table.returncode == 0, table.stderr
    assert "ESTABLISHED" in table.stdout and "INSTALLED" in table.stdout
    assert f"{sa_a['initiator_spi']}_i {sa_a['responder_spi']}_r" in table.stdout
    child = sa_a["child_sas"][0]
    assert f"{child['spi_in']}_i {child['spi_out']}_o" in table.stdout
    assert "AES_GCM_16-256/PRF_HMAC_SHA2_256/CURVE_25519" in table.stdout
    raw = subprocess.run(
        [*CLI, "status", "--json", "--socket", str(b.status_socket)], capture_output=True, text=True
    )
    assert json.loads(raw.stdout)["ike_sas"][0]["child_sas"][0]["spi_out"] == child["spi_in"]

    assert a.stop() == 0  # SIGTERM: graceful, DELETE sent to b
    b.wait_for(lambda s: not s["ike_sas"] and s["recent"] and s["recent"][-1]["outcome"] == "deleted by peer")
    assert b.stop() == 0
    for agent in (a, b):
        log = agent.log_text()
        assert "ESTABLISHED" in log and "CHILD_SA net INSTALLED" in log
        assert PSK not in log and PSK.encode().hex() not in log


def test_invalid_config_names_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = agent_config("198.18.70.1", "198.18.70.2", "a.test", "b.test", "wait")
    cfg["connections"]["tun"]["children"]["net"]["mode"] = "beet"  # type: ignore[index]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "connections.tun.children.net.mode: must be one of tunnel, transport, not 'beet'" in err


def test_check_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(yaml.safe_dump(agent_config("198.18.70.1", "198.18.70.2", "a.test", "b.test", "wait")))
    assert main(["--config", str(path), "--check"]) == 0
    assert "OK (1 connection(s))" in capsys.readouterr().out


def test_status_without_agent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--socket", str(tmp_path / "none.sock")]) == 3
    assert "no agent answering" in capsys.readouterr().err


def test_status_finds_a_run_mode_agent_by_its_state_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """`run` serves status on <state-dir>/status.sock: `status` finds it with --state-dir, and
    without options in the default state dir after the standalone socket; an error lists both."""
    import asyncio
    import threading

    from meshsec.agent import cli
    from meshsec.agent.standalone.status import StatusServer

    state_dir = tmp_path / "state"
    monkeypatch.setattr(cli, "DEFAULT_STATE_DIR", state_dir)
    monkeypatch.setattr(cli, "DEFAULT_STATUS_SOCKET", str(tmp_path / "standalone.sock"))
    assert main(["status", "--json"]) == 3
    err = capsys.readouterr().err
    assert str(tmp_path / "standalone.sock") in err and str(state_dir / "status.sock") in err

    async def provide() -> dict[str, object]:
        return {"node": "dc1-gw1", "ike_sas": []}

    loop = asyncio.new_event_loop()
    server = StatusServer(state_dir / "status.sock", provide)
    loop.run_until_complete(server.start())
    thread = threading.Thread(target=loop.run_forever)
    thread.start()
    try:
        for argv in (["status", "--json", "--state-dir", str(state_dir)], ["status", "--json"]):
            assert main(argv) == 0, capsys.readouterr().err
            assert '"node": "dc1-gw1"' in capsys.readouterr().out
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.run_until_complete(server.close())
        loop.close()


def test_no_mode_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2


@pytest.mark.netns
@pytest.mark.timeout(60)
def test_restarted_peer_replaces_its_stale_sa_with_initial_contact(lab: Lab) -> None:
    ha, hb = lab.host("a"), lab.host("b")
    lab.link(ha, hb, "198.18.70.1/24", "198.18.70.2/24")
    b = MeshsecAgent(hb, agent_config("198.18.70.2", "198.18.70.1", "b.test", "a.test", "wait")).start()
    a_cfg = agent_config("198.18.70.1", "198.18.70.2", "a.test", "b.test", "initiate")
    first = MeshsecAgent(ha, a_cfg, name="first").start()
    old = first.wait_for(lambda s: first.established("tun"))
    os.kill(first.proc.pid, signal.SIGKILL)  # a crash: no DELETE reaches b
    first.proc.wait(timeout=10)
    second = MeshsecAgent(ha, a_cfg, name="second").start()
    new = second.wait_for(lambda s: second.established("tun"))
    assert new["initiator_spi"] != old["initiator_spi"]
    status = b.wait_for(lambda s: s if len(s["ike_sas"]) == 1 and s["recent"] else None)
    assert status["ike_sas"][0]["initiator_spi"] == new["initiator_spi"]
    assert status["recent"][-1]["initiator_spi"] == old["initiator_spi"]
    assert "INITIAL_CONTACT from a.test: dropping older IKE SA" in b.log_text()
