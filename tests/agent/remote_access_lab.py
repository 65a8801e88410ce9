"""Controller-managed remote-access gateways for the agent's netns tests: a MeshLab (controller
and node agents as real processes), a RemoteAccessPool its gateway Nodes serve, strongSwan 5.9.8
road warriors configured with the swanctl.conf `meshctl remote-access profile` renders, and
optionally the NAT box of tests/interop/remote_access.py with a LAN of clients behind it.

    rw0..rwN (198.18.73.10+i) -- rwlan -- nat 198.18.0.70 (masquerade) -- sw -- n1 198.18.0.1
                                                                                 | 198.19.1.2/24
                                                                                srv 198.19.1.10
"""

from __future__ import annotations

import contextlib
import io
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshsec.meshctl.cli import main as meshctl_main
from tests.agent.meshlab import BIN, MeshLab, resource
from tests.harness.netns import Host, Switch
from tests.harness.strongswan import DEFAULT_PLUGINS, EAP_PLUGINS, Charon, CharonFactory, CharonSettings

CONNECTION = "meshsec-staff"
POOL_RANGE = "198.19.61.0/24"
SRV = "198.19.1.10"  # behind gateway n1, in the pool's split route
POOL = {"addresses": [POOL_RANGE], "dns": ["198.19.1.53"],
        "routes": {"mode": "split", "prefixes": ["198.19.1.0/24", "198.19.2.0/24"]},
        "gateways": {"matchLabels": {"role": "gateway"}}, "auth": {"methods": ["certificate"]}}  # fmt: skip
NAT_OUTER, RWLAN_GW = "198.18.0.70", "198.18.73.1"


def user(name: str, devices: Sequence[str] = ("laptop",)) -> dict[str, Any]:
    return {"identity": f"{name}@example.test", "pool": "staff", "auth": {"method": "certificate"},
            "devices": [{"name": d, "platform": "linux"} for d in devices]}  # fmt: skip


def meshctl(ml: MeshLab, *args: str) -> str:
    """The real CLI as a process (what an operator types)."""
    done = subprocess.run([str(BIN / "meshctl"), "--controller", f"unix:{ml.admin_socket}", *args],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def eap_user_alice(ml: MeshLab, pool: dict[str, Any], password: str) -> None:
    """Pool staff for EAP-MSCHAPv2 and its user alice (a Linux laptop), her password set with
    `meshctl remote-access set-password` from a file, as an operator does."""
    eap_pool = {**pool, "auth": {"methods": ["eap-mschapv2"]}}
    alice = {"identity": "alice@example.test", "pool": "staff", "auth": {"method": "eap-mschapv2"},
             "devices": [{"name": "laptop", "platform": "linux"}]}  # fmt: skip
    ml.apply(resource("RemoteAccessPool", "staff", eap_pool), resource("RemoteAccessUser", "alice", alice))
    password_file = ml.work / "alice.txt"
    password_file.write_text(password + "\n")
    meshctl(ml, "remote-access", "set-password", "alice", "--password-file", str(password_file))


def profile(ml: MeshLab, user_name: str, device: str, gateway: str) -> Path:
    """`meshctl remote-access profile USER DEVICE --out DIR` for a Linux device dialling node
    `gateway` (n<N> at 198.18.0.N, IKE identity its name), run in this process: twenty of them
    would otherwise cost twenty interpreter starts on a small machine."""
    out = ml.work / f"profile-{user_name}-{device}-{gateway}"
    argv = ["--controller", f"unix:{ml.admin_socket}", "remote-access", "profile", user_name, device,
            "--out", str(out), "--server", f"198.18.0.{gateway[1:]}", "--server-id", gateway]  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        code = meshctl_main(argv)
    assert code == 0, printed.getvalue()
    return out


@dataclass
class RoadWarriors:
    ml: MeshLab
    charons: CharonFactory
    rwlan: Switch | None = None
    hosts: list[Host] = field(default_factory=list)

    def behind_nat(self) -> None:
        """The NAT box: clients' IKE and ESP leave with NAT_OUTER, each from its own port."""
        lab = self.ml.lab
        nat = lab.router("nat")
        self.ml.sw.attach(nat, f"{NAT_OUTER}/24", ifname="outside")
        self.rwlan = lab.switch("rwlan")
        self.rwlan.attach(nat, f"{RWLAN_GW}/24", ifname="inside")
        nat.masquerade("outside")

    def host(self) -> Host:
        i = len(self.hosts)
        host = self.ml.lab.host(f"rw{i}")
        if self.rwlan is not None:
            self.rwlan.attach(host, f"198.18.73.{10 + i}/24")
            host.add_route("default", via=RWLAN_GW)
        else:
            self.ml.sw.attach(host, f"198.18.0.{100 + i}/24")
        self.hosts.append(host)
        return host

    def start(self, files: Path, eap: bool = False) -> Charon:
        """A charon on a new host with the profile directory loaded (not connected yet); `eap`:
        with the EAP plugins (a password profile)."""
        settings = CharonSettings(plugins=(*DEFAULT_PLUGINS, *EAP_PLUGINS) if eap else DEFAULT_PLUGINS)
        charon = self.charons.start(self.host(), [], settings)
        for path in files.rglob("*"):
            if path.is_file():
                target = charon.swanctl_dir / path.relative_to(files)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(path.read_bytes())
                target.chmod(path.stat().st_mode & 0o777)
        charon.swanctl("--load-all", "--noprompt")
        return charon


def client_sa(charon: Charon) -> dict[str, Any] | None:
    """The client's ESTABLISHED IKE SA with a CHILD_SA, or None."""
    for entry in charon.list_sas_raw():
        sa = entry.get(CONNECTION)
        if isinstance(sa, dict) and sa.get("state") == "ESTABLISHED" and sa.get("child-sas"):
            return sa
    return None


def server_behind(host: Host) -> None:
    """MeshLab.add_node's before_agent hook for n1: a server on a LAN behind the gateway, which
    forwards between its clients' TUN routes and that LAN."""
    srv = host.lab.host("srv")
    host.lab.link(host, srv, "198.19.1.2/24", f"{SRV}/24", a_ifname="lan", b_ifname="eth0")
    srv.add_route("default", via="198.19.1.2")
    host.enable_forwarding()
    host.sysctl("net.ipv4.conf.default.rp_filter", "0")  # the TUN the agent makes later
