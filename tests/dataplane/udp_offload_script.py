"""Run inside a throwaway namespace by test_udp_offload.py: ESP over real UDP sockets with GSO runs on
send and GRO on receive (and with both off), through two in-memory engines. Prints OK."""

from __future__ import annotations

import ipaddress
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from meshsec.agent.dataplane.api import UdpEncapsulation
from meshsec.agent.dataplane.userspace.io import SOL_UDP, UDP_GRO, Readers, SocketOutput
from meshsec.agent.dataplane.userspace.packet import build_ipv4
from tests.dataplane.test_engine import Pair

A, B = ("198.18.0.1", 4500), ("198.18.0.2", 4500)


def tcp_segment(seq: int, size: int) -> bytes:
    """An ACK segment from 198.19.1.1 to 198.19.2.1 carrying `size` bytes (inside NET_A -> NET_B)."""
    tcp = (40000).to_bytes(2, "big") + (5001).to_bytes(2, "big") + seq.to_bytes(4, "big") + bytes(4)
    tcp += bytes((0x50, 0x10)) + bytes(6) + bytes([seq & 0xFF]) * size
    src, dst = ipaddress.ip_address("198.19.1.1").packed, ipaddress.ip_address("198.19.2.1").packed
    return build_ipv4(src, dst, 6, len(tcp), seq) + tcp


def udp(addr: tuple[str, int]) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(addr)
    return s


def check(offload: bool) -> None:
    p = Pair("gcm", encap=UdpEncapsulation(4500, 4500))
    out_a = SocketOutput(-1, 0x6D73, udp_offload=offload)
    out_b = SocketOutput(-1, 0x6D73, udp_offload=offload)
    sock_a, sock_b = udp(A), udp(B)
    out_a.attach_udp(sock_a)
    out_b.attach_udp(sock_b)
    p.a.output = out_a
    ike: list[bytes] = []
    read_b = Readers(p.b, out_b).udp_reader(sock_b, lambda msg, _addr: ike.append(msg))
    try:
        # 40 full segments and a short one: one GSO run; then IKE messages of equal size, a run too.
        sent = [tcp_segment(i, 1200) for i in range(40)] + [tcp_segment(40, 100)]
        for pkt in sent:
            p.a.from_tun(pkt)
        assert out_a.flush() == 0
        for i in range(5):
            out_a.send_udp(b"\0\0\0\0" + bytes([i]) * 100, B, A[0])
        assert out_a.flush() == 0
        # Nothing but complete datagrams reaches the engine: GRO runs are split at their size.
        for _ in range(50):
            read_b()
            if len(p.wb.tun) == len(sent) and len(ike) == 5:
                break
            time.sleep(0.01)
        assert p.wb.tun == sent, (len(p.wb.tun), p.b.drops)
        assert ike == [bytes([i]) * 100 for i in range(5)], ike
        assert not any(p.b.drops) and not any(p.a.drops_out)
    finally:
        out_a.close()
        out_b.close()
        sock_a.close()
        sock_b.close()


def gso_reaches_gro_receiver_as_one_run() -> None:
    """The kernel keeps an offloaded run together up to a GRO socket (what the reader relies on)."""
    out = SocketOutput(-1, 0x6D73)
    tx, rx = udp(A), udp(B)
    out.attach_udp(tx)
    rx.setsockopt(SOL_UDP, UDP_GRO, 1)
    try:
        for i in range(10):
            out.send_udp(bytes([i]) * 1000, B, A[0])
        assert out.flush() == 0
        n, anc, _, _ = rx.recvmsg_into([bytearray(65536)], socket.CMSG_SPACE(4))
        sizes = [int.from_bytes(d[:4], sys.byteorder) for lvl, kind, d in anc
                 if (lvl, kind) == (SOL_UDP, UDP_GRO)]
        assert n == 10_000 and sizes == [1000], (n, sizes)
    finally:
        out.close()
        tx.close()
        rx.close()


if __name__ == "__main__":
    gso_reaches_gro_receiver_as_one_run()
    check(offload=True)
    check(offload=False)
    print("OK")
