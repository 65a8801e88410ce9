"""UDP sockets for IKE (500) and NAT-T (4500), IPv4 and IPv6.

Sockets bound to a wildcard address learn the destination address of each datagram with
IP_PKTINFO / IPV6_RECVPKTINFO and send replies from that same address: the engine's NAT
detection hashes and the peer's view of us both depend on the real local address."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import struct
from dataclasses import dataclass

from meshsec.agent.ike.address import Address

IP_PKTINFO = 8  # linux/in.h; Python's socket module does not export it
_CMSG_SPACE = 256
MAX_DATAGRAM = 65535


@dataclass(frozen=True, slots=True)
class Received:
    data: bytes
    local: Address
    remote: Address


WILDCARDS = frozenset(("0.0.0.0", "::"))


def canonical(host: str) -> str:
    """The one spelling of an address (so `0:0::0` and `::` compare equal as strings)."""
    return str(ipaddress.ip_address(host))


def is_wildcard(host: str) -> bool:
    """For canonical spellings; a string test because it runs for every datagram."""
    return host in WILDCARDS


def open_udp_socket(host: str, port: int, rcvbuf: int = 0) -> socket.socket:
    """A non-blocking UDP socket bound to (host, port). `rcvbuf` raises SO_RCVBUF (bursts of
    IKE_SA_INITs overflow the default, and every lost packet costs a retransmit timeout)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    pktinfo = is_wildcard(canonical(host))  # a specific bind knows its address already
    try:
        if family == socket.AF_INET6:
            # Separate v4 and v6 sockets: v4-mapped addresses would confuse NAT detection.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if pktinfo:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
        elif pktinfo:
            sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        if rcvbuf > 0:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            with contextlib.suppress(OSError):  # SO_RCVBUFFORCE ignores rmem_max; root only
                sock.setsockopt(socket.SOL_SOCKET, 33, rcvbuf)  # SO_RCVBUFFORCE
        sock.bind((host, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _local_from_cmsg(ancdata: list[tuple[int, int, bytes]], family: int) -> str | None:
    for level, ctype, data in ancdata:
        if family == socket.AF_INET and (level, ctype) == (socket.IPPROTO_IP, IP_PKTINFO) and len(data) >= 12:
            return socket.inet_ntop(socket.AF_INET, data[8:12])  # struct in_pktinfo.ipi_addr
        if (
            family == socket.AF_INET6
            and level == socket.IPPROTO_IPV6
            and ctype == socket.IPV6_PKTINFO
            and len(data) >= 16
        ):
            return socket.inet_ntop(socket.AF_INET6, data[:16])
    return None


def receive(sock: socket.socket, bound: Address) -> Received | None:
    """One datagram, or None when the socket is drained. The local address comes from
    PKTINFO when the socket is bound to a wildcard."""
    try:
        data, ancdata, _flags, peer = sock.recvmsg(MAX_DATAGRAM, _CMSG_SPACE)
    except (BlockingIOError, InterruptedError):
        return None
    local_host = bound.host
    if is_wildcard(bound.host):
        local_host = _local_from_cmsg(ancdata, sock.family) or bound.host
    return Received(data, Address(local_host, bound.port), Address(_strip_scope(peer[0]), peer[1]))


def _strip_scope(host: str) -> str:
    return host.split("%", 1)[0]


def send(sock: socket.socket, bound: Address, data: bytes, local: Address, remote: Address) -> None:
    """Sends from `local` (a specific address even on a wildcard-bound socket). Raises
    OSError like sendto; a full send buffer shows as BlockingIOError."""
    if not is_wildcard(bound.host) or is_wildcard(local.host):
        sock.sendto(data, (remote.host, remote.port))
        return
    if sock.family == socket.AF_INET6:
        info = socket.inet_pton(socket.AF_INET6, local.host) + struct.pack("=I", 0)
        cmsg = (socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, info)
    else:
        # struct in_pktinfo { int ifindex; in_addr spec_dst; in_addr addr; }
        info = struct.pack("=I", 0) + socket.inet_pton(socket.AF_INET, local.host) + bytes(4)
        cmsg = (socket.IPPROTO_IP, IP_PKTINFO, info)
    sock.sendmsg([data], [cmsg], 0, (remote.host, remote.port))
