"""A real `meshsec-agent --config FILE` process inside a lab host, for interop tests.

The agent runs as `ip netns exec NS python -m meshsec.agent.cli --config FILE`: sockets, TUN
and routes are then plainly inside the namespace (no setns tricks in the test process), and the
test talks to it only through its status socket, like an operator would."""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tests.harness.netns import Host, stop_process

T = TypeVar("T")
Status = dict[str, Any]


class MeshsecAgent:
    def __init__(self, host: Host, config: dict[str, Any], name: str = "meshsec") -> None:
        self.host = host
        self.workdir = host.lab.workdir / f"{name}-{host.name}"
        self.workdir.mkdir(parents=True, exist_ok=True)
        # AF_UNIX paths are short (108 bytes): keep the socket out of pytest's long tmp paths.
        self._sockdir = Path(tempfile.mkdtemp(prefix=f"{host.lab.run_prefix}agent-"))
        self.status_socket = self._sockdir / "status.sock"
        agent = dict(config.get("agent", {}))
        agent.setdefault("status_socket", str(self.status_socket))
        agent.setdefault("log_level", "debug")
        self.config = {**config, "agent": agent}
        self.config_path = self.workdir / "agent.yaml"
        self.log_path = self.workdir / "agent.log"
        self.proc: Any = None
        host.lab.on_close(lambda: shutil.rmtree(self._sockdir, ignore_errors=True))

    def start(self, timeout: float = 15.0) -> MeshsecAgent:
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        self.config_path.chmod(0o600)
        argv = [sys.executable, "-m", "meshsec.agent.cli", "--config", str(self.config_path)]
        self.proc = self.host.popen(argv, log=self.log_path)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"meshsec agent exited with {self.proc.returncode}:\n{self.log_text()}")
            if self.status_socket.exists():
                try:
                    self.status()
                    return self
                except OSError:
                    pass
            time.sleep(0.05)
        raise TimeoutError(f"meshsec agent opened no status socket in {timeout}s:\n{self.log_text()}")

    def status(self) -> Status:
        from meshsec.agent.standalone.status import query_status

        return query_status(self.status_socket)

    def wait_for(self, predicate: Callable[[Status], T | None], timeout: float = 15.0) -> T:
        deadline = time.monotonic() + timeout
        while True:
            try:
                status = self.status()
            except (ValueError, TimeoutError):  # a busy agent left the poll unanswered: poll again
                status = None
            result = predicate(status) if status is not None else None
            if result:
                return result
            if time.monotonic() >= deadline:
                tail = self.log_text()[-4000:]
                raise TimeoutError(f"meshsec condition not met in {timeout}s; log:\n{tail}")
            time.sleep(0.05)

    def established(self, name: str) -> Status | None:
        """The ESTABLISHED IKE SA of connection `name` with all its children INSTALLED, if any."""

        def find(status: Status) -> Status | None:
            for sa in status["ike_sas"]:
                if (
                    sa["name"] == name
                    and sa["state"] == "ESTABLISHED"
                    and sa["child_sas"]
                    and all(c["state"] == "INSTALLED" for c in sa["child_sas"])
                ):
                    return dict(sa)
            return None

        return find(self.status())

    def stop(self) -> int | None:
        return stop_process(self.proc, grace=8.0) if self.proc is not None else None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
