"""Two "sites" in namespaces with the meshsec userspace data plane on both, for the netns tests and
the benchmark: underlay veth 198.18.0.1 <-> 198.18.0.2, inner hosts 198.19.1.1 / 198.19.2.1 on lo.
SAs are static (keys made here), installed through the runner's JSON API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from tests.harness.netns import Host, Lab, stop_process

UNDERLAY = ("198.18.0.1", "198.18.0.2")
INNER = ("198.19.1.1", "198.19.2.1")
INNER_NET = ("198.19.1.0/24", "198.19.2.0/24")


class DataPlaneProcess:
    """The userspace runner in one namespace, driven over stdin/stdout JSON lines."""

    def __init__(self, lab: Lab, host: Host) -> None:
        self.host = host
        self.stderr = open(lab.workdir / f"dp-{host.name}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            host.argv([sys.executable, "-m", "meshsec.agent.dataplane.userspace.run"]),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, text=True,
            start_new_session=True,
        )
        lab.on_close(self.stop)

    def call(self, op: str, **kw: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"op": op, **kw}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"data plane in {self.host.name} died (see {self.stderr.name})")
        reply: dict[str, Any] = json.loads(line)
        if not reply.pop("ok"):
            raise RuntimeError(f"{op} in {self.host.name}: {reply['error']}")
        return reply

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.call("stop")
                self.proc.wait(timeout=5)
            except Exception:
                pass
        stop_process(self.proc)  # type: ignore[arg-type]
        self.stderr.close()


@dataclass
class Suite:
    """Algorithms and keys for one test; `keys()` makes fresh keys per direction."""

    encryption: str = "aes-gcm-16"
    integrity: str | None = None
    protocol: str = "esp"
    mode: str = "tunnel"
    encap: bool = False
    esn: bool = True
    replay_window: int = 1024

    def algorithms(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.protocol == "esp":
            key_len = 20 if self.encryption == "aes-gcm-16" else 16
            out["encryption"] = {"name": self.encryption, "key": os.urandom(key_len).hex(),
                                 "icv_bits": 128 if self.encryption == "aes-gcm-16" else 0}
        if self.integrity:
            n = {"hmac-sha256": 32, "hmac-sha384": 48, "hmac-sha512": 64}[self.integrity]
            out["integrity"] = {"name": self.integrity, "key": os.urandom(n).hex(), "truncation_bits": n * 4}
        return out


@dataclass
class Tunnel:
    lab: Lab
    a: Host
    b: Host
    dp_a: DataPlaneProcess
    dp_b: DataPlaneProcess
    sa_ab: dict[str, Any]  # A -> B, as installed on both sides
    sa_ba: dict[str, Any]
    veth_b: str
    mtu: int


def make_sites(lab: Lab) -> tuple[Host, Host, str]:
    a, b = lab.host("a"), lab.host("b")
    _, veth_b = lab.link(a, b, f"{UNDERLAY[0]}/24", f"{UNDERLAY[1]}/24")
    a.add_loopback_address(f"{INNER[0]}/32")
    b.add_loopback_address(f"{INNER[1]}/32")
    return a, b, veth_b


def build_tunnel(lab: Lab, suite: Suite, loop: str = "thread") -> Tunnel:
    a, b, veth_b = make_sites(lab)
    encap_port = 4500 if suite.encap else None
    dps = []
    mtu = 0
    for host in (a, b):
        dp = DataPlaneProcess(lab, host)
        mtu = dp.call("start", config={"tun_name": "ud0", "encap_port": encap_port, "loop": loop})["mtu"]
        dps.append(dp)
    transport = suite.mode == "transport"
    nets = tuple(f"{x}/32" for x in UNDERLAY) if transport else INNER_NET
    sas = []
    for i, spi in ((0, 0x1001), (1, 0x2002)):
        src, dst = UNDERLAY[i], UNDERLAY[1 - i]
        sa: dict[str, Any] = {
            "src": src, "dst": dst, "spi": spi, "protocol": suite.protocol, "mode": suite.mode,
            "reqid": 1, "esn": suite.esn, "replay_window": suite.replay_window, **suite.algorithms(),
        }
        if suite.encap:
            sa["encap"] = {"src_port": 4500, "dst_port": 4500}
        if transport:
            sa["selector"] = {"src": nets[i], "dst": nets[1 - i]}
        sas.append(sa)
    for i, dp in enumerate(dps):
        out_sa, in_sa = sas[i], sas[1 - i]
        dp.call("add_sa", sa={**out_sa, "direction": "out"})
        dp.call("add_sa", sa={**in_sa, "direction": "in"})
        tmpl = {"protocol": suite.protocol, "mode": suite.mode, "reqid": 1}
        if not transport:
            tmpl |= {"src": UNDERLAY[i], "dst": UNDERLAY[1 - i]}
        dp.call("policy", policy={"selector": {"src": nets[i], "dst": nets[1 - i]}, "direction": "out",
                                  "template": tmpl})
        dp.call("policy", policy={"selector": {"src": nets[1 - i], "dst": nets[i]}, "direction": "in",
                                  "template": tmpl})
    return Tunnel(lab, a, b, dps[0], dps[1], sas[0], sas[1], veth_b, mtu)


def sa_key(sa: dict[str, Any]) -> dict[str, Any]:
    return {"dst": sa["dst"], "spi": sa["spi"], "protocol": sa["protocol"]}


MARKER = b"MESHSEC-PLAINTEXT-MARKER-"

_SERVER = r"""
import hashlib, socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(1); s.settimeout(60)
print("listening", flush=True)
c, _ = s.accept(); c.settimeout(60); h = hashlib.sha256(); n = 0
while True:
    b = c.recv(65536)
    if not b: break
    h.update(b); n += len(b)
print(n, h.hexdigest(), flush=True)
"""

_CLIENT = r"""
import hashlib, os, socket, sys
marker = sys.argv[4].encode()
n = int(sys.argv[5])
data = (marker * (n // len(marker) // 2 + 1) + os.urandom(n))[:n]
c = socket.create_connection((sys.argv[2], int(sys.argv[3])), timeout=30, source_address=(sys.argv[1], 0))
c.sendall(data); c.shutdown(socket.SHUT_WR); c.recv(1); c.close()
print(len(data), hashlib.sha256(data).hexdigest(), flush=True)
"""


def tcp_transfer(lab: Lab, client: Host, server: Host, src: str, dst: str, size: int) -> tuple[str, str]:
    """Send `size` bytes (starting with MARKER) over TCP; returns (sent, received) 'len sha256'."""
    log = lab.workdir / f"tcp-server-{os.getpid()}-{size}.log"
    srv = server.popen([sys.executable, "-c", _SERVER, dst, "5001"], log=log)
    for _ in range(100):
        if log.exists() and "listening" in log.read_text():
            break
        subprocess.run(["sleep", "0.05"], check=True)
    sent = client.run([sys.executable, "-c", _CLIENT, src, dst, "5001", MARKER.decode(), str(size)],
                      timeout=90).stdout.strip()
    srv.wait(timeout=30)
    received = log.read_text().splitlines()[-1].strip()
    return sent, received


class Capture:
    """tcpdump on an interface into a pcap file, parsed in Python."""

    def __init__(self, lab: Lab, host: Host, ifname: str) -> None:
        n = len(list(lab.workdir.glob("cap-*.pcap")))
        self.path = lab.workdir / f"cap-{host.name}-{ifname}-{n}.pcap"
        log = lab.workdir / f"cap-{n}.log"
        argv = ["tcpdump", "-i", ifname, "-U", "--immediate-mode", "-n", "-w", str(self.path)]
        self.proc = host.popen(argv, log=log)
        for _ in range(200):  # tcpdump says "listening on" once its filter is attached
            if log.exists() and "listening on" in log.read_text():
                break
            subprocess.run(["sleep", "0.05"], check=True)
        else:
            raise RuntimeError(f"tcpdump did not start: {log.read_text() if log.exists() else ''}")

    def stop(self) -> list[bytes]:
        subprocess.run(["sleep", "0.3"], check=True)
        stop_process(self.proc)  # type: ignore[arg-type]
        return read_pcap(self.path.read_bytes())


def read_pcap(data: bytes) -> list[bytes]:
    import struct

    magic = struct.unpack("<I", data[:4])[0]
    if magic not in (0xA1B2C3D4, 0xA1B23C4D):
        raise ValueError(f"not a little-endian pcap file (magic {magic:#x})")
    linktype = struct.unpack("<I", data[20:24])[0]
    if linktype != 1:
        raise ValueError(f"expected Ethernet link type, got {linktype}")
    frames, off = [], 24
    while off + 16 <= len(data):
        incl = struct.unpack("<I", data[off + 8 : off + 12])[0]
        frames.append(data[off + 16 : off + 16 + incl])
        off += 16 + incl
    return frames


def classify(frame: bytes) -> str:
    """'esp', 'ah', 'udp4500', 'arp', 'ipv6-control', or a description of anything else."""
    ethertype = int.from_bytes(frame[12:14], "big")
    if ethertype == 0x0806:
        return "arp"
    if ethertype == 0x86DD:
        return "ipv6-control" if frame[20] in (58, 0) else f"ipv6-proto-{frame[20]}"
    if ethertype != 0x0800:
        return f"ethertype-{ethertype:#x}"
    ip = frame[14:]
    proto = ip[9]
    if proto == 50:
        return "esp"
    if proto == 51:
        return "ah"
    ihl = (ip[0] & 0x0F) * 4
    ports = (int.from_bytes(ip[ihl : ihl + 2], "big"), int.from_bytes(ip[ihl + 2 : ihl + 4], "big"))
    if proto == 17 and 4500 in ports:
        return "udp4500"
    return f"ipv4-proto-{proto}"


def ip_payload(frame: bytes) -> bytes:
    """The IPv4 payload of an Ethernet frame (for re-injecting captured ESP)."""
    ip = frame[14:]
    return ip[(ip[0] & 0x0F) * 4 : int.from_bytes(ip[2:4], "big")]


_INJECT = r"""
import socket, sys
data = bytes.fromhex(sys.argv[3])
if sys.argv[1] == "esp":
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 50); s.sendto(data, (sys.argv[2], 0))
else:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.sendto(data, (sys.argv[2], 4500))
"""


def inject(host: Host, kind: str, dst: str, data: bytes) -> None:
    """Send `data` as raw ESP (kind 'esp') or as a UDP datagram to port 4500 (kind 'udp')."""
    host.run([sys.executable, "-c", _INJECT, kind, dst, data.hex()])


def ping_ok(host: Host, dst: str, src: str, count: int = 3) -> bool:
    """All `count` echo replies arrive within 10 s. `-w` (a deadline) rather than the harness's
    `-W`: after a first reply, `-W` waits only two RTTs for the rest, which a loaded CI machine
    exceeds now and then."""
    from tests.harness.netns import parse_ping

    argv = ["ping", "-n", "-q", "-c", str(count), "-i", "0.05", "-w", "10", "-I", src, dst]
    result = parse_ping(host.run(argv, check=False, timeout=20).stdout)
    return result.ok
