"""The external gateway: a strongSwan charon in its own namespace, configured as the mirror image
of the tunnels the controller computed towards the ExternalGateway resource.

charon runs with its own strongswan.conf (no /etc), kernel-libipsec as its data plane (the kernel
here has no ESP), its own vici socket and a file log, as in /work/shared/notes/strongswan-peer.md.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from meshsec.common.secrets import Secret
from meshsec.meshctl.lab import netns
from meshsec.meshctl.lab.preflight import find

PLUGINS = (
    "random nonce openssl pem pkcs1 pkcs8 x509 pubkey revocation constraints curve25519 aes gcm sha1 sha2 "
    "hmac kdf kernel-libipsec kernel-netlink socket-default vici updown"
)


@dataclass(frozen=True)
class PeerTunnel:
    """One tunnel seen from the external gateway's side."""

    name: str
    local_addr: str
    remote_addr: str  # "%any" when the node is behind NAT and initiates
    local_id: str
    remote_id: str
    ike_proposals: tuple[str, ...]
    esp_proposals: tuple[str, ...]
    local_ts: tuple[str, ...]
    remote_ts: tuple[str, ...]
    initiate: bool  # the gateway starts it (the node waits)
    rekey_seconds: int
    child_rekey_seconds: int


def _list(values: Sequence[str]) -> str:
    return ",".join(values)


def _conf(tree: Mapping[str, object], indent: int = 0) -> list[str]:
    """strongswan.conf / swanctl.conf syntax: nested ``key { ... }`` sections and ``key = value``."""
    pad = "  " * indent
    lines: list[str] = []
    for key, value in tree.items():
        if isinstance(value, Mapping):
            lines += [f"{pad}{key} {{", *_conf(value, indent + 1), f"{pad}}}"]
        else:
            lines.append(f"{pad}{key} = {value}")
    return lines


def swanctl_conf(tunnels: Sequence[PeerTunnel], psk: Secret) -> str:
    connections: dict[str, object] = {}
    secrets: dict[str, object] = {}
    for t in tunnels:
        child: dict[str, object] = {"local_ts": _list(t.local_ts), "remote_ts": _list(t.remote_ts)}
        if t.esp_proposals:
            child["esp_proposals"] = _list(t.esp_proposals)
        child |= {
            "rekey_time": f"{t.child_rekey_seconds}s",
            "start_action": "start" if t.initiate else "none",
            "dpd_action": "restart",
        }
        connections[t.name] = {
            "version": 2,
            "local_addrs": t.local_addr,
            "remote_addrs": t.remote_addr,
            "proposals": _list(t.ike_proposals) or "default",
            "rekey_time": f"{t.rekey_seconds}s",
            "keyingtries": 0,
            "unique": "replace",
            "local": {"auth": "psk", "id": f'"{t.local_id}"'},
            "remote": {"auth": "psk", "id": f'"{t.remote_id}"'},
            "children": {"net": child},
        }
        # Hex keeps any byte value clear of the config parser's quoting rules.
        secrets[f"ike-{t.name}"] = {
            "id-local": f'"{t.local_id}"',
            "id-remote": f'"{t.remote_id}"',
            "secret": "0x" + psk.reveal().hex(),
        }
    return "\n".join(_conf({"connections": connections, "secrets": secrets})) + "\n"


def strongswan_conf(vici: Path, log: Path) -> str:
    filelog = {
        "path": str(log),
        "time_format": "%H:%M:%S",
        "ike_name": "yes",
        "append": "no",
        "flush_line": "yes",
        "default": 1,
        "ike": 2,
        "cfg": 1,
    }
    tree = {
        "charon": {
            "load_modular": "no",
            "load": PLUGINS,
            "retransmit_tries": 3,
            "retransmit_timeout": "2.0",
            "plugins": {"vici": {"socket": f"unix://{vici}"}},
            "filelog": {"lab": filelog},
            "syslog": {"daemon": {"default": -1}},
        },
        "charon-systemd": {"journal": {"default": -1}},
        "swanctl": {"socket": f"unix://{vici}"},
    }
    return "\n".join(_conf(tree)) + "\n"


class Charon:
    """Files and commands of the lab's one charon; the process itself is tracked in the LabState."""

    def __init__(self, ns: str, workdir: Path, run_dir: Path, name: str = "extdc") -> None:
        self.ns = ns
        self.workdir = workdir
        self.conf = workdir / "strongswan.conf"
        self.swanctl_dir = workdir / "swanctl"
        self.vici = run_dir / f"{name}.vici"
        self.log = workdir / "charon.log"

    @property
    def env(self) -> dict[str, str]:
        return {"STRONGSWAN_CONF": str(self.conf), "SWANCTL_DIR": str(self.swanctl_dir)}

    def write(self, tunnels: Sequence[PeerTunnel], psk: Secret) -> None:
        self.write_settings()
        conf = self.swanctl_dir / "swanctl.conf"
        conf.touch(mode=0o600)
        os.chmod(conf, 0o600)  # it holds the PSK
        conf.write_text(swanctl_conf(tunnels, psk))

    def write_settings(self) -> None:
        """strongswan.conf and the swanctl folders (a road warrior's profile goes into them)."""
        for sub in ("conf.d", "x509", "x509ca", "private"):
            (self.swanctl_dir / sub).mkdir(parents=True, exist_ok=True)
        self.conf.write_text(strongswan_conf(self.vici, self.log))

    def start(self, timeout: float = 10.0) -> int:
        charon = find("charon-systemd")
        assert charon is not None
        self.vici.unlink(missing_ok=True)
        pid = netns.popen(self.ns, [charon], self.workdir / "charon.stdout", env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.vici.exists():
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                    try:
                        sock.connect(str(self.vici))
                        return pid
                    except OSError:
                        pass
            if not netns.alive(pid):
                break
            time.sleep(0.1)
        raise RuntimeError(f"charon in {self.ns} opened no vici socket in {timeout:.0f}s; log: {self.log}")

    def load(self) -> None:
        self.swanctl("--load-all", "--noprompt")

    def swanctl(self, *args: str, timeout: float = 30.0) -> str:
        swanctl = find("swanctl")
        assert swanctl is not None
        env = {**os.environ, **self.env}
        proc = subprocess.run(
            [swanctl, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"swanctl {args[0]} failed: {proc.stdout.strip()} {proc.stderr.strip()}")
        return proc.stdout
