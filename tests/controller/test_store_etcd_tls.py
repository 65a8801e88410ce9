"""The controller on a TLS etcd with client-cert auth (real etcd): a client without a certificate
or with one from another CA is refused, `open_store` with `EtcdTlsFiles` works, and
`meshsec-controller --etcd-ca/--etcd-cert/--etcd-key` starts a replica on it. The store contract
itself runs against this etcd too (`store_kit`, param "etcd-tls")."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from meshsec.controller.server import EtcdTlsFiles, open_store
from meshsec.controller.store import StoreError
from meshsec.controller.store.etcd import EtcdStore
from tests.controller.conftest import EtcdTlsKit
from tests.harness.tls import ThrowawayCA

pytestmark = [pytest.mark.etcd, pytest.mark.timeout(120)]


def _files(folder: Path, kit: EtcdTlsKit) -> EtcdTlsFiles:
    for name, pem in (("ca.pem", kit.ca_pem), ("c.pem", kit.client_cert_pem), ("k.pem", kit.client_key_pem)):
        (folder / name).write_bytes(pem)
    return EtcdTlsFiles(folder / "ca.pem", folder / "c.pem", folder / "k.pem")


async def test_a_client_without_a_certificate_is_refused(etcd_tls: EtcdTlsKit) -> None:
    with pytest.raises(StoreError):
        await EtcdStore.connect([etcd_tls.server.endpoint], timeout=2, ca_cert=etcd_tls.ca_pem)


async def test_a_certificate_from_another_ca_is_refused(etcd_tls: EtcdTlsKit) -> None:
    stranger = ThrowawayCA("not etcd's CA").issue("intruder", client=True)
    with pytest.raises(StoreError):
        await EtcdStore.connect(
            [etcd_tls.server.endpoint],
            timeout=2,
            ca_cert=etcd_tls.ca_pem,
            cert_chain=stranger.cert_pem,
            cert_key=stranger.key_pem.reveal(),
        )


async def test_open_store_with_tls_files(etcd_tls: EtcdTlsKit, tmp_path: Path, key_prefix: str) -> None:
    store = await open_store(f"etcd://{etcd_tls.server.endpoint}", _files(tmp_path, etcd_tls))
    try:
        revision = await store.put(key_prefix + "k", b"v")
        kv = await store.get(key_prefix + "k")
        assert kv is not None and (kv.value, kv.mod_revision) == (b"v", revision)
    finally:
        await store.close()
    with pytest.raises(ValueError, match="need --store etcd://"):
        await open_store(f"embedded:{tmp_path / 's.log'}", _files(tmp_path, etcd_tls))
    with pytest.raises(ValueError, match="go together"):
        await open_store(
            f"etcd://{etcd_tls.server.endpoint}", EtcdTlsFiles(tmp_path / "ca.pem", tmp_path / "c.pem")
        )


def test_controller_process_runs_on_tls_etcd(etcd_tls: EtcdTlsKit, tmp_path: Path) -> None:
    files = _files(tmp_path, etcd_tls)
    workdir = Path(tempfile.mkdtemp(prefix="msl-etls-"))  # AF_UNIX paths are short
    log = workdir / "controller.log"
    argv = [
        str(Path(sys.executable).parent / "meshsec-controller"),
        "--store", f"etcd://{etcd_tls.server.endpoint}",
        "--etcd-ca", str(files.ca), "--etcd-cert", str(files.cert), "--etcd-key", str(files.key),
        "--data-dir", str(workdir / "data"), "--admin-socket", str(workdir / "admin.sock"),
        "--listen", "127.0.0.1:0", "--bootstrap-listen", "127.0.0.1:0", "--metrics", "", "--replica", "tls",
    ]  # fmt: skip
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while "meshsec-controller tls: mTLS" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        assert (workdir / "data" / "ca.pem").exists()  # the CA was created in (or loaded from) etcd
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        subprocess.run(["rm", "-rf", str(workdir)], check=False)
    assert proc.returncode == 0, log.read_text()
    bare = subprocess.run(
        [*argv[:3], "--etcd-cert", str(files.cert), "--data-dir", str(workdir)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert bare.returncode == 2 and "--etcd-cert/--etcd-key need --etcd-ca" in bare.stderr
