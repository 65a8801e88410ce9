"""`DaemonDataPlane`: the agent's userspace backend as a client of the data-plane daemon
(daemon.py), over the control socket (control.py). It implements the same DataPlane interface as
the in-process backend, so nothing above it knows the packets are handled in another process.

What it adds over the in-process backend is the restart: `adopt` lists what the daemon holds
(SAs, policies, their reqids) and drops the SPI reservations an earlier agent left without an
SA; the UDP 4500 socket the daemon reads comes back from it (`held_encap_socket`), so the new
agent sends IKE from the socket ESP-in-UDP keeps arriving on instead of binding a second one.

Start: connect to the socket; where nothing answers and `spawn` is set (standalone and the lab)
start `meshsec-dataplane` as its own session (so a kill of the agent, or of its process group,
does not reach it); else wait up to `connect_timeout` (Kubernetes, systemd: the daemon is
started by someone else and may come up after the agent).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshsec.agent.adapters import udp as udp_names
from meshsec.agent.dataplane.api import (
    Capabilities,
    DataPlaneError,
    DataPlaneEvent,
    Direction,
    IkeReceiver,
    IPAddress,
    IpsecProtocol,
    OwnedState,
    Policy,
    PolicyAction,
    SaCounters,
    SaId,
    SecurityAssociation,
    TrafficSelector,
    Unsupported,
)
from meshsec.agent.dataplane.userspace import control
from meshsec.agent.dataplane.userspace.backend import DEFAULT_BYPASS_MARK
from meshsec.agent.dataplane.userspace.daemon import event_from_json
from meshsec.agent.dataplane.userspace.jsoncodec import (
    policy_to_json,
    sa_id_from_json,
    sa_id_to_json,
    sa_to_json,
    selector_from_json,
)
from meshsec.common.deadline import within

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class DaemonSpawn:
    """How to start the daemon where none answers: its TUN name and where its log goes."""

    tun_name: str = "meshsec0"
    log_file: Path | None = None
    pid_file: Path | None = None
    path_mtu: int = 1500


class DaemonLost(DataPlaneError):
    """The connection to the data-plane daemon broke: its SAs may be gone (it restarted)."""


class DaemonDataPlane:
    def __init__(self, socket_path: Path, spawn: DaemonSpawn | None = None,
                 connect_timeout: float = 30.0) -> None:  # fmt: skip
        self.socket_path = socket_path
        self.spawn = spawn
        self.connect_timeout = connect_timeout
        self.daemon_pid = 0
        self.tun_name = ""
        self.mtu = 0
        self._caps: Capabilities | None = None
        self._daemon_ops: frozenset[str] = frozenset()
        self._bypass_mark = DEFAULT_BYPASS_MARK
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._next_id = 0
        self._pending: dict[int, asyncio.Future[tuple[dict[str, Any], list[int]]]] = {}
        self._events: asyncio.Queue[DataPlaneEvent | DaemonLost] = asyncio.Queue()
        self._held: dict[tuple[str, int], socket.socket] = {}
        self._channels: list[socket.socket] = []
        self._send_lock = asyncio.Lock()
        self._lost: DaemonLost | None = None

    # ------------------------------------------------------------------ connection

    @property
    def capabilities(self) -> Capabilities:
        if self._caps is None:
            # Before start: what the daemon will offer (the userspace backend's feature set).
            return Capabilities(backend="userspace", esp=True, ah=True, aead_gcm=True, udp_encapsulation=True,
                                aead_chacha20poly1305=True, outlives_agent=True)  # fmt: skip
        return self._caps

    async def start(self) -> None:
        if self._sock is not None:
            return
        self._loop = asyncio.get_running_loop()
        sock = await self._connect()
        self._sock = sock
        self._loop.add_reader(sock.fileno(), self._readable)
        hello, _ = await self._call("hello", version=control.VERSION)
        caps = dict(hello["capabilities"])
        caps["notes"] = (*caps.get("notes", ()), f"data-plane daemon pid {hello['pid']} ({self.socket_path})")
        # The daemon's backend is in-process *to the daemon*; to this agent it outlives a restart,
        # so the IKE SAs of this agent may be resumed on the CHILD_SAs it keeps.
        caps["outlives_agent"] = True
        self._caps = Capabilities(**caps)
        self.daemon_pid, self.tun_name, self.mtu = int(hello["pid"]), str(hello["tun"]), int(hello["mtu"])
        # A daemon from before these fields: the op set of its protocol version, the default mark.
        self._daemon_ops = frozenset(hello.get("ops", control.OPS_BEFORE_BYPASS))
        self._bypass_mark = int(hello.get("bypass_mark", DEFAULT_BYPASS_MARK))
        reply, fds = await self._call("encap_sockets")
        for info, fd in zip(reply["sockets"], fds, strict=True):
            held = socket.socket(fileno=fd)
            held.setblocking(False)
            self._held[(udp_names.canonical(info["host"]), int(info["port"]))] = held
        log.info("data plane: userspace daemon pid %d on %s (TUN %s MTU %d%s)", self.daemon_pid,
                 self.socket_path, self.tun_name, self.mtu,
                 f"; {len(self._held)} UDP socket(s) kept from an earlier run" if self._held
                 else "")  # fmt: skip

    async def _connect(self) -> socket.socket:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.connect_timeout
        spawned: subprocess.Popen[bytes] | None = None
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
            try:
                sock.connect(str(self.socket_path))
                sock.setblocking(False)
                return sock
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                sock.close()
                if self.spawn is not None and spawned is None:
                    spawned = self._start_daemon(self.spawn)
                elif spawned is not None and spawned.poll() is not None:
                    where = f" (see {self.spawn.log_file})" if self.spawn and self.spawn.log_file else ""
                    raise DataPlaneError(
                        f"meshsec-dataplane exited with status {spawned.returncode} at start{where}") from exc
                if loop.time() > deadline:
                    raise DataPlaneError(f"no data-plane daemon answers on {self.socket_path} "
                                         f"after {self.connect_timeout:.0f} s: {exc}") from exc  # fmt: skip
                await asyncio.sleep(0.05)
            except OSError as exc:
                sock.close()
                raise DataPlaneError(
                    f"cannot connect to the data-plane daemon on {self.socket_path}: {exc}") from exc

    def _start_daemon(self, spawn: DaemonSpawn) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "meshsec.agent.dataplane.userspace.daemon",
                "--socket", str(self.socket_path), "--tun-name", spawn.tun_name,
                "--path-mtu", str(spawn.path_mtu)]  # fmt: skip
        if spawn.pid_file is not None:
            argv += ["--pid-file", str(spawn.pid_file)]
        out: Any = subprocess.DEVNULL
        if spawn.log_file is not None:
            out = open(spawn.log_file, "ab")  # noqa: SIM115 (the child keeps it)
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                    start_new_session=True, close_fds=True)  # fmt: skip
        finally:
            if spawn.log_file is not None:
                out.close()
        log.info("started meshsec-dataplane (pid %d) on %s: it outlives this agent", proc.pid,
                 self.socket_path)  # fmt: skip
        return proc

    def _readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        while True:
            try:
                data, fds, truncated = control.receive(sock, control.MAX_REPLY)
            except (BlockingIOError, InterruptedError):
                return
            except (OSError, control.ProtocolError) as exc:
                self._connection_lost(f"{exc}")
                return
            if not data and not fds:
                self._connection_lost("the daemon closed the connection")
                return
            try:
                message = control.decode(data, truncated, control.MAX_REPLY)
            except control.ProtocolError as exc:
                for fd in fds:
                    os.close(fd)
                self._connection_lost(f"bad message from the daemon: {exc}")
                return
            if "event" in message:
                with contextlib.suppress(control.ProtocolError, KeyError, ValueError, TypeError):
                    self._events.put_nowait(event_from_json(message["event"]))
                continue
            future = self._pending.pop(message.get("id", -1), None)
            if future is None or future.done():
                for fd in fds:
                    os.close(fd)
                continue
            future.set_result((message, fds))

    def _connection_lost(self, why: str) -> None:
        if self._lost is not None:
            return
        self._lost = DaemonLost(f"lost the connection to the data-plane daemon on {self.socket_path}: {why}")
        log.error("%s", self._lost)
        if self._sock is not None and self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())
        for future in self._pending.values():
            if not future.done():
                future.set_exception(self._lost)
        self._pending.clear()
        self._events.put_nowait(self._lost)

    async def _call(
        self, op: str, fds: list[int] | None = None, **args: Any
    ) -> tuple[dict[str, Any], list[int]]:
        if self._lost is not None:
            raise self._lost
        sock, loop = self._sock, self._loop
        if sock is None or loop is None:
            raise DataPlaneError(f"{op}: the data-plane client is not started")
        self._next_id += 1
        req_id = self._next_id
        future: asyncio.Future[tuple[dict[str, Any], list[int]]] = loop.create_future()
        self._pending[req_id] = future
        data = control.encode({"id": req_id, "op": op, **args})
        try:
            async with self._send_lock:
                await self._send(sock, data, fds or [])
            reply, reply_fds = await within(REQUEST_TIMEOUT, future)
        except TimeoutError:
            self._pending.pop(req_id, None)
            raise DataPlaneError(
                f"{op}: the data-plane daemon did not answer within {REQUEST_TIMEOUT:.0f} s") from None
        except OSError as exc:
            self._pending.pop(req_id, None)
            self._connection_lost(f"{exc}")
            raise DataPlaneError(f"{op}: {exc}") from exc
        if not reply.get("ok"):
            for fd in reply_fds:
                os.close(fd)
            error = f"{op}: {reply.get('error', 'the daemon refused')}"
            if reply.get("kind") == "unsupported":
                raise Unsupported(error)
            raise DataPlaneError(error)
        return reply, reply_fds

    async def _send(self, sock: socket.socket, data: bytes, fds: list[int]) -> None:
        while True:
            try:
                if fds:
                    socket.send_fds(sock, [data], fds)
                else:
                    sock.send(data)
                return
            except (BlockingIOError, InterruptedError):
                await control.wait_ready(sock, writable=True)

    async def close(self) -> None:
        """Disconnects; the daemon keeps every SA and policy and goes on forwarding."""
        if self._sock is not None:
            if self._loop is not None and self._lost is None:
                self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        for s in (*self._held.values(), *self._channels):
            with contextlib.suppress(Exception):
                if self._loop is not None:
                    self._loop.remove_reader(s.fileno())
            s.close()
        self._held.clear()
        self._channels.clear()

    # ------------------------------------------------------------------ SAs and policies

    async def allocate_spi(self, protocol: IpsecProtocol, src: IPAddress, dst: IPAddress) -> int:
        reply, _ = await self._call("allocate_spi", protocol=protocol.name.lower(), src=str(src),
                                    dst=str(dst))  # fmt: skip
        return int(reply["spi"])

    async def add_sa(self, sa: SecurityAssociation) -> None:
        await self._call("add_sa", sa=sa_to_json(sa))

    async def update_sa(self, sa: SecurityAssociation) -> None:
        await self._call("update_sa", sa=sa_to_json(sa))

    async def migrate_sa(self, old: SaId, sa: SecurityAssociation) -> None:
        await self._call("migrate_sa", old=sa_id_to_json(old), sa=sa_to_json(sa))

    async def delete_sa(self, sa_id: SaId) -> None:
        await self._call("delete_sa", sa=sa_id_to_json(sa_id))

    async def ensure_policy(self, policy: Policy) -> None:
        await self._call("ensure_policy", policy=policy_to_json(policy))

    async def delete_policy(self, selector: TrafficSelector, direction: Direction) -> None:
        key_only = Policy(selector, direction, PolicyAction.BLOCK)  # the daemon needs the key alone
        await self._call("delete_policy", policy=policy_to_json(key_only))

    async def counters(self, sa_id: SaId) -> SaCounters:
        reply, _ = await self._call("counters", sa=sa_id_to_json(sa_id))
        return SaCounters(**reply["counters"])

    async def drop_counters(self) -> dict[str, int]:
        """Packets dropped outside any one SA's counters, by reason (the daemon's own included)."""
        reply, _ = await self._call("drops")
        return {str(k): int(v) for k, v in reply["drops"].items()}

    # ------------------------------------------------------------------ ownership

    async def _listing(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        sas: list[dict[str, Any]] = []
        policies: list[dict[str, Any]] = []
        after: int | None = 0
        while after is not None:
            reply, _ = await self._call("list", after=after)
            sas += reply["sas"]
            policies += reply["policies"]
            after = reply["next"]
        return sas, policies

    async def list_owned(self) -> OwnedState:
        """Everything the daemon holds is this node's agent's: the socket is the agent's alone."""
        sas, policies = await self._listing()
        return OwnedState(
            sas=tuple(sa_id_from_json(s) for s in sas),
            policies=tuple((selector_from_json(p["selector"]), Direction(p["direction"])) for p in policies),
            max_reqid=max((int(s["reqid"]) for s in sas), default=0),
            # (A daemon older than this field sends none: new CHILD_SAs then take new reqids.)
            policy_reqids=tuple(
                (selector_from_json(p["selector"]), Direction(p["direction"]), int(p["reqid"]))
                for p in policies
                if p.get("reqid") is not None
            ),
        )

    async def adopt(self) -> OwnedState:
        """The daemon forwarded on while no agent was there; this agent takes it over as it is.
        Stale SPI reservations go now; SAs and policies no live CHILD_SA accounts for go with the
        agent's sweeper (two passes), as after a kernel backend's adopt."""
        await self._call("adopt")
        return await self.list_owned()

    async def flush_owned(self) -> None:
        await self._call("flush")

    # ------------------------------------------------------------------ events and 4500

    async def events(self) -> AsyncIterator[DataPlaneEvent]:
        """Ends with DaemonLost when the daemon goes away (the agent then restarts: its SAs went)."""
        while True:
            ev = await self._events.get()
            if isinstance(ev, DaemonLost):
                raise ev
            yield ev

    async def bypass_socket(self, sock: socket.socket) -> None:
        """The daemon marks the socket (SO_MARK is the socket's, not the descriptor's): it knows
        its own routing rule's mark and holds CAP_NET_ADMIN, which the agent may lack. A daemon
        older than the op (this agent was upgraded while it forwarded on): the agent marks it."""
        if "bypass_socket" in self._daemon_ops:
            await self._call("bypass_socket", fds=[sock.fileno()])
            return
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, self._bypass_mark)
        except PermissionError:
            raise DataPlaneError(
                f"the data-plane daemon (pid {self.daemon_pid}) cannot mark IKE sockets (it predates "
                "bypass_socket) and this agent lacks CAP_NET_ADMIN to mark them itself: upgrade the "
                "daemon (docs/kubernetes.md, rollouts)") from None

    def held_encap_socket(self, host: str, port: int) -> socket.socket | None:
        return self._held.pop((udp_names.canonical(host), port), None)

    async def attach_encap_socket(self, sock: socket.socket, ike_receiver: IkeReceiver) -> None:
        if sock.type != socket.SOCK_DGRAM:
            raise DataPlaneError("attach_encap_socket: the IKE NAT-T socket must be a UDP socket")
        loop = self._loop
        if loop is None:
            raise DataPlaneError("attach_encap_socket: the data plane is not started")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            await self._call("attach_encap", fds=[sock.fileno(), theirs.fileno()])
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()  # the daemon holds its own descriptor now
        ours.setblocking(False)
        self._channels.append(ours)
        local = sock.getsockname()[:2]
        loop.add_reader(ours.fileno(), self._ike_reader(loop, ours, local, ike_receiver))

    @staticmethod
    def _ike_reader(
        loop: asyncio.AbstractEventLoop, channel: socket.socket, local: tuple[str, int], receiver: IkeReceiver
    ) -> Any:
        def read() -> None:
            for _ in range(64):
                try:
                    packet = channel.recv(control.MAX_IKE_MESSAGE + 300)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError:
                    packet = b""
                if not packet:  # the daemon is gone: DaemonLost on the control socket says so
                    loop.remove_reader(channel.fileno())
                    return
                try:
                    message, remote = control.unpack_ike(packet)
                except control.ProtocolError:
                    continue
                receiver(message, local, remote)

        return read

