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
