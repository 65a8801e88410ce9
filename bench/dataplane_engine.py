"""Per-direction CPU cost of the userspace data plane's packet engine, without I/O: TUN -> ESP
(`Engine.from_tun`: SPD, sequence, padding, seal) and ESP -> TUN (`Engine.from_esp`: SAD, replay,
open, padding, inbound policy check), two engines in memory, UDP encapsulation, ESN, 1400-byte
TCP packets.

    /work/venv/bin/python bench/dataplane_engine.py [--packets 5000] [--rounds 15]

Prints µs per packet (the best round, so other load on the machine inflates it least) and the
packets/s one core would reach on the engine alone. The syscalls around it (TUN read/write, UDP
send/receive) are measured end to end by bench/dataplane_iperf.py.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from meshsec.agent.dataplane.api import UdpEncapsulation
from meshsec.agent.dataplane.userspace.packet import build_ipv4
from tests.dataplane.test_engine import Pair


def tcp_packet(size: int) -> bytes:
    tcp = bytearray(20)
    tcp[0:2], tcp[2:4], tcp[12], tcp[13] = (5001).to_bytes(2, "big"), (40000).to_bytes(2, "big"), 0x50, 0x10
    payload = bytes(tcp) + os.urandom(size - 40)
    src, dst = ipaddress.ip_address("198.19.1.1").packed, ipaddress.ip_address("198.19.2.1").packed
    return build_ipv4(src, dst, 6, len(payload), 7) + payload


class Sink:
    """Keeps what the sending engine emits (to feed the receiver) and counts TUN writes."""

    def __init__(self) -> None:
        self.udp: list[bytes] = []
        self.tun = 0

    def send_ipv4(self, packet: bytes, dst: str) -> None:
        raise AssertionError("UDP encapsulation expected")

    def send_ipv6(self, payload: bytes, protocol: int, src: bytes, dst: str) -> None:
        raise AssertionError("UDP encapsulation expected")

    def send_udp(self, datagram: bytes, dst: tuple[str, int], src: str) -> None:
        self.udp.append(datagram)

    def write_tun(self, packet: bytes | bytearray) -> None:
        self.tun += 1


def one_round(proto: str, packets: int) -> tuple[float, float]:
    p = Pair(proto, encap=UdpEncapsulation(4500, 4500), esn=True)
    out, back = Sink(), Sink()
    p.a.output, p.b.output = out, back
    pkt = tcp_packet(1400)
    from_tun, from_esp = p.a.from_tun, p.b.from_esp
    t0 = time.thread_time()
    for _ in range(packets):
        from_tun(pkt)
    t1 = time.thread_time()
    for esp in out.udp:
        from_esp(esp)
    t2 = time.thread_time()
    if back.tun != packets:
        raise SystemExit(f"{proto}: {back.tun} of {packets} packets arrived, drops {p.b.drops}")
    return (t1 - t0) / packets * 1e6, (t2 - t1) / packets * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    print("| suite | TUN -> ESP µs/packet | ESP -> TUN µs/packet | packets/s per core, each way |")
    print("|---|---:|---:|---:|")
    for proto, name in (("gcm", "AES-GCM-128"), ("chacha", "ChaCha20-Poly1305"),
                        ("cbc", "AES-128-CBC/HMAC-SHA-256")):
        rounds = [one_round(proto, args.packets) for _ in range(args.rounds)]
        out = min(r[0] for r in rounds)
        inb = min(r[1] for r in rounds)
        print(f"| {name} | {out:.2f} | {inb:.2f} | {1e6 / out:,.0f} / {1e6 / inb:,.0f} |")


if __name__ == "__main__":
    main()
