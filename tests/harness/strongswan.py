"""strongSwan charon as a real IKEv2 peer inside a lab host (kernel-libipsec data plane).

Usage (with the ``lab`` and ``charons`` fixtures from tests/conftest.py)::

    from meshsec.common.secrets import Secret
    from tests.harness.strongswan import Child, Connection, Psk

    conn = Connection(
        name="peer", local_addrs=("198.18.1.1",), remote_addrs=("198.18.1.2",),
        local_id="a.test", remote_id="b.test", auth=Psk(Secret("...")),
        children=(Child("net", local_ts=("198.19.0.1/32",), remote_ts=("198.19.0.2/32",)),),
    )
    sw = charons.start(host, [conn])                # writes configs, starts charon, --load-all
    sw.initiate("peer", "net", timeout=10)          # raises SwanctlError on failure
    ike = sw.list_sas()[0]                          # IkeSa(state="ESTABLISHED", children=[...])
    print(sw.log_path)                              # charon's own log for debugging
    sw.connections = [...]; sw.load_all()           # rewrite swanctl.conf and reload it

``CertAuth(cert, key, ca)`` instead of ``Psk`` authenticates with certificates (PEM files),
``EapAuth`` as a road warrior with EAP-MSCHAPv2 or EAP-TLS (add ``EAP_PLUGINS`` to the plugins);
``CharonSettings`` sets dos_protection, retransmits, ports, log levels and any other ``charon.*``
option (``extra``); ``list_sas_raw()`` returns the vici messages as plain dicts.

Each instance gets its own strongswan.conf (``load_modular = no``, an explicit plugin list with
kernel-libipsec before kernel-netlink, its own vici socket, a filelog, journal off) and its own
SWANCTL_DIR; nothing under /etc is read.  charon-systemd runs as ``setsid ip netns exec NS
charon-systemd`` and is stopped by PID (SIGTERM, then SIGKILL).  libipsec forces NAT-T, so
IKE_AUTH and ESP use UDP 4500, and a CHILD_SA only installs if the host owns an address inside
its local traffic selector (put inner /32s on ``lo``).

``charons.start(host, [conn], root=pq_root())`` runs strongSwan 6.1 (ML-KEM, IKE_INTERMEDIATE,
RFC 9370 ``ke1_mlkem768`` proposals) from the Debian unstable chroot that
scripts/strongswan-pq-peer.sh builds: its configs, vici socket and log live under the chroot's
/run, charon and swanctl run through ``chroot``, and proc and /dev are mounted into the chroot
while any instance of it runs (libipsec needs /dev/net/tun).
"""

from __future__ import annotations

import functools
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeAlias, TypeVar

from meshsec.common.secrets import Secret
from tests.harness.netns import CommandError, Host, Lab, run, stop_process

CHARON = "/usr/sbin/charon-systemd"
SWANCTL = "/usr/sbin/swanctl"
PQ_PEER_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "strongswan-pq-peer.sh"

DEFAULT_PLUGINS = (
    "random", "nonce", "openssl", "pem", "pkcs1", "pkcs8", "x509", "pubkey", "revocation",
    "constraints", "curve25519", "aes", "gcm", "sha1", "sha2", "hmac", "kdf",
    "kernel-libipsec", "kernel-netlink", "socket-default", "vici", "updown",
)  # fmt: skip

# What a road warrior with EAP needs besides DEFAULT_PLUGINS (MD4 and DES for MSCHAPv2 come
# from the openssl plugin's legacy provider).
EAP_PLUGINS = ("eap-identity", "eap-mschapv2", "eap-tls")

ConfValue: TypeAlias = "str | int | bool | Sequence[str] | ConfTree"
ConfTree: TypeAlias = Mapping[str, ConfValue]

_BARE = re.compile(r"^[A-Za-z0-9_.:/@%*+-]+$")
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


class SwanctlError(CommandError):
    """``swanctl`` failed; the message carries its output and the path of charon's log."""


# -- typed configuration -------------------------------------------------------------------------


@dataclass(frozen=True)
class Psk:
    secret: Secret


@dataclass(frozen=True)
class CertAuth:
    """Public-key authentication: our certificate and key, and the CA that signed the peer's."""

    cert: Path
    key: Path
    ca: Path


@dataclass(frozen=True)
class EapAuth:
    """A road warrior: EAP-MSCHAPv2 (`password`) or EAP-TLS (`cert`, `key`) as EAP identity
    `identity`, to a gateway whose certificate chains to `ca`."""

    method: Literal["eap-mschapv2", "eap-tls"]
    identity: str
    ca: Path
    password: Secret | None = None
    cert: Path | None = None
    key: Path | None = None


@dataclass(frozen=True)
class EapGatewayAuth:
    """A gateway: our certificate (`cert`, `key`), the peer's EAP-MSCHAPv2 checked against
    `users` (EAP identity -> password); `ca` is what the peer's certificate would chain to."""

    cert: Path
    key: Path
    ca: Path
    users: Mapping[str, Secret]


@dataclass(frozen=True)
class Child:
    name: str
    local_ts: tuple[str, ...]
    remote_ts: tuple[str, ...]
    esp_proposals: tuple[str, ...] = ("aes256gcm16",)
    mode: Literal["tunnel", "transport"] = "tunnel"
    start_action: Literal["none", "trap", "start"] = "none"
    close_action: Literal["none", "trap", "start"] = "none"
    dpd_action: Literal["clear", "trap", "restart"] = "clear"
    rekey_time: str | None = None
    life_time: str | None = None
    rand_time: str | None = None
    rekey_bytes: int | None = None
    rekey_packets: int | None = None
    extra: Mapping[str, ConfValue] = field(default_factory=dict)


@dataclass(frozen=True)
class Connection:
    name: str
    local_addrs: tuple[str, ...]
    remote_addrs: tuple[str, ...]
    local_id: str
    remote_id: str
    auth: Psk | CertAuth | EapAuth | EapGatewayAuth
    children: tuple[Child, ...]
    proposals: tuple[str, ...] = ("aes256gcm16-prfsha256-x25519",)
    local_port: int = 500
    remote_port: int = 500
    rekey_time: str | None = None
    reauth_time: str | None = None
    over_time: str | None = None
    rand_time: str | None = None
    dpd_delay: str | None = None
    dpd_timeout: str | None = None
    mobike: bool = False
    encap: bool = False
    unique: Literal["no", "never", "keep", "replace"] = "no"
    keyingtries: int = 1
    extra: Mapping[str, ConfValue] = field(default_factory=dict)


@dataclass(frozen=True)
class CharonSettings:
    """The strongswan.conf knobs tests care about; ``extra`` is merged into the ``charon`` section."""

    plugins: tuple[str, ...] = DEFAULT_PLUGINS
    dos_protection: bool = True
    retransmit_tries: int = 5
    retransmit_timeout: float = 4.0
    retransmit_base: float = 1.8
    retransmit_jitter: int = 0
    ikesa_table_size: int | None = None
    init_limit_half_open: int = 0
    cookie_threshold: int = 10
    block_threshold: int = 5
    port: int = 500
    port_nat_t: int = 4500
    log_levels: Mapping[str, int] = field(
        default_factory=lambda: {"default": 1, "ike": 2, "cfg": 2, "knl": 2, "net": 1, "esp": 1}
    )
    extra: Mapping[str, ConfValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        plugins = self.plugins
        if (
            "kernel-libipsec" in plugins
            and "kernel-netlink" in plugins
            and plugins.index("kernel-libipsec") > plugins.index("kernel-netlink")
        ):
            # Only the first IPsec backend is used, and the kernel here has no ESP at all.
            raise ValueError("CharonSettings.plugins: kernel-libipsec must come before kernel-netlink")


# -- strongSwan's config syntax ------------------------------------------------------------------


def _scalar(value: str | int | bool) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    text = str(value)
    if _BARE.match(text):
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def render_conf(tree: ConfTree, indent: int = 0) -> str:
    """Render nested mappings in strongswan.conf/swanctl.conf syntax; lists become ``a,b``."""
    pad = "  " * indent
    lines: list[str] = []
    for key, value in tree.items():
        if not re.match(r"^[A-Za-z0-9_.*-]+$", key):
            raise ValueError(f"config key {key!r} has characters strongSwan does not accept")
        if isinstance(value, Mapping):
            lines.append(f"{pad}{key} {{")
            lines.append(render_conf(value, indent + 1).rstrip("\n"))
            lines.append(f"{pad}}}")
        elif isinstance(value, (str, int, bool)):
            lines.append(f"{pad}{key} = {_scalar(value)}")
        else:
            lines.append(f"{pad}{key} = {','.join(_scalar(v) for v in value)}")
    return "\n".join(line for line in lines if line) + "\n"


def _opt(**values: str | int | None) -> dict[str, ConfValue]:
    return {k: v for k, v in values.items() if v is not None}


def strongswan_conf(settings: CharonSettings, vici_socket: Path, log_path: Path) -> str:
    charon: dict[str, ConfValue] = {
        "load_modular": False,
        "load": " ".join(settings.plugins),
        "port": settings.port,
        "port_nat_t": settings.port_nat_t,
        "dos_protection": settings.dos_protection,
        "retransmit_tries": settings.retransmit_tries,
        "retransmit_timeout": str(settings.retransmit_timeout),
        "retransmit_base": str(settings.retransmit_base),
        "retransmit_jitter": settings.retransmit_jitter,
        "init_limit_half_open": settings.init_limit_half_open,
        "cookie_threshold": settings.cookie_threshold,
        "block_threshold": settings.block_threshold,
        **_opt(ikesa_table_size=settings.ikesa_table_size),
        "plugins": {"vici": {"socket": f"unix://{vici_socket}"}},
        "filelog": {
            "testlog": {
                "path": str(log_path),
                "time_format": "%H:%M:%S",
                "ike_name": True,
                "append": False,
                "flush_line": True,
                **settings.log_levels,
            }
        },
        "syslog": {"daemon": {"default": -1}, "auth": {"default": -1}},
    }
    _merge(charon, settings.extra)
    tree: dict[str, ConfValue] = {
        "charon": charon,
        "charon-systemd": {"journal": {"default": -1}},
        "swanctl": {"socket": f"unix://{vici_socket}"},
    }
    return render_conf(tree)


def _merge(into: dict[str, ConfValue], extra: Mapping[str, ConfValue]) -> None:
    """Merge dotted keys (``"plugins.kernel-libipsec.allow_peer_ts": True``) into a tree."""
    for dotted, value in extra.items():
        *parents, leaf = dotted.split(".")
        node = into
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"extra setting {dotted!r} clashes with the scalar {part!r}")
            node = child
        node[leaf] = value


def _check_name(kind: str, name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"{kind} name {name!r} must be [A-Za-z0-9_-]+")
    return name


def swanctl_conf(connections: Sequence[Connection]) -> str:
    conns: dict[str, ConfValue] = {}
    secrets: dict[str, ConfValue] = {}
    for conn in connections:
        _check_name("connection", conn.name)
        if not conn.children:
            raise ValueError(f"connection {conn.name!r} has no children")
        children: dict[str, ConfValue] = {}
        for child in conn.children:
            body: dict[str, ConfValue] = {
                "local_ts": list(child.local_ts),
                "remote_ts": list(child.remote_ts),
                "esp_proposals": list(child.esp_proposals),
                "mode": child.mode,
                "start_action": child.start_action,
                "close_action": child.close_action,
                "dpd_action": child.dpd_action,
                **_opt(
                    rekey_time=child.rekey_time,
                    life_time=child.life_time,
                    rand_time=child.rand_time,
                    rekey_bytes=child.rekey_bytes,
                    rekey_packets=child.rekey_packets,
                ),
            }
            _merge(body, child.extra)
            children[_check_name("child", child.name)] = body
        local: dict[str, ConfValue] = {"id": conn.local_id}
        remote: dict[str, ConfValue] = {"id": conn.remote_id}
        if isinstance(conn.auth, Psk):
            local["auth"] = remote["auth"] = "psk"
            secrets[f"ike-{conn.name}"] = {
                "id-local": conn.local_id,
                "id-remote": conn.remote_id,
                # Hex keeps any byte value out of the config parser's quoting rules.
                "secret": "0x" + conn.auth.secret.reveal().hex(),
            }
        elif isinstance(conn.auth, EapGatewayAuth):
            local["auth"], remote["auth"] = "pubkey", "eap-mschapv2"
            local["certs"] = f"{conn.name}.pem"
            remote["eap_id"] = "%any"
            for i, (identity, password) in enumerate(sorted(conn.auth.users.items())):
                secrets[f"eap-{conn.name}-{i}"] = {"id": identity, "secret": "0x" + password.reveal().hex()}
        elif isinstance(conn.auth, EapAuth):
            local["auth"], remote["auth"] = conn.auth.method, "pubkey"
            local["eap_id"] = conn.auth.identity
            if conn.auth.cert is not None:
                local["certs"] = f"{conn.name}.pem"
            if conn.auth.password is not None:
                secrets[f"eap-{conn.name}"] = {
                    "id": conn.auth.identity,
                    "secret": "0x" + conn.auth.password.reveal().hex(),
                }
        else:
            local["auth"] = remote["auth"] = "pubkey"
            local["certs"] = f"{conn.name}.pem"
        body_conn: dict[str, ConfValue] = {
            "version": 2,
            "local_addrs": list(conn.local_addrs),
            "remote_addrs": list(conn.remote_addrs),
            "local_port": conn.local_port,
            "remote_port": conn.remote_port,
            "proposals": list(conn.proposals),
            "mobike": conn.mobike,
            "encap": conn.encap,
            "unique": conn.unique,
            "keyingtries": conn.keyingtries,
            **_opt(
                rekey_time=conn.rekey_time,
                reauth_time=conn.reauth_time,
                over_time=conn.over_time,
                rand_time=conn.rand_time,
                dpd_delay=conn.dpd_delay,
                dpd_timeout=conn.dpd_timeout,
            ),
            "local": local,
            "remote": remote,
            "children": children,
        }
        _merge(body_conn, conn.extra)
        conns[conn.name] = body_conn
    return render_conf({"connections": conns, "secrets": secrets})


# -- parsing `swanctl --pretty` ------------------------------------------------------------------

ViciValue: TypeAlias = "str | list[str] | ViciTree"
ViciTree: TypeAlias = dict[str, ViciValue]

_PRETTY_KV = re.compile(r"^(\S+) = ?(.*)$")
_PRETTY_SECTION = re.compile(r"^(\S+) \{$")


def parse_pretty(text: str) -> list[ViciTree]:
    """Parse ``swanctl --pretty`` output into one dict per vici message.

    ``--pretty`` puts every key, value, list item and brace on a line of its own, so values with
    spaces, '=' or braces (identities such as ``C=CH, O=x y, CN=a``) stay unambiguous, which the
    single-line ``--raw`` form cannot guarantee.
    """
    messages: list[ViciTree] = []
    stack: list[ViciTree] = []
    list_key: str | None = None
    for lineno, raw_line in enumerate(text.splitlines(), 1):
        line = raw_line.strip()
        if not line:
            continue
        if list_key is not None:
            if line == "]":
                list_key = None
            else:
                items = stack[-1][list_key]
                assert isinstance(items, list)
                items.append(line)
            continue
        if not stack:
            # A message header such as "list-sa event {" or "list-sas reply {".
            if not line.endswith("{"):
                raise ValueError(f"line {lineno}: expected a vici message header, got {line!r}")
            message: ViciTree = {}
            messages.append(message)
            stack.append(message)
            continue
        if line == "}":
            stack.pop()
            continue
        kv = _PRETTY_KV.match(line)
        if kv is not None:
            key, value = kv.groups()
            if value == "[":
                stack[-1][key] = []
                list_key = key
            else:
                stack[-1][key] = value
            continue
        section = _PRETTY_SECTION.match(line)
        if section is None:
            raise ValueError(f"line {lineno}: cannot parse {line!r}")
        child: ViciTree = {}
        stack[-1][section.group(1)] = child
        stack.append(child)
    if stack or list_key is not None:
        raise ValueError("truncated swanctl --pretty output (unbalanced braces or brackets)")
    return messages


@dataclass(frozen=True)
class ChildSa:
    name: str
    uniqueid: str
    reqid: str
    state: str
    mode: str
    protocol: str
    encap: bool
    spi_in: str
    spi_out: str
    encr_alg: str
    encr_keysize: int | None
    integ_alg: str | None
    dh_group: str | None
    bytes_in: int
    packets_in: int
    bytes_out: int
    packets_out: int
    local_ts: tuple[str, ...]
    remote_ts: tuple[str, ...]
    raw: ViciTree


@dataclass(frozen=True)
class IkeSa:
    name: str
    uniqueid: str
    state: str
    initiator: bool
    local_host: str
    local_port: int
    local_id: str
    remote_host: str
    remote_port: int
    remote_id: str
    initiator_spi: str
    responder_spi: str
    encr_alg: str
    encr_keysize: int | None
    integ_alg: str | None
    prf_alg: str
    dh_group: str
    additional_ke: tuple[str, ...]  # strongSwan 6: "ake1".."ake7", e.g. ("ML_KEM_768",)
    nat_local: bool
    nat_remote: bool
    children: tuple[ChildSa, ...]
    raw: ViciTree

    def child(self, name: str) -> ChildSa | None:
        return next((c for c in self.children if c.name == name), None)


T = TypeVar("T")


def _s(tree: ViciTree, key: str, default: str = "") -> str:
    value = tree.get(key, default)
    return value if isinstance(value, str) else default


def _opt_s(tree: ViciTree, key: str) -> str | None:
    value = tree.get(key)
    return value if isinstance(value, str) else None


def _i(tree: ViciTree, key: str) -> int:
    return int(_s(tree, key, "0") or "0")


def _opt_i(tree: ViciTree, key: str) -> int | None:
    value = _opt_s(tree, key)
    return int(value) if value else None


def _l(tree: ViciTree, key: str) -> tuple[str, ...]:
    value = tree.get(key)
    return tuple(value) if isinstance(value, list) else ()


def _sub(tree: ViciTree, key: str) -> ViciTree:
    value = tree.get(key)
    return value if isinstance(value, dict) else {}


def child_sa_from_raw(raw: ViciTree) -> ChildSa:
    return ChildSa(
        name=_s(raw, "name"),
        uniqueid=_s(raw, "uniqueid"),
        reqid=_s(raw, "reqid"),
        state=_s(raw, "state"),
        mode=_s(raw, "mode"),
        protocol=_s(raw, "protocol"),
        encap=_s(raw, "encap") == "yes",
        spi_in=_s(raw, "spi-in"),
        spi_out=_s(raw, "spi-out"),
        encr_alg=_s(raw, "encr-alg"),
        encr_keysize=_opt_i(raw, "encr-keysize"),
        integ_alg=_opt_s(raw, "integ-alg"),
        dh_group=_opt_s(raw, "dh-group"),
        bytes_in=_i(raw, "bytes-in"),
        packets_in=_i(raw, "packets-in"),
        bytes_out=_i(raw, "bytes-out"),
        packets_out=_i(raw, "packets-out"),
        local_ts=_l(raw, "local-ts"),
        remote_ts=_l(raw, "remote-ts"),
        raw=raw,
    )


def ike_sa_from_raw(name: str, raw: ViciTree) -> IkeSa:
    return IkeSa(
        name=name,
        uniqueid=_s(raw, "uniqueid"),
        state=_s(raw, "state"),
        initiator=_s(raw, "initiator") == "yes",
        local_host=_s(raw, "local-host"),
        local_port=_i(raw, "local-port"),
        local_id=_s(raw, "local-id"),
        remote_host=_s(raw, "remote-host"),
        remote_port=_i(raw, "remote-port"),
        remote_id=_s(raw, "remote-id"),
        initiator_spi=_s(raw, "initiator-spi"),
        responder_spi=_s(raw, "responder-spi"),
        encr_alg=_s(raw, "encr-alg"),
        encr_keysize=_opt_i(raw, "encr-keysize"),
        integ_alg=_opt_s(raw, "integ-alg"),
        prf_alg=_s(raw, "prf-alg"),
        dh_group=_s(raw, "dh-group"),
        additional_ke=tuple(_s(raw, f"ake{n}") for n in range(1, 8) if _opt_s(raw, f"ake{n}")),
        nat_local=_s(raw, "nat-local") == "yes",
        nat_remote=_s(raw, "nat-remote") == "yes",
        children=tuple(child_sa_from_raw(c) for c in _sub(raw, "child-sas").values() if isinstance(c, dict)),
        raw=raw,
    )


def parse_list_sas(text: str) -> list[IkeSa]:
    """``swanctl --list-sas --pretty`` output -> one IkeSa per IKE_SA (each event names one)."""
    sas: list[IkeSa] = []
    for message in parse_pretty(text):
        for name, body in message.items():
            if isinstance(body, dict):
                sas.append(ike_sa_from_raw(name, body))
    return sas


# -- the strongSwan 6.1 chroot -------------------------------------------------------------------


@functools.cache
def pq_root() -> Path | None:
    """The built strongSwan 6.1 chroot, or None if scripts/install.sh has not built it."""
    found = subprocess.run(
        ["bash", str(PQ_PEER_SCRIPT), "--root"], capture_output=True, text=True, check=False
    )
    return Path(found.stdout.strip()) if found.returncode == 0 else None


_chroot_users: dict[Path, int] = {}


def _enter_chroot(root: Path) -> None:
    """Mounts proc and /dev into `root` for its first running charon."""
    if _chroot_users.get(root, 0) == 0:
        run(["mount", "-t", "proc", "proc", str(root / "proc")])
        try:
            run(["mount", "--bind", "/dev", str(root / "dev")])
        except CommandError:
            run(["umount", str(root / "proc")])
            raise
    _chroot_users[root] = _chroot_users.get(root, 0) + 1


def _leave_chroot(root: Path) -> None:
    _chroot_users[root] -= 1
    if _chroot_users[root] == 0:
        run(["umount", str(root / "dev")])
        run(["umount", str(root / "proc")])


# -- a running instance --------------------------------------------------------------------------


class Charon:
    """One charon-systemd in one lab host, configured entirely from files in ``confdir``."""

    def __init__(
        self,
        host: Host,
        connections: Sequence[Connection],
        settings: CharonSettings | None = None,
        confdir: Path | None = None,
        root: Path | None = None,
    ) -> None:
        self.host = host
        self.connections = list(connections)
        self.settings = settings or CharonSettings()
        self.root = root  # a chroot holding another strongSwan (see pq_root), or the host's own
        if root is not None:
            # Everything charon reads or writes must be inside the chroot.
            confdir = confdir or Path(
                tempfile.mkdtemp(prefix=f"{host.lab.run_prefix}{host.name}-", dir=root / "run")
            )
        self.confdir = confdir or host.lab.workdir / f"strongswan-{host.name}"
        self.swanctl_dir = self.confdir / "swanctl"
        self.conf_path = self.confdir / "strongswan.conf"
        self.log_path = self.confdir / "charon.log"
        # AF_UNIX paths are limited to 108 bytes and test tmp dirs can be long: keep the socket short.
        self._sockdir = Path(
            tempfile.mkdtemp(prefix=f"{host.lab.run_prefix}vici-", dir=None if root is None else root / "run")
        )
        self.vici_socket = self._sockdir / "charon.vici"
        self.proc: subprocess.Popen[bytes] | None = None
        self._in_chroot = False
        host.lab.on_close(self.stop)  # the lab has killed charon by then; this removes the socket dir

    def __repr__(self) -> str:
        return f"Charon({self.host.name!r}, pid={self.pid})"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def _seen(self, path: Path) -> Path:
        """`path` as charon and swanctl see it (inside the chroot, if any)."""
        return path if self.root is None else Path("/") / path.relative_to(self.root)

    def _argv(self, program: str, *args: str) -> list[str]:
        return [program, *args] if self.root is None else ["chroot", str(self.root), program, *args]

    @property
    def env(self) -> dict[str, str]:
        return {
            "STRONGSWAN_CONF": str(self._seen(self.conf_path)),
            "SWANCTL_DIR": str(self._seen(self.swanctl_dir)),
        }

    def write_config(self) -> None:
        for sub in ("x509", "x509ca", "private"):
            (self.swanctl_dir / sub).mkdir(parents=True, exist_ok=True)
        self.conf_path.write_text(
            strongswan_conf(self.settings, self._seen(self.vici_socket), self._seen(self.log_path))
        )
        for conn in self.connections:
            if isinstance(conn.auth, CertAuth | EapGatewayAuth):
                shutil.copyfile(conn.auth.cert, self.swanctl_dir / "x509" / f"{conn.name}.pem")
                shutil.copyfile(conn.auth.key, self.swanctl_dir / "private" / f"{conn.name}.pem")
                shutil.copyfile(conn.auth.ca, self.swanctl_dir / "x509ca" / f"{conn.name}-ca.pem")
            if isinstance(conn.auth, EapAuth):
                shutil.copyfile(conn.auth.ca, self.swanctl_dir / "x509ca" / f"{conn.name}-ca.pem")
                if conn.auth.cert is not None and conn.auth.key is not None:
                    shutil.copyfile(conn.auth.cert, self.swanctl_dir / "x509" / f"{conn.name}.pem")
                    shutil.copyfile(conn.auth.key, self.swanctl_dir / "private" / f"{conn.name}.pem")
        (self.swanctl_dir / "swanctl.conf").write_text(swanctl_conf(self.connections))

    def start(self, timeout: float = 10.0) -> Charon:
        if self.proc is not None:
            raise RuntimeError(f"{self!r} already started")
        self.write_config()
        if self.root is not None and not self._in_chroot:
            _enter_chroot(self.root)
            self._in_chroot = True
        self.proc = self.host.popen(self._argv(CHARON), env=self.env, log=self.confdir / "charon.stdout")
        self._wait_for_vici(timeout)
        self.load_all(timeout=max(30.0, timeout))  # a slow host (the kernel lane's guest) gets longer
        return self

    def _wait_for_vici(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"charon in {self.host.name} exited with {self.proc.returncode}; log: {self.log_path}"
                )
            if self.vici_socket.exists():
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                    try:
                        sock.connect(str(self.vici_socket))
                        return
                    except OSError:
                        pass
            time.sleep(0.02)
        raise TimeoutError(
            f"charon in {self.host.name} opened no vici socket in {timeout}s; log: {self.log_path}"
        )

    def swanctl(
        self, *args: str, timeout: float = 30.0, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run swanctl against this instance (vici is a UNIX socket, so no namespace is needed)."""
        try:
            return run(self._argv(SWANCTL, *args), env=self.env, timeout=timeout, check=check)
        except CommandError as exc:
            raise SwanctlError(
                exc.argv, exc.returncode, exc.stdout, exc.stderr + f"\ncharon log: {self.log_path}"
            ) from None

    def load_all(self, timeout: float = 30.0) -> None:
        self.write_config()
        self.swanctl("--load-all", "--noprompt", timeout=timeout)

    def initiate(self, ike: str, child: str | None = None, timeout: float = 10.0) -> None:
        args = ["--initiate", "--ike", ike, "--timeout", str(max(1, round(timeout)))]
        if child is not None:
            args += ["--child", child]
        self.swanctl(*args, timeout=timeout + 5)

    def terminate(self, ike: str | None = None, child: str | None = None, timeout: float = 10.0) -> None:
        if (ike is None) == (child is None):
            raise ValueError("terminate needs exactly one of ike= or child=")
        args = ["--terminate", "--timeout", str(max(1, round(timeout)))]
        args += ["--ike", ike] if ike is not None else ["--child", str(child)]
        self.swanctl(*args, timeout=timeout + 5)

    def list_sas_raw(self) -> list[ViciTree]:
        """The vici ``list-sa`` events as plain dicts (the final empty reply is dropped)."""
        return [m for m in parse_pretty(self.swanctl("--list-sas", "--pretty").stdout) if m]

    def list_sas(self) -> list[IkeSa]:
        return parse_list_sas(self.swanctl("--list-sas", "--pretty").stdout)

    def ike_sa(self, name: str) -> IkeSa | None:
        return next((sa for sa in self.list_sas() if sa.name == name), None)

    def wait_for(self, predicate: Callable[[list[IkeSa]], T | None], timeout: float = 10.0) -> T:
        """Poll ``list_sas`` until ``predicate`` returns something truthy; return that."""
        deadline = time.monotonic() + timeout
        while True:
            result = predicate(self.list_sas())
            if result:
                return result
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"condition not met on {self.host.name} in {timeout}s; log: {self.log_path}"
                )
            time.sleep(0.05)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> int | None:
        """SIGTERM by PID, SIGKILL after a grace period; removes the socket dir. Idempotent."""
        code = stop_process(self.proc) if self.proc is not None else None
        shutil.rmtree(self._sockdir, ignore_errors=True)
        if self.root is not None and self.confdir.exists():
            # Keep the log with the test's other files, not in the shared chroot.
            if self.log_path.exists():
                shutil.copyfile(self.log_path, self.host.lab.workdir / f"strongswan-{self.host.name}.log")
            shutil.rmtree(self.confdir, ignore_errors=True)
        if self._in_chroot:
            assert self.root is not None
            self._in_chroot = False
            _leave_chroot(self.root)
        return code


class CharonFactory:
    """Starts charons in lab hosts and stops all of them (before the lab deletes the namespaces)."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.instances: list[Charon] = []

    def start(
        self,
        host: Host,
        connections: Sequence[Connection],
        settings: CharonSettings | None = None,
        timeout: float = 10.0,
        root: Path | None = None,
    ) -> Charon:
        charon = Charon(host, connections, settings, root=root)
        self.instances.append(charon)  # before start(): a half-started charon is stopped too
        return charon.start(timeout)

    def stop_all(self) -> None:
        errors: list[BaseException] = []
        for charon in reversed(self.instances):
            try:
                charon.stop()
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]


__all__ = [
    "CHARON",
    "DEFAULT_PLUGINS",
    "EAP_PLUGINS",
    "SWANCTL",
    "CertAuth",
    "Charon",
    "CharonFactory",
    "CharonSettings",
    "Child",
    "ChildSa",
    "Connection",
    "EapAuth",
    "EapGatewayAuth",
    "IkeSa",
    "Psk",
    "SwanctlError",
    "parse_list_sas",
    "parse_pretty",
    "pq_root",
    "render_conf",
    "strongswan_conf",
    "swanctl_conf",
]
