"""The chart's etcd TLS values on a real etcd that serves TLS only and asks client certificates:
the `--etcd-*` flags the chart renders, pointed at the Secret's keys as Kubernetes would mount
them (ca.crt, tls.crt, tls.key), start a controller that stores its CA in that etcd, and a
second replica with an empty data directory reads the same CA back from it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.etcd import EtcdServer, EtcdTls
from tests.harness.tls import ThrowawayCA
from tests.k8s.test_chart import container, render

pytestmark = [pytest.mark.etcd, pytest.mark.timeout(180)]

MOUNT = "/etc/meshsec/etcd-tls"


@pytest.fixture(scope="module")
def tls_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EtcdServer, dict[str, bytes]]]:
    """A TLS-only etcd with --client-cert-auth, and the keys of the Secret the chart mounts."""
    ca = ThrowawayCA("chart etcd CA")
    served = ca.issue("127.0.0.1", ip_addresses=("127.0.0.1",), server=True, client=True)
    client = ca.issue("meshsec-controller", client=True)
    tls = EtcdTls(ca.cert_pem, served.cert_pem, served.key_pem.reveal())
    with EtcdServer.start(tmp_path_factory.mktemp("chart-etcd-tls"), tls=tls) as server:
        yield server, {"ca.crt": ca.cert_pem, "tls.crt": client.cert_pem, "tls.key": client.key_pem.reveal()}


def _chart_etcd_flags(folder: Path) -> list[str]:
    """The controller's --etcd-* arguments as the chart renders them, with the Secret's mount
    path replaced by `folder` (the files are the Secret's keys, under the same names)."""
    values = {
        "store": {
            "type": "etcd",
            "etcd": {"endpoints": ["127.0.0.1:2379"], "tls": {"secretName": "etcd-client"}},
        }
    }
    ctl = container(render(values)["Deployment/mesh-meshsec-controller"], "controller")
    flags = [a for a in ctl["args"] if a.startswith("--etcd-")]
    assert len(flags) == 3
    return [a.replace(MOUNT, str(folder)) for a in flags]


def _run_until_serving(argv: list[str], workdir: Path, replica: str) -> bytes:
    """Starts the controller, waits for its mTLS listener, stops it; returns the ca.pem it wrote."""
    log = workdir / f"{replica}.log"
    data = workdir / f"data-{replica}"
    full = [
        *argv,
        "--data-dir", str(data), "--admin-socket", str(workdir / f"{replica}.sock"),
        "--listen", "127.0.0.1:0", "--bootstrap-listen", "127.0.0.1:0", "--metrics", "", "--replica", replica,
    ]  # fmt: skip
    with open(log, "wb") as out:
        proc = subprocess.Popen(full, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60  # generous: only a failing run waits this long
        while f"meshsec-controller {replica}: mTLS" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        ca_pem = (data / "ca.pem").read_bytes()
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
    assert proc.returncode == 0, log.read_text()
    return ca_pem


def test_the_charts_etcd_tls_flags_store_and_read_through_tls_only_etcd(
    tls_etcd: tuple[EtcdServer, dict[str, bytes]], tmp_path: Path
) -> None:
    server, secret = tls_etcd
    assert server.tls is not None  # clients: https only, with a certificate by its CA
    for key, pem in secret.items():
        (tmp_path / key).write_bytes(pem)
    workdir = Path(tempfile.mkdtemp(prefix="msl-cetls-"))  # AF_UNIX paths are short
    controller = str(Path(sys.executable).parent / "meshsec-controller")
    argv = [controller, "--store", f"etcd://{server.endpoint}", *_chart_etcd_flags(tmp_path)]
    try:
        first = _run_until_serving(argv, workdir, "cetls-a")
        # An empty data directory: the CA can only come from what the first replica stored.
        second = _run_until_serving(argv, workdir, "cetls-b")
        assert first == second and first.startswith(b"-----BEGIN CERTIFICATE-----")
        # Without the client certificate etcd refuses the connection, so the controller fails.
        no_cert = subprocess.run(
            [controller, "--store", f"etcd://{server.endpoint}", f"--etcd-ca={tmp_path / 'ca.crt'}",
             "--data-dir", str(workdir / "data-c"), "--admin-socket", str(workdir / "c.sock"),
             "--listen", "127.0.0.1:0", "--bootstrap-listen", "127.0.0.1:0", "--metrics", "",
             "--replica", "c"],
            capture_output=True, text=True, timeout=90, check=False,
        )  # fmt: skip
        assert no_cert.returncode != 0, no_cert.stderr
        assert "etcd" in (no_cert.stdout + no_cert.stderr).lower()  # refused there, not by a flag
    finally:
        subprocess.run(["rm", "-rf", str(workdir)], check=False)
