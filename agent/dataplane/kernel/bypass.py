"""Per-socket XFRM policy bypass for the agent's IKE sockets (strongSwan's `add_socket_bypass`).

A socket policy takes precedence over the SPD for everything sent and received on that socket, so
an ALLOW policy without templates, in each direction, keeps IKE in clear even where an installed
tunnel policy's selectors hold the peer's own address (node-to-node meshes). It covers IKE on 4500
too: with UDP_ENCAP_ESPINUDP set, ESP-in-UDP arriving there is decapsulated by the socket's
`encap_rcv` and checked against the SPD as the inner packet; outbound ESP-in-UDP is built by the
SA's output path, not sent on the socket, so the bypass never lets tunnelled traffic out in clear.

The option is `IP_XFRM_POLICY` (IPv4) / `IPV6_XFRM_POLICY` with a bare `struct
xfrm_userpolicy_info` (no templates); it needs CAP_NET_ADMIN, as the rest of the kernel data plane.
"""

from __future__ import annotations

import socket
import struct

from meshsec.agent.dataplane.api import DataPlaneError
from meshsec.agent.dataplane.kernel import xfrm_messages as xm

IP_XFRM_POLICY = 17  # <linux/in.h>; Python's socket module does not export it
IPV6_XFRM_POLICY = 35  # <linux/in6.h>
_OPTIONS = {socket.AF_INET: (socket.IPPROTO_IP, IP_XFRM_POLICY),
            socket.AF_INET6: (socket.IPPROTO_IPV6, IPV6_XFRM_POLICY)}  # fmt: skip

# struct xfrm_userpolicy_info, x86_64/aarch64 layout: selector (56, family at offset 40), lifetime
# cfg (64) and cur (32) all zero (no expiry), priority, index, dir, action, flags, share, then
# padding to 8-byte alignment.
_SELECTOR_HEAD = struct.Struct("=40sH14x")
_TAIL = struct.Struct("=96xIIBBBB4x")


def socket_policy(family: int, direction: int) -> bytes:
    """An ALLOW policy for every packet of the socket in `direction` (XFRM_POLICY_IN/OUT)."""
    return _SELECTOR_HEAD.pack(b"", family) + _TAIL.pack(0, 0, direction, xm.XFRM_POLICY_ALLOW, 0,
                                                          xm.XFRM_SHARE_ANY)


def bypass(sock: socket.socket) -> None:
    """Set the in and out ALLOW socket policies; raise DataPlaneError naming the socket if the
    kernel refuses (then IKE with a peer inside a selector would be caught by our own policies)."""
    option = _OPTIONS.get(sock.family)
    if option is None:
        raise DataPlaneError(f"IKE socket bypass: address family {sock.family!r} is not IPv4 or IPv6")
    for direction in (xm.XFRM_POLICY_OUT, xm.XFRM_POLICY_IN):
        try:
            sock.setsockopt(*option, socket_policy(sock.family, direction))
        except OSError as exc:
            where = "out" if direction == xm.XFRM_POLICY_OUT else "in"
            raise DataPlaneError(f"IKE socket {_name(sock)}: cannot set the {where} XFRM socket policy "
                                 f"bypass (IP_XFRM_POLICY): {exc}") from exc


def _name(sock: socket.socket) -> str:
    try:
        host, port = sock.getsockname()[:2]
    except OSError:
        return f"fd {sock.fileno()}"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
