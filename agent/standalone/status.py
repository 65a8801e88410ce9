"""Status on a local Unix socket: one JSON request line in, one JSON document out.

Request: `{"command": "status"}`, `{"command": "health"}` (a small document saying whether
the agent is ready, for `meshsec-agent health`, the probes of the Kubernetes DaemonSet), or
`{"command": "drain"}` (agents that offer it: leave the mesh and exit, `meshsec-agent drain`). The
socket is created mode 0600 (status names peers and SPIs, never keys); `meshsec-agent status`
reads it and prints tables."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from meshsec.common.deadline import within

StatusProvider = Callable[[], Awaitable[dict[str, object]]]
# {"ready": bool, "reason": str, ...}: cheap, answered on every probe.
HealthProvider = Callable[[], dict[str, object]]
# Asks the agent to leave the mesh (delete its SAs, tell its peers) and exit; returns at once.
DrainHandler = Callable[[], None]
MAX_REQUEST = 4096


REQUEST_TIMEOUT = 30.0


class StatusServer:
    def __init__(self, path: Path, provider: StatusProvider, health: HealthProvider | None = None,
                 drain: DrainHandler | None = None) -> None:
        self.path = path
        self.provider = provider
        self.health = health
        self.drain = drain
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            if _listening(self.path):
                raise RuntimeError(f"another agent already serves status on {self.path}")
            self.path.unlink()  # stale socket of an agent that died
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._handle, path=str(self.path))
        finally:
            os.umask(old)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            # Generous: on a stalled event loop (slow emulated machines, a burst of SA installs) a
            # short limit fires before the already-sent request is read and the client gets nothing.
            line = await within(REQUEST_TIMEOUT, reader.readline())
            answer: dict[str, object]
            try:
                request = json.loads(line[:MAX_REQUEST] or b"{}")
                command = request.get("command", "status") if isinstance(request, dict) else None
            except (ValueError, UnicodeDecodeError):
                command = None
            if command == "status":
                answer = {"ok": True, "time": time.time(), **(await self.provider())}
            elif command == "health":
                # Answering at all is liveness; an agent without a health view (standalone) is
                # ready once it answers.
                health = self.health() if self.health is not None else {"ready": True, "reason": "answering"}
                answer = {"ok": True, "live": True, **health}
            elif command == "drain" and self.drain is not None:
                self.drain()
                answer = {"ok": True, "draining": True}
            else:
                known = '"status", "health"' + (' or "drain"' if self.drain is not None else "")
                answer = {"ok": False, "error": f'unknown request; send {{"command": ...}} with {known}'}
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        except (TimeoutError, ConnectionError, ValueError, asyncio.LimitOverrunError):
            pass  # a slow, vanished or oversized client gets nothing; the server carries on
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


def _listening(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(path))
        except OSError:
            return False
        return True


def query_status(path: Path, timeout: float = 5.0, command: str = "status") -> dict[str, Any]:
    """Blocking client for the CLI and tests. Raises OSError if no agent listens there (or it
    does not answer within `timeout`), ValueError for an answer that is not a JSON object."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(json.dumps({"command": command}).encode() + b"\n")
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    data = json.loads(b"".join(chunks))
    if not isinstance(data, dict):
        raise ValueError("status answer is not a JSON object")
    return data


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def _alg(d: dict[str, Any]) -> str:
    parts = []
    if d.get("encr_alg"):
        parts.append(f"{d['encr_alg']}-{d['encr_keysize']}" if d.get("encr_keysize") else d["encr_alg"])
    parts += [str(d[k]) for k in ("integ_alg", "prf_alg", "dh_group") if d.get(k)]
    return "/".join(parts) or "-"


def format_status(status: dict[str, Any]) -> str:
    """Human-readable tables of IKE and CHILD SAs (states, SPIs, algorithms, counters)."""
    ike_rows, child_rows = [], []
    for sa in status.get("ike_sas", []):
        ike_rows.append(
            [
                sa["name"],
                sa["state"],
                "initiator" if sa["initiator"] else "responder",
                f"{sa['local']} {sa['local_id']}",
                f"{sa['remote']} {sa.get('remote_id') or '?'}",
                f"{sa['initiator_spi']}_i {sa['responder_spi']}_r",
                _alg(sa),
            ]
        )
        for c in sa.get("child_sas", []):
            counters = c.get("counters") or {}
            child_rows.append(
                [
                    f"{sa['name']}/{c['name']}",
                    c["state"],
                    f"{c['protocol']} {c['mode']}{' UDP' if c.get('udp_encap') else ''}",
                    f"{c['spi_in']}_i {c['spi_out']}_o",
                    _alg(c),
                    f"{counters.get('bytes_in', '-')}B/{counters.get('packets_in', '-')}p",
                    f"{counters.get('bytes_out', '-')}B/{counters.get('packets_out', '-')}p",
                    f"{','.join(c['local_ts'])} === {','.join(c['remote_ts'])}",
                ]
            )
    listening = ", ".join(status.get("listening", []))
    out = [
        f"data plane: {status.get('dataplane') or '-'}; listening on {listening}",
        "",
        "IKE SAs:",
        _table(["NAME", "STATE", "ROLE", "LOCAL", "REMOTE", "SPIS", "ALGORITHMS"], ike_rows)
        if ike_rows
        else "  (none)",
        "",
        "CHILD SAs:",
        _table(["NAME", "STATE", "PROTO", "SPIS", "ALGORITHMS", "IN", "OUT", "TRAFFIC"], child_rows)
        if child_rows
        else "  (none)",
    ]
    recent = status.get("recent", [])
    if recent:
        out += ["", "Recently closed IKE SAs:"]
        out.append(
            _table(
                ["NAME", "ROLE", "REMOTE", "SPIS", "OUTCOME"],
                [
                    [
                        r["name"],
                        "initiator" if r["initiator"] else "responder",
                        r["remote"],
                        f"{r['initiator_spi']}_i {r['responder_spi']}_r",
                        r.get("outcome") or "-",
                    ]
                    for r in recent
                ],
            )
        )
    return "\n".join(out)
