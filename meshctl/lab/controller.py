"""The lab's controller: a real ``meshsec-controller`` on the host with an embedded store.

Agents reach its listeners at 198.18.0.1 over the lab's veth; meshctl reaches its admin socket
under /run/meshsec-lab. The external gateway's PSK is set through the admin API once it runs
(`AdminClient.put_secret`, what `meshctl secret set` calls).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from meshsec.meshctl.client import AdminClient, Target
from meshsec.meshctl.errors import MeshctlError
from meshsec.meshctl.lab import netns
from meshsec.meshctl.lab.plan import CONTROLLER_ADDRESS
from meshsec.meshctl.lab.preflight import meshsec_program

MTLS_PORT = 7443
BOOTSTRAP_PORT = 7444


@dataclass(frozen=True)
class ControllerPaths:
    data_dir: Path
    admin_socket: Path
    log: Path

    @property
    def store(self) -> Path:
        return self.data_dir / "store.log"

    @property
    def ca_cert(self) -> Path:
        return self.data_dir / "ca.pem"


def controller_argv(paths: ControllerPaths, status_interval: int) -> list[str]:
    program = meshsec_program("meshsec-controller")
    assert program is not None
    return [
        program,
        "--data-dir",
        str(paths.data_dir),
        "--admin-socket",
        str(paths.admin_socket),
        "--listen",
        f"{CONTROLLER_ADDRESS}:{MTLS_PORT}",
        "--bootstrap-listen",
        f"{CONTROLLER_ADDRESS}:{BOOTSTRAP_PORT}",
        "--server-name",
        CONTROLLER_ADDRESS,
        "--metrics",
        "",
        "--replica",
        "lab",
        "--status-interval",
        str(status_interval),
    ]


def start(paths: ControllerPaths, status_interval: int = 5) -> int:
    paths.data_dir.mkdir(parents=True, exist_ok=True)
    paths.admin_socket.parent.mkdir(parents=True, exist_ok=True)
    paths.admin_socket.unlink(missing_ok=True)
    return netns.popen(None, controller_argv(paths, status_interval), paths.log)


def wait_ready(paths: ControllerPaths, pid: int, timeout: float = 20.0) -> None:
    """Until the admin API answers; a controller that exits or hangs is reported with its log."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if not netns.alive(pid):
            raise RuntimeError(
                f"meshsec-controller exited during start-up; log: {paths.log}\n{tail(paths.log)}"
            )
        if paths.admin_socket.exists():
            try:
                with AdminClient(Target.parse(str(paths.admin_socket)), timeout=2.0) as client:
                    client.list_resources("Site")
                return
            except MeshctlError as exc:
                last = exc.message
        time.sleep(0.1)
    raise RuntimeError(f"meshsec-controller not ready after {timeout:.0f}s ({last}); log: {paths.log}")


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
