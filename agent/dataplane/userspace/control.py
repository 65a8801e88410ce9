"""The control protocol between the agent and the userspace data-plane daemon (daemon.py).

Transport: a Unix SOCK_SEQPACKET socket (0600, in the agent's state or run dir). One message is
one packet, so framing is the kernel's, and a message larger than the receiver's limit arrives
truncated (MSG_TRUNC) and is refused as a whole instead of desynchronising a stream. Sockets
travel as SCM_RIGHTS ancillary data (the UDP 4500 socket and the IKE channel).

Messages are JSON objects, version `VERSION`:
- request  {"id": N, "op": NAME, ...arguments}; the first on a connection must be
  {"op": "hello", "version": VERSION}, answered with the daemon's capabilities (with
  "role": "observer": a read-only connection beside the agent's, for status tools);
- reply    {"id": N, "ok": true, ...} or {"id": N, "ok": false, "error": TEXT, "kind": KIND}
  (KIND: "protocol", "dataplane" or "unsupported"; a protocol error on hello or an oversized
  message also closes the connection);
- event    {"event": {...}}: SA lifetime expiry and acquires, pushed unasked.

Requests are bounded by MAX_REQUEST bytes; replies that could grow with the number of SAs
(`list`) come in pages of PAGE entries, so no reply nears MAX_REPLY.

ESP keys cross this socket (in add_sa/update_sa) and nothing else: neither side logs a message,
and error texts name fields, never their values.

The IKE channel: ESP-in-UDP shares UDP 4500 with IKE (RFC 3948), and the daemon reads that socket.
The agent hands it a SOCK_SEQPACKET pair end with the socket; every IKE message (non-ESP marker
removed) comes back on it as one packet: `pack_ike`/`unpack_ike`.

`bypass_socket` carries one of the agent's IKE sockets (UDP 500, 4500): the daemon sets its
firewall mark on it (SO_MARK belongs to the socket, so the agent's descriptor carries it too) and
closes its own descriptor, so IKE never takes the TUN routes (backend.py `bypass_socket`).
"""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

from meshsec.common.deadline import within

VERSION = 1
MAX_REQUEST = 64 * 1024  # an SA with the longest keys is under 1 KiB
MAX_REPLY = 256 * 1024  # a `list` page of 128 entries is about 30 KiB
PAGE = 128  # list entries per reply
MAX_FDS = 4
MAX_IKE_MESSAGE = 65535  # a UDP datagram's payload; IKE messages are smaller
OPS = ("hello", "allocate_spi", "add_sa", "update_sa", "migrate_sa", "delete_sa", "ensure_policy",
       "delete_policy", "counters", "drops", "list", "adopt", "flush", "encap_sockets",
       "attach_encap", "bypass_socket")  # fmt: skip
# Version 1 daemons before bypass_socket named no ops in their hello: what they knew.
OPS_BEFORE_BYPASS = OPS[:-1]
# A hello with "role": "observer" (status tools, tests) supersedes no agent and may only read.
OBSERVER_OPS = ("hello", "counters", "drops", "list")


class ProtocolError(Exception):
    """A message that breaks the protocol: not JSON, not an object, unknown op, too large."""


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode()


def decode(data: bytes, truncated: bool, limit: int) -> dict[str, Any]:
    """One received packet; `truncated`: MSG_TRUNC was set (the sender exceeded `limit`)."""
    if truncated:
        raise ProtocolError(f"message larger than the {limit}-byte limit")
    if not data:
        raise ProtocolError("empty message")
    try:
        message = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        # The decoder's text gives a position, never the document (which may hold keys).
        where = getattr(exc, "pos", "?")
        raise ProtocolError(f"message is not JSON: {type(exc).__name__} at {where}") from None
    if not isinstance(message, dict):
        raise ProtocolError(f"message must be a JSON object, not {type(message).__name__}")
    return message


def receive(sock: socket.socket, limit: int) -> tuple[bytes, list[int], bool]:
    """One packet and the descriptors it carried; raises BlockingIOError when none is ready.
    Empty bytes without descriptors: the peer closed the connection."""
    data, fds, flags, _ = socket.recv_fds(sock, limit + 1, MAX_FDS)
    truncated = bool(flags & socket.MSG_TRUNC) or len(data) > limit
    if flags & socket.MSG_CTRUNC:
        for fd in fds:
            socket.close(fd)
        raise ProtocolError(f"more than {MAX_FDS} descriptors in one message")
    return data, fds, truncated


async def wait_ready(sock: socket.socket, writable: bool, timeout: float | None = None) -> None:
    """Until `sock` is readable (or writable); TimeoutError after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    fd = sock.fileno()
    (loop.add_writer if writable else loop.add_reader)(fd, wake)
    try:
        await within(timeout, ready)
    finally:
        (loop.remove_writer if writable else loop.remove_reader)(fd)


def pack_ike(message: bytes, remote: tuple[str, int]) -> bytes:
    host = remote[0].encode()
    return bytes([len(host)]) + host + remote[1].to_bytes(2, "big") + message


def unpack_ike(packet: bytes) -> tuple[bytes, tuple[str, int]]:
    if not packet:
        raise ProtocolError("empty IKE channel packet")
    n = packet[0]
    if len(packet) < 1 + n + 2:
        raise ProtocolError("IKE channel packet shorter than its header")
    host = packet[1:1 + n].decode("ascii", "replace")
    port = int.from_bytes(packet[1 + n:3 + n], "big")
    return packet[3 + n:], (host, port)
