"""`meshsec-controller` as a process: embedded defaults, token creation through the admin socket,
enrollment with the CA it writes to --data-dir, clean SIGTERM, and state that survives a restart."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest

from meshsec.v1 import admin_pb2, admin_pb2_grpc, agent_pb2, agent_pb2_grpc
from tests.controller.ctl_harness import CALL_TIMEOUT, facts, to_resource
from tests.controller.test_mesh_support import site
from tests.harness.tls import new_key_and_csr

pytestmark = pytest.mark.timeout(60)
CLI = [sys.executable, "-m", "meshsec.controller.cli"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def controller_process(data_dir: Path, *extra: str) -> Iterator[tuple[subprocess.Popen[str], int, Path]]:
    bootstrap = _free_port()
    sock = data_dir / "admin.sock"
    proc = subprocess.Popen(
        [
            *CLI,
            "--data-dir",
            str(data_dir),
            "--listen",
            f"127.0.0.1:{_free_port()}",
            "--bootstrap-listen",
            f"127.0.0.1:{bootstrap}",
            "--admin-socket",
            str(sock),
            "--metrics",
            f"127.0.0.1:{_free_port()}",
            "--replica",
            "cli-test",
            "--log-level",
            "WARNING",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline()
        assert "meshsec-controller cli-test" in banner, (banner, proc.stderr.read() if proc.stderr else "")
        yield proc, bootstrap, sock
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_help_names_every_option() -> None:
    out = subprocess.run([*CLI, "--help"], capture_output=True, text=True, check=True).stdout
    for option in ("--store", "--listen", "--bootstrap-listen", "--admin-socket", "--metrics", "--data-dir"):
        assert option in out
    assert "etcd://" in out and "embedded:" in out


def test_bad_store_spec_is_a_clear_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [*CLI, "--store", "redis://x", "--data-dir", str(tmp_path)], capture_output=True, text=True
    )
    assert result.returncode != 0 and "--store must be embedded:/path or etcd://host:port" in result.stderr


async def test_token_create_enroll_and_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with controller_process(data_dir) as (proc, bootstrap, sock):
        async with grpc.aio.insecure_channel(f"unix:{sock}") as channel:
            await admin_pb2_grpc.AdminServiceStub(channel).Apply(
                admin_pb2.ApplyRequest(resources=[to_resource(site("dc1", ["198.19.1.0/24"]))]),
                timeout=CALL_TIMEOUT,
            )
        created = await asyncio.create_subprocess_exec(
            *CLI,
            "token",
            "create",
            "node-a",
            "--site",
            "dc1",
            "--label",
            "tier=edge",
            "--admin-socket",
            str(sock),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await created.communicate()
        assert created.returncode == 0, err
        token = out.decode().strip()
        assert token.count(".") == 1 and "token id" in err.decode()
        ca_pem = (data_dir / "ca.pem").read_bytes()
        _, csr = new_key_and_csr("node-a")
        creds = grpc.ssl_channel_credentials(root_certificates=ca_pem)
        async with grpc.aio.secure_channel(f"127.0.0.1:{bootstrap}", creds) as channel:
            enrolled = await agent_pb2_grpc.AgentServiceStub(channel).Enroll(
                agent_pb2.EnrollRequest(
                    bootstrap_token=token, node_name="node-a", csr_pem=csr.decode(), facts=facts("198.18.0.1")
                ),
                timeout=CALL_TIMEOUT,
            )
        assert dict(enrolled.node.metadata.labels) == {"tier": "edge"}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    with controller_process(data_dir) as (proc, _, sock):
        assert (data_dir / "ca.pem").read_bytes() == ca_pem  # the CA lives in the store, not per process
        async with grpc.aio.insecure_channel(f"unix:{sock}") as channel:
            got = await admin_pb2_grpc.AdminServiceStub(channel).Get(
                admin_pb2.GetRequest(kind="Node", name="node-a"), timeout=CALL_TIMEOUT
            )
        assert got.resource.spec["site"] == "dc1"
        assert oct(os.stat(sock).st_mode & 0o777) == "0o600"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0


def _numbered_site(i: int) -> dict[str, object]:
    return site(f"s{i:04d}", [f"198.19.{i // 16}.{i % 16 * 16}/28"])


async def _sites(sock: Path) -> list[str]:
    async with grpc.aio.insecure_channel(f"unix:{sock}") as channel:
        listed = await admin_pb2_grpc.AdminServiceStub(channel).List(
            admin_pb2.ListRequest(kind="Site", page_size=5000), timeout=CALL_TIMEOUT
        )
    return [r.metadata.name for r in listed.resources]


async def test_sigkill_during_applies_loses_no_acknowledged_apply(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    acknowledged: set[str] = set()
    attempted: set[str] = set()
    with controller_process(data_dir) as (proc, _, sock):

        async def writer(first: int, step: int) -> None:
            async with grpc.aio.insecure_channel(f"unix:{sock}") as channel:
                stub = admin_pb2_grpc.AdminServiceStub(channel)
                for i in range(first, 4096, step):
                    doc = _numbered_site(i)
                    attempted.add(f"s{i:04d}")
                    try:
                        await stub.Apply(
                            admin_pb2.ApplyRequest(resources=[to_resource(doc)]), timeout=CALL_TIMEOUT
                        )
                    except grpc.aio.AioRpcError:
                        return  # the controller is gone
                    acknowledged.add(f"s{i:04d}")
                    if len(acknowledged) >= 150 and proc.poll() is None:
                        os.kill(proc.pid, signal.SIGKILL)  # mid-stream: the other writers are in flight

        await asyncio.gather(*(writer(w, 6) for w in range(6)))
        assert proc.wait(timeout=15) == -signal.SIGKILL
    with controller_process(data_dir) as (proc, _, sock):
        present = set(await _sites(sock))
        assert acknowledged <= present <= attempted
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0


async def test_a_store_that_lost_acknowledged_writes_starts_only_with_repair_store(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with controller_process(data_dir) as (proc, _, sock):
        async with grpc.aio.insecure_channel(f"unix:{sock}") as channel:
            for i in range(3):
                await admin_pb2_grpc.AdminServiceStub(channel).Apply(
                    admin_pb2.ApplyRequest(resources=[to_resource(_numbered_site(i))]), timeout=CALL_TIMEOUT
                )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    log = data_dir / "store.log"
    data = log.read_bytes()
    log.write_bytes(data[: data.rindex(b"resources/Site/s0002")])  # mid-record: s0002 and all after
    refused = subprocess.run(
        [
            *CLI,
            "--data-dir",
            str(data_dir),
            "--admin-socket",
            "",
            "--metrics",
            "",
            "--listen",
            "127.0.0.1:0",
            "--bootstrap-listen",
            "127.0.0.1:0",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert refused.returncode == 3
    assert "acknowledged revisions" in refused.stderr and "--repair-store" in refused.stderr
    with controller_process(data_dir, "--repair-store") as (proc, _, sock):
        kept = await _sites(sock)
        assert kept == ["s0000", "s0001"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    assert list(data_dir.glob("store.log.damaged-*"))
