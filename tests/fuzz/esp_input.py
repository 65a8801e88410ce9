"""Target: input of the userspace data plane (agent/dataplane/userspace/engine.py) between two
in-memory engines with real SAs (AES-GCM, AES-CBC+HMAC, AH; tunnel or transport mode).
Selector byte: bits 0-1 the path (0: a wire ESP packet as is; 1: an inner packet sealed with the
real outbound SA, then received; 2: a packet from TUN, sent through the SPD and, if sealed,
received by the peer; 3: a raw IPv4 packet from the ESP/AH socket), bits 2-3 the transform,
bit 4 transport mode. Every failure must be a counted drop: the readers count an escaped
exception as an internal error (drops["internal_error"]), so any exception is a finding."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from meshsec.agent.dataplane.api import Mode
from tests.dataplane.test_engine import Pair, icmp_packet

PROTOS = ("gcm", "cbc", "ah", "gcm")
MAX_LEN = 2048


def _pair(selector: int) -> Pair:
    mode = Mode.TRANSPORT if selector & 16 else Mode.TUNNEL
    return Pair(PROTOS[(selector >> 2) & 3], mode=mode)


def make() -> Callable[[bytes], None]:
    def one_input(data: bytes) -> None:
        if not data:
            return
        p, path, body = _pair(data[0]), data[0] & 3, data[1:]
        if path == 0:
            p.b.from_esp(body)
        elif path == 1 and p.out_ab.esp is not None and body:
            p.b.from_esp(p.out_ab.esp.seal(body[1:], body[0]))
        elif path == 3:
            p.b.from_ipv4_raw(body)
        else:
            p.send(body)

    return one_input


def seeds() -> Iterator[tuple[str, bytes]]:
    ping = icmp_packet("198.19.1.10", "198.19.2.10")
    for transform in range(3):
        for transport in (0, 16):
            selector = transform << 2 | transport
            p = _pair(selector)
            name = f"{PROTOS[transform]}-{'transport' if transport else 'tunnel'}"
            yield f"{name}-tun", bytes((selector | 2,)) + ping
            yield f"{name}-sealed", bytes((selector | 1, 4)) + ping
            p.a.from_tun(ping)
            for raw in p.wa.ipv4:
                yield f"{name}-raw4", bytes((selector | 3,)) + raw
                yield f"{name}-wire", bytes((selector,)) + raw[20:]
