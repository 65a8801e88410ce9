"""A real meshsec-controller (embedded store in a temp dir) for meshctl's tests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from meshsec.meshctl.client import AdminClient, Target
from meshsec.meshctl.errors import MeshctlError


def _controller_program() -> str:
    beside = Path(sys.executable).parent / "meshsec-controller"
    return str(beside) if beside.exists() else "meshsec-controller"


@dataclass(frozen=True)
class ControllerProcess:
    socket: Path  # the admin socket
    mtls: str  # 127.0.0.1:<port> of the mTLS listener


@pytest.fixture
def controller(controller_process: ControllerProcess) -> Path:
    """The admin socket of a running ``meshsec-controller``."""
    return controller_process.socket


@pytest.fixture
def controller_process() -> Iterator[ControllerProcess]:
    """Starts ``meshsec-controller`` (listeners on 127.0.0.1, ephemeral ports); stopped by PID afterwards."""
    # A short directory: AF_UNIX paths are limited to 108 bytes.
    workdir = Path(tempfile.mkdtemp(prefix="msl-ctl-"))
    socket = workdir / "admin.sock"
    log = workdir / "controller.log"
    argv = [
        _controller_program(),
        "--data-dir",
        str(workdir / "data"),
        "--admin-socket",
        str(socket),
        "--listen",
        "127.0.0.1:0",
        "--bootstrap-listen",
        "127.0.0.1:0",
        "--metrics",
        "",
        "--replica",
        "t",
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                pytest.fail(f"meshsec-controller exited {proc.returncode}: {log.read_text()}")
            port = re.search(r"mTLS \S+ \(port (\d+)\)", log.read_text())
            if socket.exists() and port:
                try:
                    with AdminClient(Target.parse(str(socket)), timeout=2) as client:
                        client.list_resources("Site")
                    break
                except MeshctlError:
                    pass
            if time.monotonic() > deadline:
                pytest.fail(f"meshsec-controller not ready: {log.read_text()}")
            time.sleep(0.1)
        yield ControllerProcess(socket, f"127.0.0.1:{port.group(1)}")
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        subprocess.run(["rm", "-rf", str(workdir)], check=False)
