"""An agent upgraded while an older data-plane daemon forwards on (the chart's daemon DaemonSet
is OnDelete): the daemon from before `bypass_socket` names no ops in its hello, so the agent
marks its IKE sockets itself instead of sending an op that daemon would refuse (which would
keep the new agent from starting). The older daemon is played by a thread answering the
version-1 protocol as that daemon did: there is no build of it to run."""

from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from meshsec.agent.dataplane.api import DataPlaneError
from meshsec.agent.dataplane.userspace import control
from meshsec.agent.dataplane.userspace.backend import DEFAULT_BYPASS_MARK
from meshsec.agent.dataplane.userspace.client import DaemonDataPlane

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="SO_MARK needs CAP_NET_ADMIN")

OLD_HELLO = {
    "version": 1, "pid": 4242, "started_at": 0.0, "tun": "ud0", "mtu": 1400,
    "capabilities": {"backend": "userspace", "esp": True, "ah": False, "aead_gcm": True,
                     "udp_encapsulation": True, "notes": []},
}  # fmt: skip


class OldDaemon(threading.Thread):
    """Answers hello (without `ops`/`bypass_mark`) and encap_sockets; records every op."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.listener.bind(str(path))
        self.listener.listen(1)
        self.ops: list[str] = []

    def run(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            while data := conn.recv(control.MAX_REQUEST):
                req = json.loads(data)
                self.ops.append(req["op"])
                reply: dict[str, Any] = {"id": req["id"], "ok": True}
                if req["op"] == "hello":
                    reply.update(OLD_HELLO)
                elif req["op"] == "encap_sockets":
                    reply["sockets"] = []
                else:
                    reply = {"id": req["id"], "ok": False, "kind": "protocol",
                             "error": f"unknown op {req['op']!r}"}  # fmt: skip
                conn.send(control.encode(reply))


async def test_an_agent_marks_its_ike_socket_itself_for_a_daemon_without_bypass_socket(
    tmp_path: Path,
) -> None:
    old = OldDaemon(tmp_path / "dataplane.sock")
    old.start()
    client = DaemonDataPlane(tmp_path / "dataplane.sock", connect_timeout=5.0)
    ike = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        await client.start()
        await client.bypass_socket(ike)
        assert ike.getsockopt(socket.SOL_SOCKET, socket.SO_MARK) == DEFAULT_BYPASS_MARK
        assert old.ops == ["hello", "encap_sockets"]  # no op the old daemon would refuse
        with pytest.raises(DataPlaneError, match="unknown op 'drops'"):
            await client._call("drops")  # and what that daemon refuses still fails loudly
    finally:
        ike.close()
        await client.close()
        old.listener.close()
