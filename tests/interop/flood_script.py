"""IKE_SA_INIT flood for tests/interop/test_responder_flood.py, run inside the attacker's
namespace: spoofed IKE_SA_INITs from many addresses (never answered: their source addresses are
AnyIP-local here, so COOKIEs come back to nobody listening) plus one address that answers every
COOKIE and completes IKE_SA_INIT but never sends IKE_AUTH, to hold half-open SAs. Bounded: it
stops after --duration seconds or when --stop-file appears, and writes its counters as JSON."""

from __future__ import annotations

import argparse
import json
import os
import socket
import time
from pathlib import Path

from meshsec.agent.ike.address import Address
from meshsec.agent.ike.config import IkeConfig
from meshsec.agent.ike.constants import ExchangeType
from meshsec.agent.ike.sa import IkeSa
from meshsec.common.secrets import Secret

MAX_OUTSTANDING = 40  # cookie-answering attempts in flight
NEW_PER_SECOND = 100  # cookie-answering attempts started per second (the probe needed ~34)
SPOOFED_PER_SECOND = 300


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", required=True)
    parser.add_argument("--answering", required=True)
    parser.add_argument("--spoofed", nargs="+", required=True)
    parser.add_argument("--proposal", required=True)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--stop-file", type=Path, required=True)
    parser.add_argument("--stats", type=Path, required=True)
    args = parser.parse_args()
    target = Address(args.target, 500)
    config = IkeConfig("flood", "flood.test", "%any", Secret("unused-psk"), proposals=args.proposal)
    # One real IKE_SA_INIT as the template of every spoofed one; only the SPI varies.
    template = IkeSa(config, Address(args.spoofed[0], 500), target, initiator=True)
    template.initiate(0.0)
    (first,) = template.datagrams_to_send()
    spoof_socks = []
    for addr in args.spoofed:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((addr, 500))
        s.setblocking(False)
        spoof_socks.append(s)
    answer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    answer.bind((args.answering, 500))
    answer.setblocking(False)
    me = Address(args.answering, 500)
    outstanding: dict[bytes, IkeSa] = {}
    stats = {"spoofed_sent": 0, "attempts": 0, "half_open_made": 0, "cookies_answered": 0}
    start = time.monotonic()
    deadline = start + args.duration
    while time.monotonic() < deadline and not args.stop_file.exists():
        now = time.monotonic()
        elapsed = now - start
        while stats["spoofed_sent"] < elapsed * SPOOFED_PER_SECOND:
            sock = spoof_socks[stats["spoofed_sent"] % len(spoof_socks)]
            try:
                sock.sendto(os.urandom(8) + first.data[8:], (target.host, 500))
            except BlockingIOError:
                break
            stats["spoofed_sent"] += 1
        if len(outstanding) < MAX_OUTSTANDING and stats["attempts"] < elapsed * NEW_PER_SECOND:
            sa = IkeSa(config, me, target, initiator=True)
            sa.initiate(now)
            outstanding[sa.spi_i] = sa
            stats["attempts"] += 1
            for d in sa.datagrams_to_send():
                answer.sendto(d.data, (target.host, 500))
        for _ in range(64):
            try:
                data, src = answer.recvfrom(65535)
            except BlockingIOError:
                break
            sa = outstanding.get(data[:8])
            if sa is None:
                continue
            sa.receive(data, me, Address(src[0], src[1]), now)
            for d in sa.datagrams_to_send():
                if d.data[18] == ExchangeType.IKE_SA_INIT:  # with the COOKIE
                    stats["cookies_answered"] += 1
                    answer.sendto(d.data, (target.host, 500))
                else:  # IKE_AUTH: never sent, the responder's SA stays half-open
                    stats["half_open_made"] += 1
                    del outstanding[sa.spi_i]
        for spi, sa in list(outstanding.items()):  # unanswered (dropped): try a fresh one
            if sa.created_at is not None and now - sa.created_at > 2.0:
                del outstanding[spi]
        time.sleep(0.002)
    args.stats.write_text(json.dumps(stats))


if __name__ == "__main__":
    main()
