"""What goes wrong while the standalone agent starts: a peer without a route (ENETUNREACH when
the source address is looked up) fails only its own connection, which is retried (start_action
initiate) while the others come up; any other failure stops the agent (sockets closed, data
plane closed) before the exception leaves `start()`."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
import yaml

from meshsec.agent.adapters.recording import RecordingDataPlane
from meshsec.agent.dataplane.api import IpsecProtocol
from meshsec.agent.ike.address import Address
from meshsec.agent.standalone.config import load_config
from meshsec.agent.standalone.runner import Agent
from tests.agent_standalone.netns_thread import NetnsLoop
from tests.harness.netns import Lab
from tests.interop.meshsec_agent import MeshsecAgent

PSK = "start-failures-psk"


def connection(
    local: list[str], peer: str, my_id: str, peer_id: str, start: str, n: int
) -> dict[str, object]:
    return {
        "local_addrs": local, "remote_addrs": [peer], "local": {"id": my_id}, "remote": {"id": peer_id},
        "psk": PSK, "start_action": start,
        "children": {"net": {"local_ts": [f"198.19.72.{n}/32"], "remote_ts": [f"198.19.72.{n + 100}/32"]}},
    }  # fmt: skip


def responder(me: str, peer: str, my_id: str, n: int) -> dict[str, object]:
    conn = connection([me], peer, my_id, "a.test", "wait", n)
    conn["children"] = {"net": {"local_ts": [f"198.19.72.{n + 100}/32"], "remote_ts": [f"198.19.72.{n}/32"]}}
    return {"agent": {"bind": [me], "dataplane": "none"}, "connections": {"c": conn}}


@pytest.mark.netns
@pytest.mark.timeout(60)
def test_an_unreachable_peer_fails_only_its_connection_and_is_retried(lab: Lab) -> None:
    ha, hb, hc = lab.host("a"), lab.host("b"), lab.host("c")
    lab.link(ha, hb, "198.18.72.1/24", "198.18.72.2/24")
    b = MeshsecAgent(hb, responder("198.18.72.2", "198.18.72.1", "b.test", 1)).start()
    a_cfg = {
        "agent": {"bind": ["0.0.0.0"], "dataplane": "none"},
        "connections": {
            # First, and without local_addrs: its source address is looked up, and a has no route.
            "far": connection([], "198.18.73.9", "a.test", "c.test", "initiate", 2),
            "near": connection(["198.18.72.1"], "198.18.72.2", "a.test", "b.test", "initiate", 1),
        },
    }
    a = MeshsecAgent(ha, a_cfg).start()
    a.wait_for(lambda s: a.established("near"))
    log = a.log_text()
    assert "far: cannot initiate to 198.18.73.9:500: [Errno 101] Network is unreachable" in log
    assert not a.status()["ike_sas"][1:]  # nothing half-made for `far`

    # The route appears: a retry (start_action initiate) brings `far` up too.
    lab.link(ha, hc, "198.18.73.1/24", "198.18.73.9/24")
    c = MeshsecAgent(hc, responder("198.18.73.9", "198.18.73.1", "c.test", 2)).start()
    a.wait_for(lambda s: a.established("far"), timeout=20)
    assert a.established("near")
    assert a.stop() == 0
    assert b.stop() == 0 and c.stop() == 0


class BrokenSpis(RecordingDataPlane):
    """A data plane failing in a way nobody planned for, while the first connection initiates."""

    async def allocate_spi(self, protocol: IpsecProtocol, src: object, dst: object) -> int:  # type: ignore[override]
        raise RuntimeError("allocate_spi exploded")

    closed = False

    async def close(self) -> None:
        self.closed = True
        await super().close()


@pytest.mark.netns
@pytest.mark.timeout(30)
def test_any_other_failure_at_start_stops_the_agent(lab: Lab, tmp_path: Path) -> None:
    ha = lab.host("a")
    sockdir = Path(tempfile.mkdtemp(prefix="io-start-"))  # AF_UNIX paths are short
    lab.on_close(lambda: shutil.rmtree(sockdir, ignore_errors=True))
    raw = {
        "agent": {"bind": ["127.0.0.1"], "ike_port": 15630, "dataplane": "none",
                  "status_socket": str(sockdir / "s.sock")},
        "connections": {"near": connection(["127.0.0.1"], "127.0.0.2", "a.test", "b.test", "initiate", 1)},
    }  # fmt: skip
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(raw))
    path.chmod(0o600)
    config = load_config(path)
    loop = NetnsLoop(ha.ns)
    try:
        dp = BrokenSpis()
        agent = Agent(config, dp)
        with pytest.raises(RuntimeError, match="exploded"):
            loop.run(agent.start())
        assert dp.closed
        assert all(ep.fileno() == -1 for ep in (e.sock for e in agent.adapter._endpoints))
        assert not (sockdir / "s.sock").exists()
        assert not agent.adapter.active()
        # The port is free again: a second agent can bind it.
        again = Agent(config, RecordingDataPlane())
        loop.run(again.adapter.start())
        assert Address("127.0.0.1", 15630) in again.adapter.endpoints
        loop.run(again.stop())
    finally:
        loop.close()
