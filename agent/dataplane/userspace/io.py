"""Sockets and the packet loop around the engine.

Two drivers run the same engine: `ThreadDriver` (default) waits in epoll on a dedicated thread and
drains every ready descriptor in batches; `AsyncioDriver` registers the same readers with the
event loop. docs/dataplane.md explains the measurement behind the default.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import select
import socket
import sys
import threading
import time
from collections.abc import Callable

from meshsec.agent.dataplane.api import IkeReceiver
from meshsec.agent.dataplane.userspace.engine import Engine
from meshsec.agent.dataplane.userspace.esp import Drop
from meshsec.agent.dataplane.userspace.packet import IPPROTO_AH, IPPROTO_ESP
from meshsec.common.errorlog import ExceptionLog

BATCH = 256  # packets per descriptor per wakeup; bounds the time other descriptors wait
_BUF = 65536
_NON_ESP_MARKER = b"\0\0\0\0"
IPV6_PKTINFO = 50
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
SO_RCVBUF_BYTES = 4 << 20
SO_SNDBUF_BYTES = 4 << 20
# UDP segmentation offload (Linux 4.18+) and its receive side (5.0+): one sendmsg carries a run of
# equal-size datagrams that the kernel splits (in the NIC, or not at all when the receiver also
# asked for GRO, as over veth); one recvmsg returns a run of coalesced datagrams plus their size.
SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
GSO_MAX_SEGMENTS = 64  # UDP_MAX_SEGMENTS of older kernels (newer allow 128)
GSO_MAX_BYTES = 60000  # below the 64 KiB limit of one UDP datagram, headers included
_INT = 4


def _grow_buffer(sock: socket.socket, forced: int, plain: int, size: int) -> None:
    """Bursts overflow the default buffers (net.core.rmem_max/wmem_max are host-wide and small);
    as root, SO_*BUFFORCE goes past that limit. Never shrinks a buffer its owner made bigger."""
    if sock.getsockopt(socket.SOL_SOCKET, plain) >= 2 * size:  # the kernel doubles what is set
        return
    for opt in (forced, plain):
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, size)
            return
        except OSError:
            continue


def _grow_receive_buffer(sock: socket.socket) -> None:
    _grow_buffer(sock, SO_RCVBUFFORCE, socket.SO_RCVBUF, SO_RCVBUF_BYTES)


class SocketOutput:
    """Raw IPv4/IPv6 sockets for plain ESP/AH, the shared UDP socket, and the TUN fd."""

    def __init__(self, tun_fd: int, mark: int, udp_offload: bool = True) -> None:
        self.tun_fd = tun_fd
        self.mark = mark
        self.udp: list[socket.socket] = []  # every attached UDP 4500 socket (e.g. IPv4 and IPv6)
        self._udp_for: dict[str, socket.socket] = {}  # SA source address -> socket to send from
        self.raw4 = self._raw(socket.AF_INET, socket.IPPROTO_RAW)  # send-only, IP_HDRINCL implied
        self.recv4 = {p: self._raw(socket.AF_INET, p) for p in (IPPROTO_ESP, IPPROTO_AH)}
        self.raw6: dict[int, socket.socket] = {}
        with contextlib.suppress(OSError):  # a node without IPv6 still does IPv4
            self.raw6 = {p: self._raw(socket.AF_INET6, p) for p in (IPPROTO_ESP, IPPROTO_AH)}
        self._pktinfo: dict[bytes, list[tuple[int, int, bytes]]] = {}
        # The pending GSO run: datagrams of one size (the last may be shorter) for one socket and
        # destination, sent by `flush` at the end of each read batch.
        self.gso = udp_offload
        self.gro = udp_offload
        self._gso_limit = _BUF  # segment sizes that failed (e.g. above the path MTU) lower this
        self._run: list[bytes] = []
        self._run_sock: socket.socket | None = None
        self._run_dst: tuple[str, int] = ("", 0)
        self._run_size = 0
        self._run_bytes = 0

    def _raw(self, family: int, proto: int) -> socket.socket:
        s = socket.socket(family, socket.SOCK_RAW, proto)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, self.mark)
        _grow_receive_buffer(s)
        s.setblocking(False)
        return s

    def attach_udp(self, sock: socket.socket) -> None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, self.mark)
        _grow_receive_buffer(sock)
        _grow_buffer(sock, SO_SNDBUFFORCE, socket.SO_SNDBUF, SO_SNDBUF_BYTES)
        if self.gro:
            with contextlib.suppress(OSError):  # without GRO every datagram arrives on its own
                sock.setsockopt(SOL_UDP, UDP_GRO, 1)
        sock.setblocking(False)
        self.udp.append(sock)
        self._udp_for.clear()

    def _udp_socket(self, src: str) -> socket.socket:
        """The socket bound to `src`, else the wildcard socket of its family."""
        family = socket.AF_INET6 if ":" in src else socket.AF_INET
        same = [s for s in self.udp if s.family == family]
        exact = [s for s in same if s.getsockname()[0] == src]
        wild = [s for s in same if s.getsockname()[0] in ("0.0.0.0", "::")]
        candidates = exact or wild or same
        if not candidates:
            raise OSError(f"no UDP encapsulation socket for {src}")
        chosen = self._udp_for[src] = candidates[0]
        return chosen

    def send_ipv4(self, packet: bytes, dst: str) -> None:
        self.raw4.sendto(packet, (dst, 0))

    def send_ipv6(self, payload: bytes, protocol: int, src: bytes, dst: str) -> None:
        anc = self._pktinfo.get(src)
        if anc is None:
            anc = self._pktinfo[src] = [(socket.IPPROTO_IPV6, IPV6_PKTINFO, src + b"\0\0\0\0")]
        self.raw6[protocol].sendmsg([payload], anc, 0, (dst, 0))

    def send_udp(self, datagram: bytes, dst: tuple[str, int], src: str) -> None:
        """Queue `datagram` on the pending GSO run; `flush` sends it. A datagram that cannot join
        the run (other socket or destination, larger, run full) flushes the run first; a shorter
        one ends it, since only the last segment of a run may be shorter."""
        sock = self._udp_for.get(src) or self._udp_socket(src)
        if not self.gso:
            sock.sendto(datagram, dst)
            return
        n = len(datagram)
        run = self._run
        if run and (sock is not self._run_sock or n > self._run_size or dst != self._run_dst
                    or len(run) >= GSO_MAX_SEGMENTS or self._run_bytes + n > GSO_MAX_BYTES):
            self.flush()
        if not run:
            if n > self._gso_limit:
                sock.sendto(datagram, dst)
                return
            self._run_sock, self._run_dst, self._run_size, self._run_bytes = sock, dst, n, 0
        run.append(datagram)
        self._run_bytes += n
        if n < self._run_size:
            self.flush()

    def flush(self) -> int:
        """Send the pending GSO run; returns how many datagrams could not be sent."""
        run = self._run
        if not run:
            return 0
        sock, dst = self._run_sock, self._run_dst
        assert sock is not None
        try:
            if len(run) == 1:
                sock.sendto(run[0], dst)
            else:
                sock.sendmsg(run, [(SOL_UDP, UDP_SEGMENT, self._run_size.to_bytes(2, sys.byteorder))], 0, dst)
            return 0
        except OSError as exc:
            if len(run) == 1:
                return 1
            if exc.errno == errno.EINVAL:
                self._gso_limit = self._run_size - 1  # e.g. a segment above the path MTU
            elif exc.errno in (errno.ENOPROTOOPT, errno.EOPNOTSUPP, errno.EIO):
                self.gso = False
            return self._send_each(sock, run, dst)
        finally:
            run.clear()

    @staticmethod
    def _send_each(sock: socket.socket, run: list[bytes], dst: tuple[str, int]) -> int:
        failed = 0
        for datagram in run:
            try:
                sock.sendto(datagram, dst)
            except OSError:
                failed += 1
        return failed

    def write_tun(self, packet: bytes | bytearray) -> None:
        os.write(self.tun_fd, packet)

    def close(self) -> None:
        for s in (self.raw4, *self.recv4.values(), *self.raw6.values()):
            s.close()


class Readers:
    """Batch readers for every descriptor; each drains up to BATCH packets, then yields."""

    def __init__(self, engine: Engine, out: SocketOutput) -> None:
        self.engine = engine
        self.out = out
        self._buf = bytearray(_BUF)
        self._view = memoryview(self._buf)
        self.internal_errors = 0
        # Readers run in several threads; a racing report at worst logs one extra traceback.
        self.errors = ExceptionLog(logging.getLogger(__name__))

    def table(self) -> dict[int, Callable[[], None]]:
        t: dict[int, Callable[[], None]] = {self.out.tun_fd: self.read_tun}
        for s in self.out.recv4.values():
            t[s.fileno()] = self._reader(s, self.engine.from_ipv4_raw)
        if self.out.raw6:
            esp6, ah6 = self.out.raw6[IPPROTO_ESP], self.out.raw6[IPPROTO_AH]
            t[esp6.fileno()] = self._reader(esp6, self.engine.from_esp)
            t[ah6.fileno()] = self._reader(ah6, self.engine.from_ipv6_ah)
        return t

    def read_tun(self) -> None:
        engine = self.engine
        engine.now = time.time()
        fd = self.out.tun_fd
        from_tun = engine.from_tun
        read = os.read
        try:
            for _ in range(BATCH):
                try:
                    pkt = read(fd, _BUF)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError:
                    return  # device gone while closing
                try:
                    from_tun(pkt)
                except Exception:  # a bug must cost one packet, not the data plane
                    self.internal_errors += 1
                    self.errors.report("packet from the TUN device")
        finally:
            failed = self.out.flush()
            if failed:
                engine.drops_out[Drop.SEND_ERROR] += failed

    def _reader(self, sock: socket.socket, handle: Callable[[bytes], None]) -> Callable[[], None]:
        engine, view, buf = self.engine, self._view, self._buf

        def read() -> None:
            engine.now = time.time()
            for _ in range(BATCH):
                try:
                    n = sock.recv_into(buf)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError:
                    return
                try:
                    handle(bytes(view[:n]))
                except Exception:
                    self.internal_errors += 1
                    self.errors.report("packet from a raw socket")

        return read

    def udp_reader(
        self, sock: socket.socket, deliver_ike: Callable[[bytes, tuple[str, int]], None]
    ) -> Callable[[], None]:
        """RFC 3948 demultiplexing: non-ESP marker -> IKE, 0xFF -> NAT keepalive, else ESP. With
        UDP GRO one receive may hold a run of datagrams of the size the kernel reports."""
        engine, view, buf = self.engine, self._view, self._buf
        from_esp = engine.from_esp
        recvmsg_into = sock.recvmsg_into
        bufs = [buf]
        anc_size = socket.CMSG_SPACE(_INT)

        def read() -> None:
            engine.now = time.time()
            count = 0
            while count < BATCH:
                try:
                    n, anc, _, addr = recvmsg_into(bufs, anc_size)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError:
                    return
                size = n
                for level, kind, data in anc:
                    if level == SOL_UDP and kind == UDP_GRO and len(data) >= _INT:
                        size = int.from_bytes(data[:_INT], sys.byteorder) or n
                start = 0
                while True:  # once per datagram of a GRO run; at least once (an empty datagram)
                    end = min(start + size, n)
                    count += 1
                    try:
                        if end - start >= 4 and buf[start:start + 4] == _NON_ESP_MARKER:
                            deliver_ike(bytes(buf[start + 4:end]), addr[:2])
                        elif end - start == 1 and buf[start] == 0xFF:
                            pass  # NAT keepalive
                        elif end - start < 8:
                            engine.drops[Drop.MALFORMED] += 1
                        else:
                            from_esp(bytes(view[start:end]))
                    except Exception:
                        self.internal_errors += 1
                        self.errors.report("datagram from a UDP socket")
                    if end >= n:
                        break
                    start = end

        return read


class ThreadDriver:
    """The packet loop off the event loop: `split=False` runs one thread for everything;
    `split=True` runs one thread for TUN -> wire and one for wire -> TUN. epoll waits, syscalls
    and the AEAD calls release the GIL, so the two directions overlap partly."""

    def __init__(self, readers: Readers, split: bool = False) -> None:
        self.readers = readers
        table = readers.table()
        if split:
            tun_fd = readers.out.tun_fd
            self._threads = [_EpollThread("meshsec-dp-out", {tun_fd: table.pop(tun_fd)}),
                             _EpollThread("meshsec-dp-in", table)]
        else:
            self._threads = [_EpollThread("meshsec-dataplane", table)]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def add(self, fd: int, handler: Callable[[], None]) -> None:
        """Register an inbound descriptor (the UDP encapsulation socket)."""
        self._threads[-1].add(fd, handler)

    def stop(self) -> None:
        for t in self._threads:
            t.stop()


class _EpollThread:
    """One thread draining a set of descriptors in batches."""

    def __init__(self, name: str, handlers: dict[int, Callable[[], None]]) -> None:
        self._handlers = handlers
        self._epoll = select.epoll()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._epoll.register(self._wake_r, select.EPOLLIN)
        for fd in self._handlers:
            self._epoll.register(fd, select.EPOLLIN)
        self._stop = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def add(self, fd: int, handler: Callable[[], None]) -> None:
        self._handlers[fd] = handler
        self._epoll.register(fd, select.EPOLLIN)

    def _run(self) -> None:
        handlers = self._handlers
        poll = self._epoll.poll
        while not self._stop:
            try:
                events = poll(1.0)
            except InterruptedError:
                continue
            for fd, _ in events:
                h = handlers.get(fd)
                if h is not None:
                    h()

    def stop(self) -> None:
        self._stop = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        self._thread.join(timeout=5)
        self._epoll.close()
        os.close(self._wake_r)
        os.close(self._wake_w)


class AsyncioDriver:
    """The packet loop as event-loop readers (kept for comparison; see docs/dataplane.md)."""

    def __init__(self, readers: Readers, loop: asyncio.AbstractEventLoop) -> None:
        self.readers = readers
        self.loop = loop
        self._fds: list[int] = []

    def start(self) -> None:
        for fd, h in self.readers.table().items():
            self.add(fd, h)

    def add(self, fd: int, handler: Callable[[], None]) -> None:
        self.loop.add_reader(fd, handler)
        self._fds.append(fd)

    def stop(self) -> None:
        for fd in self._fds:
            self.loop.remove_reader(fd)
        self._fds.clear()


MAX_IKE_BACKLOG = 1024  # IKE datagrams handed to the event loop and not yet taken by it


class IkeHandoff:
    """IKE datagrams from the packet thread to the event loop. The thread drains the UDP socket
    much faster than the loop answers IKE, so without a bound a flood behind the non-ESP marker
    would queue callbacks (up to 64 KiB each) without limit; past MAX_IKE_BACKLOG they are dropped
    and counted, as the socket buffer drops them when the loop reads the socket itself."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, receiver: IkeReceiver, local: tuple[str, int],
        limit: int = MAX_IKE_BACKLOG,
    ) -> None:  # fmt: skip
        self._loop = loop
        self._receiver = receiver
        self._local = local
        self._limit = limit
        # One writer each (the packet thread, the loop), so no lock: the backlog is their difference.
        self._handed = 0
        self._taken = 0
        self.dropped = 0

    def __call__(self, msg: bytes, remote: tuple[str, int]) -> None:
        if self._handed - self._taken >= self._limit:
            self.dropped += 1
            return
        self._handed += 1
        self._loop.call_soon_threadsafe(self._take, msg, remote)

    def _take(self, msg: bytes, remote: tuple[str, int]) -> None:
        self._taken += 1
        self._receiver(msg, self._local, remote)


def make_ike_delivery(
    loop: asyncio.AbstractEventLoop, receiver: IkeReceiver, local: tuple[str, int], threaded: bool
) -> Callable[[bytes, tuple[str, int]], None]:
    def in_loop(msg: bytes, remote: tuple[str, int]) -> None:
        receiver(msg, local, remote)

    return IkeHandoff(loop, receiver, local) if threaded else in_loop
