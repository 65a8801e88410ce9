"""RFC 3948 UDP encapsulation on the IKE socket: the kernel takes ESP, the agent keeps IKE.

With UDP_ENCAP_ESPINUDP set, the kernel decapsulates datagrams whose first four bytes are a
non-zero SPI, eats NAT-keepalives (a single 0xff byte) and passes everything else to the socket:
IKE messages behind the 4-byte zero non-ESP marker. Anything else reaching us is malformed and is
dropped and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket

from meshsec.agent.dataplane.api import IkeReceiver

log = logging.getLogger(__name__)

SOL_UDP = 17
UDP_ENCAP = 100
UDP_ENCAP_ESPINUDP = 2
NON_ESP_MARKER = b"\0\0\0\0"
IP_PKTINFO = 8
IPV6_RECVPKTINFO = 49
IPV6_PKTINFO = 50
_ANCILLARY = socket.CMSG_SPACE(64)


def enable_espinudp(sock: socket.socket) -> None:
    sock.setsockopt(SOL_UDP, UDP_ENCAP, UDP_ENCAP_ESPINUDP)


def _local_address(ancdata: list[tuple[int, int, bytes]], fallback: tuple[str, int]) -> tuple[str, int]:
    # A wildcard-bound socket learns the address a datagram was sent to from IP(V6)_PKTINFO.
    for level, kind, data in ancdata:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= 12:
            return socket.inet_ntop(socket.AF_INET, data[8:12]), fallback[1]
        if level == socket.IPPROTO_IPV6 and kind == IPV6_PKTINFO and len(data) >= 16:
            return str(ipaddress.IPv6Address(data[:16])), fallback[1]
    return fallback


class EncapSocketReader:
    """Reads IKE from an ESP-in-UDP socket on the running event loop."""

    def __init__(self, sock: socket.socket, receiver: IkeReceiver) -> None:
        self.sock = sock
        self.receiver = receiver
        self.received = 0
        self.dropped_malformed = 0
        self.receiver_errors = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        if self.sock.type != socket.SOCK_DGRAM:
            raise ValueError(f"IKE encapsulation socket must be UDP, got {self.sock.type!r}")
        enable_espinudp(self.sock)
        if self.sock.family == socket.AF_INET:
            self.sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        else:
            self.sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
        self.sock.setblocking(False)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.sock.fileno(), self._readable)

    def stop(self) -> None:
        if self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self.sock.fileno())
            self._loop = None

    def _readable(self) -> None:
        local = self.sock.getsockname()[:2]
        for _ in range(64):  # bounded, so one busy socket cannot starve the loop
            try:
                data, ancdata, _flags, peer = self.sock.recvmsg(65535, _ANCILLARY)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. ICMP errors reported on the socket
                log.debug("IKE socket error: %s", exc)
                return
            if not data.startswith(NON_ESP_MARKER) or len(data) < len(NON_ESP_MARKER) + 28:
                # Shorter than marker + IKE header (RFC 7296 3.1): not IKE.
                self.dropped_malformed += 1
                continue
            self.received += 1
            try:
                self.receiver(data[len(NON_ESP_MARKER):], _local_address(ancdata, local), peer[:2])
            except Exception:  # a receiver bug must not kill the data plane's reader
                self.receiver_errors += 1
                log.exception("IKE receiver raised")


def ike_marker_prefix(message: bytes) -> bytes:
    """What the agent sends on the encapsulation socket for an IKE message (RFC 3948 2.2)."""
    return NON_ESP_MARKER + message
