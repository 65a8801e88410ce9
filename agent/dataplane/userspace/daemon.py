"""`meshsec-dataplane`: the userspace data plane as its own process, so that the packet path
survives the agent's restart (docs/dataplane.md, "The data-plane daemon").

The daemon owns the TUN device, the raw ESP/AH sockets, the UDP 4500 socket(s) the agent lent
it, every SA and policy, their lifetime timers and routes. An agent drives it over the control
socket (control.py); when the agent goes away (restart, crash, kill -9) nothing changes for the
packets, and the next agent adopts what is installed. One agent at a time: a `hello` on a new
connection supersedes the old one (a hung agent must not lock its successor out). Events that
arrive while no agent is connected wait in a bounded backlog for the next one.

Stopping the daemon (SIGTERM) stops forwarding: the TUN device and routes go with it. Restart
the agent, not the daemon.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import errno
import ipaddress
import logging
import os
import signal
import socket
import stat
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from meshsec.agent.dataplane.api import (
    Acquire,
    DataPlaneError,
    DataPlaneEvent,
    IpsecProtocol,
    SaExpired,
    Unsupported,
)
from meshsec.agent.dataplane.userspace import control
from meshsec.agent.dataplane.userspace.backend import UserspaceConfig, UserspaceDataPlane
from meshsec.agent.dataplane.userspace.jsoncodec import (
    ConfigError,
    policy_from_json,
    sa_from_json,
    sa_id_from_json,
    sa_id_to_json,
    selector_from_json,
    selector_to_json,
)
from meshsec.common.logging import add_log_format_argument
from meshsec.common.logging import configure as configure_logging

log = logging.getLogger(__name__)

DEFAULT_SOCKET = Path("/run/meshsec/dataplane.sock")
EVENT_BACKLOG = 1024
SEND_TIMEOUT = 5.0  # an agent that reads nothing for this long is cut off, not waited for


class _Connection:
    def __init__(self, sock: socket.socket, number: int) -> None:
        self.sock = sock
        self.number = number
        self.greeted = False
        self.observer = False  # read-only; never the agent
        self.closed = False
        self.task: asyncio.Task[None] | None = None  # the one serving it, and closing its socket
        self.send_lock = asyncio.Lock()


class DataPlaneDaemon:
    def __init__(self, dataplane: UserspaceDataPlane, socket_path: Path) -> None:
        self.dp = dataplane
        self.socket_path = socket_path
        self.started_at = time.time()
        self._listener: socket.socket | None = None
        self._agent: _Connection | None = None  # the connection that said hello last
        self._connections = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._backlog: collections.deque[DataPlaneEvent] = collections.deque(maxlen=EVENT_BACKLOG)
        self.events_lost = 0
        # UDP 4500 sockets lent by agents, by the socket's identity (one socket, many descriptors).
        self._encap: dict[tuple[int, int], socket.socket] = {}
        self._ike_channels: dict[tuple[int, int], socket.socket] = {}
        self.ike_dropped = 0  # IKE messages on 4500 with no agent to take them (it retransmits)
        self.ike_delivered = 0

    # ------------------------------------------------------------------ serving

    async def start(self) -> None:
        await self.dp.start()
        path = self.socket_path
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(path.lstat().st_mode):
                path.unlink()  # left by an earlier daemon of this node (one per socket path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        old_umask = os.umask(0o177)  # 0600 from the start: keys cross this socket
        try:
            listener.bind(str(path))
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)
        listener.listen(8)
        listener.setblocking(False)
        self._listener = listener
        asyncio.get_running_loop().add_reader(listener.fileno(), self._accept)
        self._spawn(self._pump_events())
        log.info("meshsec data plane up: TUN %s MTU %d, control socket %s", self.dp.tun_name,
                 self.dp.mtu, path)  # fmt: skip

    async def close(self) -> None:
        if self._listener is not None:
            asyncio.get_running_loop().remove_reader(self._listener.fileno())
            self._listener.close()
            self._listener = None
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.dp.close()
        for s in (*self._encap.values(), *self._ike_channels.values()):
            s.close()
        self._encap.clear()
        self._ike_channels.clear()

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _accept(self) -> None:
        assert self._listener is not None
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("control socket accept failed: %s", exc)
                return
            sock.setblocking(False)
            uid = _peer_uid(sock)
            if uid not in (0, os.getuid()):
                log.warning("refusing a control connection from uid %d (only root or uid %d)", uid,
                            os.getuid())  # fmt: skip
                sock.close()
                continue
            self._connections += 1
            conn = _Connection(sock, self._connections)
            conn.task = self._spawn(self._serve(conn))

    async def _serve(self, conn: _Connection) -> None:
        try:
            while not conn.closed:
                try:
                    data, fds, truncated = await self._receive(conn)
                except control.ProtocolError as exc:
                    await self._reply(conn, None, error=exc)
                    continue
                if not data and not fds:
                    break  # the agent closed the connection (or died)
                fatal = await self._handle(conn, data, fds, truncated)
                if fatal:
                    break
        except (ConnectionError, TimeoutError) as exc:
            log.info("control connection %d lost: %s", conn.number, exc)
        finally:
            self._close(conn)
            conn.sock.close()  # only here, after its reader is gone: the next socket may get its fd

    async def _receive(self, conn: _Connection) -> tuple[bytes, list[int], bool]:
        while True:
            try:
                return control.receive(conn.sock, control.MAX_REQUEST)
            except (BlockingIOError, InterruptedError):
                await control.wait_ready(conn.sock, writable=False)

    def _close(self, conn: _Connection) -> None:
        """Ends a connection. Its own task closes the socket once it has unregistered the socket
        from the loop: closing it under a registered reader would let the next connection reuse
        the descriptor number while the loop still holds the old registration."""
        if self._agent is conn:
            self._agent = None
            log.info("agent disconnected (connection %d); forwarding goes on", conn.number)
        conn.closed = True
        if conn.task is not None and conn.task is not asyncio.current_task():
            conn.task.cancel()

    async def _send(self, conn: _Connection, message: dict[str, Any], fds: list[int] | None = None) -> None:
        data = control.encode(message)
        loop = asyncio.get_running_loop()
        async with conn.send_lock:
            deadline = loop.time() + SEND_TIMEOUT
            while True:
                if conn.closed:
                    raise ConnectionResetError("connection closed")
                try:
                    if fds:
                        socket.send_fds(conn.sock, [data], fds)
                    else:
                        conn.sock.send(data)
                    return
                except (BlockingIOError, InterruptedError):
                    left = max(0.0, deadline - loop.time())
                    await control.wait_ready(conn.sock, writable=True, timeout=left)

    async def _reply(self, conn: _Connection, req_id: Any, error: BaseException | None = None,
                     fds: list[int] | None = None, **fields: Any) -> None:  # fmt: skip
        if error is None:
            message = {"id": req_id, "ok": True, **fields}
        else:
            kind = ("protocol" if isinstance(error, control.ProtocolError)
                    else "unsupported" if isinstance(error, Unsupported) else "dataplane")  # fmt: skip
            message = {"id": req_id, "ok": False, "kind": kind, "error": _describe(error)}
        await self._send(conn, message, fds)

    # ------------------------------------------------------------------ requests

    async def _handle(self, conn: _Connection, data: bytes, fds: list[int], truncated: bool) -> bool:
        """One request; returns whether the connection must close (a broken hello, an oversized
        message: the agent is confused or hostile, and talking on would hide that)."""
        req_id: Any = None
        try:
            try:
                req = control.decode(data, truncated, control.MAX_REQUEST)
                req_id = req.get("id")
                op = req.get("op")
                if not conn.greeted and op != "hello":
                    raise control.ProtocolError(f"the first request must be hello, not {op!r}")
                if op not in control.OPS:
                    raise control.ProtocolError(f"unknown op {op!r} (known: {', '.join(control.OPS)})")
                if conn.observer and op not in control.OBSERVER_OPS:
                    raise control.ProtocolError(f"op {op!r} is not allowed on an observer connection")
                reply, reply_fds = await self._dispatch(conn, str(op), req, fds)
                fds = []  # taken over by the dispatch
            finally:
                for fd in fds:
                    os.close(fd)
        except control.ProtocolError as exc:
            with contextlib.suppress(ConnectionError, TimeoutError):
                await self._reply(conn, req_id, error=exc)
            return truncated or not conn.greeted
        except (ConfigError, DataPlaneError, ValueError, KeyError, TypeError, OSError) as exc:
            await self._reply(conn, req_id, error=exc)
            return False
        await self._reply(conn, req_id, fds=reply_fds, **reply)
        if req.get("op") == "hello" and not conn.observer:
            await self._flush_backlog(conn)
        return False

    async def _dispatch(
        self, conn: _Connection, op: str, req: dict[str, Any], fds: list[int]
    ) -> tuple[dict[str, Any], list[int]]:
        dp = self.dp
        if op == "hello":
            return self._hello(conn, req), []
        if op == "attach_encap":
            self._attach_encap(fds)
            return {}, []
        if op == "bypass_socket":
            await self._bypass_socket(fds)
            return {}, []
        if fds:
            raise control.ProtocolError(f"op {op!r} takes no descriptors")
        if op == "allocate_spi":
            names = {p.name.lower(): p for p in IpsecProtocol}
            if req.get("protocol") not in names:
                raise ConfigError(f"allocate_spi: protocol must be one of {sorted(names)}")
            proto = names[req["protocol"]]
            src, dst = ipaddress.ip_address(req["src"]), ipaddress.ip_address(req["dst"])
            spi = await dp.allocate_spi(proto, src, dst)
            return {"spi": spi}, []
        if op == "add_sa":
            await dp.add_sa(sa_from_json(_field(req, "sa")))
        elif op == "update_sa":
            await dp.update_sa(sa_from_json(_field(req, "sa")))
        elif op == "migrate_sa":
            await dp.migrate_sa(sa_id_from_json(_field(req, "old")), sa_from_json(_field(req, "sa")))
        elif op == "delete_sa":
            await dp.delete_sa(sa_id_from_json(_field(req, "sa")))
        elif op == "ensure_policy":
            await dp.ensure_policy(policy_from_json(_field(req, "policy")))
        elif op == "delete_policy":
            p = policy_from_json(_field(req, "policy"))
            await dp.delete_policy(p.selector, p.direction)
        elif op == "counters":
            return {"counters": asdict(await dp.counters(sa_id_from_json(_field(req, "sa"))))}, []
        elif op == "drops":
            drops = dp.drop_counters()
            drops["ike_no_agent"] = self.ike_dropped
            drops["events_lost"] = self.events_lost
            return {"drops": drops, "ike_delivered": self.ike_delivered}, []
        elif op == "list":
            return self._list(int(req.get("after", 0))), []
        elif op == "adopt":
            released = dp.release_reservations()
            if released:
                log.info("released %d SPI reservation(s) an earlier agent left without an SA", released)
            return {"released_reservations": released}, []
        elif op == "flush":
            await dp.flush_owned()
        elif op == "encap_sockets":
            held = list(self._encap.values())
            return {"sockets": [{"host": s.getsockname()[0], "port": s.getsockname()[1]} for s in held]}, [
                s.fileno() for s in held]
        return {}, []

    def _hello(self, conn: _Connection, req: dict[str, Any]) -> dict[str, Any]:
        version = req.get("version")
        if version != control.VERSION:
            raise control.ProtocolError(
                f"protocol version {version!r} is not supported (this daemon speaks {control.VERSION})")
        if req.get("role", "agent") not in ("agent", "observer"):
            raise control.ProtocolError(f"role {req.get('role')!r} is not 'agent' or 'observer'")
        conn.observer = req.get("role") == "observer"
        conn.greeted = True
        if conn.observer:
            return self._hello_reply()
        previous = self._agent
        if previous is not None and previous is not conn:
            log.info("agent connection %d supersedes connection %d", conn.number, previous.number)
            self._close(previous)
        self._agent = conn
        log.info("agent connected (connection %d)", conn.number)
        return self._hello_reply()

    def _hello_reply(self) -> dict[str, Any]:
        caps = self.dp.capabilities
        # `ops` and `bypass_mark` let a newer agent tell what this daemon can do (an agent may be
        # upgraded while the daemon forwards on: docs/kubernetes.md, rollouts).
        return {"version": control.VERSION, "pid": os.getpid(), "started_at": self.started_at,
                "tun": self.dp.tun_name, "mtu": self.dp.mtu, "ops": list(control.OPS),
                "bypass_mark": self.dp.config.bypass_mark,
                "capabilities": {**asdict(caps), "notes": list(caps.notes)}}  # fmt: skip

    def _list(self, after: int) -> dict[str, Any]:
        sas, policies = self.dp.installed()
        entries: list[tuple[str, dict[str, Any]]] = [
            ("sa", {**sa_id_to_json(sa.id), "reqid": sa.reqid, "direction": sa.direction.value}) for sa in sas
        ]
        entries += [("policy", {"selector": selector_to_json(p.selector), "direction": p.direction.value,
                                "reqid": p.template.reqid if p.template is not None else None})
                    for p in policies]  # fmt: skip
        page = entries[after:after + control.PAGE]
        nxt = after + len(page) if after + len(page) < len(entries) else None
        return {"sas": [e for kind, e in page if kind == "sa"],
                "policies": [e for kind, e in page if kind == "policy"], "next": nxt}  # fmt: skip

    def _attach_encap(self, fds: list[int]) -> None:
        if len(fds) != 2:
            raise control.ProtocolError(
                "attach_encap carries two descriptors: the UDP socket and the IKE channel")
        udp_fd, channel_fd = fds
        key = _identity(udp_fd)
        udp = socket.socket(fileno=udp_fd)
        channel = socket.socket(fileno=channel_fd)
        fds.clear()
        if udp.type != socket.SOCK_DGRAM or channel.type != socket.SOCK_SEQPACKET:
            udp.close()
            channel.close()
            raise control.ProtocolError("attach_encap: expected a UDP socket and a SOCK_SEQPACKET channel")
        channel.setblocking(False)
        old = self._ike_channels.pop(key, None)
        if old is not None:
            old.close()
        self._ike_channels[key] = channel
        if key in self._encap:
            udp.close()  # another descriptor of the socket we read already (a new agent took it over)
            return
        self._encap[key] = udp
        # The adapter's receiver is called on this loop (io.make_ike_delivery).
        task = asyncio.get_running_loop().create_task(
            self.dp.attach_encap_socket(udp, lambda msg, local, remote: self._to_agent(key, msg, remote)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _bypass_socket(self, fds: list[int]) -> None:
        if len(fds) != 1:
            raise control.ProtocolError("bypass_socket carries one descriptor: the IKE socket")
        sock = socket.socket(fileno=fds.pop())
        try:
            if sock.type != socket.SOCK_DGRAM:
                raise control.ProtocolError("bypass_socket: expected a UDP socket")
            await self.dp.bypass_socket(sock)
        finally:
            sock.close()  # only this descriptor: the agent's stays open, with the mark

    def _to_agent(self, key: tuple[int, int], message: bytes, remote: tuple[str, int]) -> None:
        channel = self._ike_channels.get(key)
        if channel is None:
            self.ike_dropped += 1
            return
        try:
            channel.send(control.pack_ike(message, remote))
            self.ike_delivered += 1
        except (BlockingIOError, InterruptedError):
            self.ike_dropped += 1
        except OSError as exc:
            self.ike_dropped += 1
            if exc.errno in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                # The agent that took this channel is gone; its successor attaches a new one.
                self._ike_channels.pop(key, None)
                channel.close()

    # ------------------------------------------------------------------ events

    async def _pump_events(self) -> None:
        async for ev in self.dp.events():
            agent = self._agent
            if agent is None:
                if len(self._backlog) == self._backlog.maxlen:
                    self.events_lost += 1
                self._backlog.append(ev)
                continue
            try:
                await self._send(agent, {"event": _event_json(ev)})
            except (ConnectionError, TimeoutError, OSError):
                self._backlog.append(ev)
                self._close(agent)

    async def _flush_backlog(self, conn: _Connection) -> None:
        while self._backlog and self._agent is conn:
            await self._send(conn, {"event": _event_json(self._backlog.popleft())})


def _event_json(ev: DataPlaneEvent) -> dict[str, Any]:
    if isinstance(ev, SaExpired):
        return {"type": "expired", "sa": sa_id_to_json(ev.sa), "hard": ev.hard}
    assert isinstance(ev, Acquire)
    return {"type": "acquire", "selector": selector_to_json(ev.selector), "reqid": ev.reqid}


def event_from_json(d: dict[str, Any]) -> DataPlaneEvent:
    if d.get("type") == "expired":
        return SaExpired(sa_id_from_json(d["sa"]), bool(d["hard"]))
    if d.get("type") == "acquire":
        return Acquire(selector_from_json(d["selector"]), int(d["reqid"]))
    raise control.ProtocolError(f"unknown event type {d.get('type')!r}")


def _field(req: dict[str, Any], name: str) -> dict[str, Any]:
    value = req.get(name)
    if not isinstance(value, dict):
        raise ConfigError(f"field {name!r} must be a JSON object")
    return value


def _describe(exc: BaseException) -> str:
    if isinstance(exc, KeyError):
        return f"missing field {exc.args[0]!r}" if exc.args else "missing field"
    return f"{exc}" if isinstance(exc, (control.ProtocolError, DataPlaneError, ConfigError)) else (
        f"{type(exc).__name__}: {exc}")


def _identity(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def _peer_uid(sock: socket.socket) -> int:
    import struct

    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[1])


# ---------------------------------------------------------------------- the command


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="meshsec-dataplane",
        description="The meshsec userspace data plane (ESP over TUN) as its own process: it keeps "
                    "forwarding while the agent restarts (docs/dataplane.md).")  # fmt: skip
    p.add_argument("--socket", type=Path, default=DEFAULT_SOCKET,
                   help=f"control socket, 0600 (default {DEFAULT_SOCKET}); the agent's --dataplane-socket")
    p.add_argument("--tun-name", default="meshsec0")
    p.add_argument("--path-mtu", type=int, default=1500, help="underlay MTU tunnelled packets are sized for")
    p.add_argument("--loop", choices=("thread", "split", "asyncio"), default="thread")
    p.add_argument("--pid-file", type=Path, help="write this process's id here (removed on exit)")
    p.add_argument("--status", action="store_true",
                   help="print what the daemon on --socket holds (SAs, policies, drops) as JSON and exit")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")
    add_log_format_argument(p)
    return p


def query(path: Path, timeout: float = 5.0) -> dict[str, Any]:
    """What the daemon on `path` holds, read over an observer connection (the agent's stays):
    hello, every SA (id, reqid, direction) and policy key, and the drop counters. Blocking, for
    `meshsec-dataplane --status` and tests; raises OSError or control.ProtocolError."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))

        def ask(op: str, **args: Any) -> dict[str, Any]:
            sock.send(control.encode({"id": op, "op": op, **args}))
            while True:
                reply = control.decode(sock.recv(control.MAX_REPLY + 1), False, control.MAX_REPLY)
                if reply.get("id") == op:
                    break
            if not reply.get("ok"):
                raise control.ProtocolError(f"{op}: {reply.get('error')}")
            return reply

        doc: dict[str, Any] = {"hello": ask("hello", version=control.VERSION, role="observer"),
                               "sas": [], "policies": []}  # fmt: skip
        after: int | None = 0
        while after is not None:
            page = ask("list", after=after)
            doc["sas"] += page["sas"]
            doc["policies"] += page["policies"]
            after = page["next"]
        doc["drops"] = ask("drops")["drops"]
        return doc


async def serve(args: argparse.Namespace) -> None:
    config = UserspaceConfig(tun_name=args.tun_name, path_mtu=args.path_mtu, loop=args.loop)
    daemon = DataPlaneDaemon(UserspaceDataPlane(config), args.socket)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await daemon.start()
    if args.pid_file is not None:
        args.pid_file.write_text(f"{os.getpid()}\n")
    try:
        await stop.wait()
    finally:
        log.info("meshsec data plane stopping: TUN %s, its routes and every SA go", daemon.dp.tun_name)
        await daemon.close()
        if args.pid_file is not None:
            with contextlib.suppress(FileNotFoundError):
                args.pid_file.unlink()


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.status:
        import json

        try:
            print(json.dumps(query(args.socket), indent=2))
        except (OSError, control.ProtocolError) as exc:
            print(f"meshsec-dataplane: no answer on {args.socket}: {exc}", file=sys.stderr)
            return 1
        return 0
    configure_logging(args.log_level, log_format=args.log_format)
    try:
        asyncio.run(serve(args))
    except KeyboardInterrupt:
        pass
    except (DataPlaneError, OSError) as exc:
        log.error("meshsec data plane cannot start: %s", exc)
        return 1
    return 0




if __name__ == "__main__":
    raise SystemExit(main())
