"""The status socket: JSON in and out, hostile clients, and the tables `meshsec-agent status`
prints from a status document."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshsec.agent.standalone.status import StatusServer, format_status, query_status

SAMPLE = {
    "ok": True,
    "dataplane": "userspace",
    "listening": ["198.18.1.1:500", "198.18.1.1:4500"],
    "ike_sas": [
        {
            "name": "site-b", "state": "ESTABLISHED", "initiator": True,
            "local": "198.18.1.1:4500", "remote": "198.18.1.2:4500",
            "local_id": "a.example", "remote_id": "b.example",
            "initiator_spi": "0011223344556677", "responder_spi": "8899aabbccddeeff",
            "encr_alg": "AES_GCM_16", "encr_keysize": 256, "prf_alg": "PRF_HMAC_SHA2_256",
            "dh_group": "CURVE_25519",
            "child_sas": [
                {
                    "name": "net", "state": "INSTALLED", "protocol": "ESP", "mode": "TUNNEL",
                    "udp_encap": True, "spi_in": "c0000001", "spi_out": "0a0b0c0d",
                    "encr_alg": "AES_GCM_16", "encr_keysize": 256,
                    "local_ts": ["198.19.1.0-198.19.1.255"], "remote_ts": ["198.19.2.0-198.19.2.255"],
                    "counters": {"bytes_in": 840, "packets_in": 10, "bytes_out": 420, "packets_out": 5},
                }
            ],
        }
    ],
    "recent": [
        {"name": "site-c", "initiator": False, "remote": "198.18.1.3:500", "initiator_spi": "01" * 8,
         "responder_spi": "00" * 8, "outcome": "failed: IKE_SA_INIT rejected: NO_PROPOSAL_CHOSEN"}
    ],
}  # fmt: skip


def test_format_status_tables() -> None:
    text = format_status(SAMPLE)
    assert "data plane: userspace; listening on 198.18.1.1:500, 198.18.1.1:4500" in text
    ike_line = next(line for line in text.splitlines() if line.startswith("site-b "))
    for part in ("ESTABLISHED", "initiator", "0011223344556677_i 8899aabbccddeeff_r",
                 "AES_GCM_16-256/PRF_HMAC_SHA2_256/CURVE_25519"):  # fmt: skip
        assert part in ike_line
    child_line = next(line for line in text.splitlines() if line.startswith("site-b/net"))
    for part in ("INSTALLED", "ESP TUNNEL UDP", "c0000001_i 0a0b0c0d_o", "840B/10p", "420B/5p"):
        assert part in child_line
    assert "failed: IKE_SA_INIT rejected: NO_PROPOSAL_CHOSEN" in text
    assert "(none)" in format_status({"ike_sas": [], "listening": []})


@pytest.fixture
def sock_path() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="io-status-"))
    yield d / "s.sock"
    for p in d.iterdir():
        p.unlink()
    d.rmdir()


async def test_server_survives_hostile_clients_and_is_private(sock_path: Path) -> None:
    async def provider() -> dict[str, object]:
        return {"ike_sas": [], "marker": 42}

    server = StatusServer(sock_path, provider)
    await server.start()
    try:
        assert stat.S_IMODE(os.stat(sock_path).st_mode) == 0o600
        # Oversized line, not JSON, unknown command, and a client that hangs up at once.
        r, w = await asyncio.open_unix_connection(str(sock_path))
        w.write(b"x" * 200_000 + b"\n")
        await w.drain()
        w.close()
        r, w = await asyncio.open_unix_connection(str(sock_path))
        w.write(b"not json\n")
        assert json.loads(await r.read()) == {
            "ok": False,
            "error": 'unknown request; send {"command": ...} with "status", "health"',
        }
        w.close()
        r, w = await asyncio.open_unix_connection(str(sock_path))
        w.close()
        answer = await asyncio.to_thread(query_status, sock_path)
        assert answer["ok"] is True and answer["marker"] == 42
        # Standalone has no health view: answering is both live and ready.
        health = await asyncio.to_thread(query_status, sock_path, command="health")
        assert health == {"ok": True, "live": True, "ready": True, "reason": "answering"}
        # Without a drain handler (standalone), "drain" is an unknown request: nothing leaves.
        refused = await asyncio.to_thread(query_status, sock_path, command="drain")
        assert refused["ok"] is False and "drain" not in refused["error"]
        # A second agent on the same socket is refused instead of stealing it.
        with pytest.raises(RuntimeError, match="already serves status"):
            await StatusServer(sock_path, provider).start()
    finally:
        await server.close()
    assert not sock_path.exists()


async def test_stale_socket_is_replaced(sock_path: Path) -> None:
    import socket

    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(sock_path))
    stale.close()  # the file stays, nobody listens: an agent that died

    async def provider() -> dict[str, object]:
        return {"ike_sas": []}

    server = StatusServer(sock_path, provider)
    await server.start()
    try:
        assert (await asyncio.to_thread(query_status, sock_path))["ok"] is True
    finally:
        await server.close()


async def test_drain_request_reaches_the_handler_once_per_request(sock_path: Path) -> None:
    async def provider() -> dict[str, object]:
        return {}

    asked: list[float] = []
    server = StatusServer(sock_path, provider, drain=lambda: asked.append(1.0))
    await server.start()
    try:
        assert (await asyncio.to_thread(query_status, sock_path))["ok"] is True
        assert asked == []  # status and health never drain
        answer = await asyncio.to_thread(query_status, sock_path, command="drain")
        assert answer == {"ok": True, "draining": True} and asked == [1.0]
    finally:
        await server.close()
