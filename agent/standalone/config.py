"""The standalone agent's YAML configuration, in the spirit of swanctl.conf (see
docs/agent-standalone.md). `load_config` turns a file into engine configurations and rejects
anything invalid with a `ConfigError` naming the offending field by its path, e.g.
`connections.site-b.children.net.local_ts[0]: '10.0.0.0/33' is not an IP prefix`."""

from __future__ import annotations

import ipaddress
import os
import re
import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import yaml

from meshsec.agent.ike.certs import CredentialError, Credentials, wall_clock
from meshsec.agent.ike.config import ChildConfig, IkeConfig, RetransmitConfig
from meshsec.agent.ike.config import ConfigError as EngineConfigError
from meshsec.agent.ike.constants import ProtocolId
from meshsec.agent.ike.eap.users import EapClientConfig
from meshsec.agent.ike.identity import Identity
from meshsec.agent.ike.proposals import ProposalError, parse_proposals
from meshsec.agent.ike.ts import Ts
from meshsec.common.safeyaml import safe_load
from meshsec.common.secrets import Secret

DEFAULT_STATUS_SOCKET = "/run/meshsec-agent/status.sock"
DATAPLANES = ("auto", "userspace", "kernel", "none")
START_ACTIONS = ("initiate", "wait")
AUTH_METHODS = ("psk", "pubkey")
EAP_METHODS = ("eap-mschapv2", "eap-tls")  # remote only: the peer's EAP, our certificate
LOG_LEVELS = ("debug", "info", "warning", "error")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}

if TYPE_CHECKING:
    from meshsec.agent.standalone.remote_access import EapUser, Pool, RemoteAccessConnection

T = TypeVar("T")


class ConfigError(ValueError):
    """Invalid configuration; `path` is where (e.g. `connections.a.children.b.mode`)."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


@dataclass(frozen=True, slots=True)
class AgentSettings:
    status_socket: Path = Path(DEFAULT_STATUS_SOCKET)
    bind: tuple[str, ...] = ("0.0.0.0", "::")
    ike_port: int = 500
    receive_buffer: int = 4 * 1024 * 1024
    dataplane: str = "auto"
    tun_name: str = "meshsec0"
    # The userspace data plane in its own process (agent/dataplane/userspace/daemon.py): "spawn"
    # (connect, start one where none answers), "connect" (someone else starts it: systemd, a
    # Kubernetes container) or "off" (in this process: it dies with the agent). The standalone
    # agent leaves on every stop (DELETE to every peer), so it keeps "off".
    userspace_daemon: str = "off"
    dataplane_socket: Path | None = None
    cookie_threshold: int = 10
    block_threshold: int = 1000
    cookie_threshold_per_address: int = 3
    block_threshold_per_address: int = 5
    log_level: str = "info"


@dataclass(frozen=True, slots=True)
class Connection:
    """One connection: the engine's IkeConfig plus what the agent needs around it."""

    ike: IkeConfig
    local_addrs: tuple[str, ...]  # empty: any of ours
    remote_addrs: tuple[str, ...]  # empty: any peer (responder only)
    remote_port: int
    start_action: str

    @property
    def name(self) -> str:
        return self.ike.name

    def accepts(self, local: str, remote: str) -> bool:
        """Responder: may a peer at `remote` talking to our `local` use this connection?"""
        return (not self.local_addrs or local in self.local_addrs) and (
            not self.remote_addrs or remote in self.remote_addrs
        )


@dataclass(frozen=True, slots=True)
class StandaloneConfig:
    agent: AgentSettings
    connections: tuple[Connection, ...]
    # Road warriors (agent/standalone/remote_access.py), with pools.
    pools: Mapping[str, Pool] = field(default_factory=dict)
    eap_users: Mapping[str, EapUser] = field(default_factory=dict)
    remote_access: tuple[RemoteAccessConnection, ...] = ()

    def lookup(self, local: str, remote: str) -> list[IkeConfig]:
        return [c.ike for c in self.connections if c.accepts(local, remote)]


# ---------------------------------------------------------------------- typed field access


class _Node:
    """A mapping plus its path, with typed getters that raise ConfigError naming the field."""

    def __init__(self, data: object, path: str) -> None:
        if not isinstance(data, Mapping):
            raise ConfigError(path, f"must be a mapping, not {_kind(data)}")
        self.data: Mapping[object, object] = data
        self.path = path
        self._used: set[str] = set()

    def at(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def get(self, key: str, kind: type[T], default: T | None = None, *, required: bool = False) -> T:
        self._used.add(key)
        if key not in self.data or self.data[key] is None:
            if required or default is None:
                raise ConfigError(self.at(key), "is required")
            return default
        value = self.data[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ConfigError(self.at(key), f"must be {kind.__name__}, not {_kind(value)}")
        return value

    def optional(self, key: str) -> object:
        self._used.add(key)
        return self.data.get(key)

    def strings(self, key: str, default: Sequence[str] = ()) -> list[str]:
        """A string or a list of strings (swanctl accepts `a,b` too)."""
        self._used.add(key)
        value = self.data.get(key)
        if value is None:
            return list(default)
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return [v.strip() for v in value]
        raise ConfigError(self.at(key), "must be a string or a list of strings")

    def child(self, key: str) -> _Node:
        self._used.add(key)
        return _Node(self.data.get(key) or {}, self.at(key))

    def choice(self, key: str, choices: Sequence[str], default: str) -> str:
        value = self.get(key, str, default)
        if value not in choices:
            raise ConfigError(self.at(key), f"must be one of {', '.join(choices)}, not {value!r}")
        return value

    def duration(self, key: str, default: float) -> float:
        self._used.add(key)
        value = self.data.get(key)
        if value is None:
            return default
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            seconds = float(value)
        elif isinstance(value, str) and (m := _DURATION.match(value.strip())):
            seconds = float(m.group(1)) * _UNITS[m.group(2)]
        else:
            raise ConfigError(self.at(key), f"must be a duration like 30, '20s', '1h', not {value!r}")
        if seconds < 0:
            raise ConfigError(self.at(key), "must not be negative")
        return seconds

    def check_unknown(self) -> None:
        for key in self.data:
            if str(key) not in self._used:
                raise ConfigError(self.at(str(key)), "unknown setting")


def _kind(value: object) -> str:
    return "a list" if isinstance(value, list) else "a mapping" if isinstance(value, Mapping) else repr(value)


def _wrap(path: str, fn: Callable[[], T]) -> T:
    """Engine and parser errors get the path of the field they came from."""
    try:
        return fn()
    except ConfigError:
        raise
    except (EngineConfigError, ProposalError, ValueError) as exc:
        raise ConfigError(path, str(exc)) from None


# ---------------------------------------------------------------------- sections


def _address(path: str, text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ConfigError(path, f"{text!r} is not an IP address") from None


def _addresses(node: _Node, key: str) -> tuple[str, ...]:
    values = node.strings(key)
    if values in ([], ["%any"]):
        return ()
    return tuple(_address(f"{node.at(key)}[{i}]", v) for i, v in enumerate(values))


def _port(node: _Node, key: str, default: int) -> int:
    port = node.get(key, int, default)
    if not 1 <= port <= 65535:
        raise ConfigError(node.at(key), f"{port} is not a UDP port")
    return port


def parse_agent(node: _Node) -> AgentSettings:
    bind = node.strings("bind", ("0.0.0.0", "::"))
    if not bind:
        raise ConfigError(node.at("bind"), "needs at least one address")
    addrs = tuple(_address(f"{node.at('bind')}[{i}]", b) for i, b in enumerate(bind))
    responder = node.child("responder")
    settings = AgentSettings(
        status_socket=Path(node.get("status_socket", str, DEFAULT_STATUS_SOCKET)),
        bind=addrs,
        ike_port=_port(node, "ike_port", 500),
        receive_buffer=node.get("receive_buffer", int, 4 * 1024 * 1024),
        dataplane=node.choice("dataplane", DATAPLANES, "auto"),
        tun_name=node.get("tun_name", str, "meshsec0"),
        cookie_threshold=responder.get("cookie_threshold", int, 10),
        block_threshold=responder.get("block_threshold", int, 1000),
        cookie_threshold_per_address=responder.get("cookie_threshold_per_address", int, 3),
        block_threshold_per_address=responder.get("block_threshold_per_address", int, 5),
        log_level=node.choice("log_level", LOG_LEVELS, "info"),
    )
    responder.check_unknown()
    node.check_unknown()
    if settings.receive_buffer < 0:
        raise ConfigError(node.at("receive_buffer"), "must not be negative")
    if not 0 < len(settings.tun_name) <= 15:
        raise ConfigError(node.at("tun_name"), "must be 1-15 characters (an interface name)")
    return settings


def _selectors(node: _Node, key: str) -> tuple[Ts, ...]:
    values = node.strings(key)
    if not values:
        raise ConfigError(node.at(key), "is required (one or more IP prefixes)")
    out = []
    for i, v in enumerate(values):
        try:
            out.append(Ts.from_cidr(v))
        except ValueError:
            raise ConfigError(f"{node.at(key)}[{i}]", f"{v!r} is not an IP prefix") from None
    return tuple(out)


def parse_child(node: _Node, name: str) -> ChildConfig:
    esp = node.strings("esp_proposals")
    ah = node.strings("ah_proposals")
    if esp and ah:
        raise ConfigError(node.path, "give esp_proposals or ah_proposals, not both")
    protocol = ProtocolId.AH if ah else ProtocolId.ESP
    proposals = ah or esp or ["aes256gcm16", "aes128-sha256"]
    key = "ah_proposals" if ah else "esp_proposals"
    for i, text in enumerate(proposals):
        _wrap(f"{node.at(key)}[{i}]", lambda t=text: parse_proposals(t, protocol))  # type: ignore[misc]
    local_ts = _selectors(node, "local_ts")
    remote_ts = _selectors(node, "remote_ts")
    mode = node.choice("mode", ("tunnel", "transport"), "tunnel")
    rekey = node.duration("rekey_time", 3600)
    life = node.duration("life_time", rekey * 1.1)
    rand = node.optional("rand_time")
    rand_time = None if rand is None else int(node.duration("rand_time", 0))
    volume = {k: node.get(k, int, 0) for k in ("rekey_bytes", "life_bytes", "rekey_packets", "life_packets")}
    node.check_unknown()
    return _wrap(
        node.path,
        lambda: ChildConfig(
            name, local_ts, remote_ts, ",".join(proposals), protocol, mode, int(rekey), int(life),
            rand_time, **volume,
        ),
    )  # fmt: skip


def _psk(node: _Node, base: Path) -> Secret:
    text = node.optional("psk")
    file = node.optional("psk_file")
    if (text is None) == (file is None):
        raise ConfigError(node.at("psk"), "give exactly one of psk or psk_file for auth psk")
    if file is not None:
        if not isinstance(file, str):
            raise ConfigError(node.at("psk_file"), "must be a path")
        raw = _read_path(node.at("psk_file"), base / file).rstrip(b"\r\n")
        return _psk_value(node.at("psk_file"), raw.decode("utf-8", "replace"))
    if not isinstance(text, str):
        raise ConfigError(node.at("psk"), "must be a string (use 0x... for hex)")
    return _psk_value(node.at("psk"), text)


def _psk_value(path: str, text: str) -> Secret:
    """swanctl's convention: `0x` introduces hex, `0s` base64; otherwise the UTF-8 text."""
    if text.startswith("0x"):
        try:
            value = bytes.fromhex(text[2:])
        except ValueError:
            raise ConfigError(path, "0x value is not hex") from None
    elif text.startswith("0s"):
        import base64
        import binascii

        try:
            value = base64.b64decode(text[2:], validate=True)
        except binascii.Error:
            raise ConfigError(path, "0s value is not base64") from None
    else:
        value = text.encode()
    if not value:
        raise ConfigError(path, "must not be empty")
    return Secret(value)


def _identity(node: _Node, default: str | None, *, allow_any: bool) -> str:
    ident = node.get("id", str, default) if default is not None else node.get("id", str, required=True)
    if ident == "%any":
        if not allow_any:
            raise ConfigError(node.at("id"), "%any is only allowed for the remote identity")
        return ident
    _wrap(node.at("id"), lambda: Identity.parse(ident))
    return ident


def _auth(node: _Node, extra: tuple[str, ...] = ()) -> str:
    method = node.get("auth", str, "psk")
    allowed = AUTH_METHODS + extra
    if method not in allowed:
        choices = f"{', '.join(allowed[:-1])} or {allowed[-1]}"
        raise ConfigError(node.at("auth"), f"must be {choices}, not {method!r}")
    return method


def _read_path(where: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(where, f"cannot read {path}: {exc.strerror}") from None


def _read_file(node: _Node, key: str, base: Path) -> bytes:
    return _read_path(node.at(key), base / node.get(key, str, required=True))


def _credentials(local: _Node, remote: _Node, base: Path) -> Credentials:
    """local: cert (our certificate, intermediates may follow in the same PEM), key, method
    (signature | classic), rsa_pss; remote: cas (the CA certificates we trust)."""
    cert = _read_file(local, "cert", base)
    key = Secret(_read_file(local, "key", base))
    method = local.choice("method", ("signature", "classic"), "signature")
    rsa_pss = local.get("rsa_pss", bool, False)
    cas_names = remote.strings("cas")
    if not cas_names:
        raise ConfigError(remote.at("cas"), "auth pubkey needs at least one trusted CA file")
    cas = [_read_path(f"{remote.at('cas')}[{i}]", base / name) for i, name in enumerate(cas_names)]
    try:
        return Credentials.load(cert, key, cas, wall_clock, method=method, rsa_pss=rsa_pss)
    except CredentialError as exc:
        raise ConfigError(local.path, str(exc)) from None


def _trust_anchors(remote: _Node, base: Path) -> Credentials:
    names = remote.strings("cas")
    if not names:
        raise ConfigError(remote.at("cas"), "auth pubkey needs at least one trusted CA file")
    cas = [_read_path(f"{remote.at('cas')}[{i}]", base / name) for i, name in enumerate(names)]
    try:
        return Credentials.trust_anchors(cas, wall_clock)
    except CredentialError as exc:
        raise ConfigError(remote.path, str(exc)) from None


def _eap_client(local: _Node, local_id: str, users: Mapping[str, EapUser]) -> EapClientConfig:
    """Our EAP identity (`eap_id`, default: our IKE identity) and its password from the secrets
    section, as swanctl.conf's `eap-<name>` secrets."""
    eap_id = local.get("eap_id", str, local_id)
    user = users.get(eap_id.lower())
    if user is None:
        raise ConfigError(
            local.at("eap_id"), f"no eap-<name> secret with id {eap_id!r} in the secrets section"
        )
    return _wrap(local.path, lambda: EapClientConfig(eap_id.encode(), user.nt_hash))


def parse_connection(
    node: _Node, name: str, base: Path, eap_users: Mapping[str, EapUser] | None = None
) -> Connection:
    local_addrs = _addresses(node, "local_addrs")
    remote_addrs = _addresses(node, "remote_addrs")
    local, remote = node.child("local"), node.child("remote")
    local_id = _identity(local, local_addrs[0] if local_addrs else None, allow_any=False)
    remote_id = _identity(remote, remote_addrs[0] if remote_addrs else "%any", allow_any=True)
    local_auth, remote_auth = _auth(local, ("eap-mschapv2",)), _auth(remote, EAP_METHODS)
    eap = eap_client = None
    creds: Credentials | None = None
    if local_auth == "eap-mschapv2":
        # We are the road warrior: EAP-MSCHAPv2 for us, the gateway's certificate for it.
        if remote_auth != "pubkey":
            raise ConfigError(
                remote.at("auth"), "an EAP road warrior checks the gateway's certificate: pubkey"
            )
        eap_client = _eap_client(local, local_id, eap_users or {})
        creds = _trust_anchors(remote, base)
    elif remote_auth in EAP_METHODS:
        from meshsec.agent.standalone.remote_access import eap_server_config

        if local_auth != "pubkey":
            raise ConfigError(local.at("auth"), "with EAP from the remote we authenticate with pubkey")
        eap = eap_server_config(remote_auth, eap_users or {})
    elif local_auth != remote_auth:
        raise ConfigError(remote.at("auth"), f"must equal local auth {local_auth!r} (no mixed auth)")
    if local_auth == "pubkey":
        creds = _credentials(local, remote, base)
    local.check_unknown()
    remote.check_unknown()
    psk = _psk(node, base) if creds is None else None
    proposals = node.strings("proposals", ("aes256gcm16-prfsha256-x25519",))
    if not proposals:
        raise ConfigError(node.at("proposals"), "needs at least one proposal")
    for i, text in enumerate(proposals):
        _wrap(f"{node.at('proposals')}[{i}]", lambda t=text: parse_proposals(t, ProtocolId.IKE))  # type: ignore[misc]
    start_action = node.choice("start_action", START_ACTIONS, "wait")
    if start_action == "initiate" and not remote_addrs:
        raise ConfigError(node.at("remote_addrs"), "start_action initiate needs a remote address")
    children_node = node.child("children")
    if not children_node.data:
        raise ConfigError(node.at("children"), "needs at least one child")
    children = []
    for child_name in children_node.data:
        cname = str(child_name)
        if not _NAME.match(cname):
            raise ConfigError(children_node.at(cname), "names are [A-Za-z0-9_.-], up to 64 characters")
        children.append(parse_child(children_node.child(cname), cname))
    children_node.check_unknown()
    retransmit = node.child("retransmit")
    rt = _wrap(
        retransmit.path,
        lambda: RetransmitConfig(
            retransmit.duration("timeout", 4.0),
            retransmit.get("base", float, 1.8),
            retransmit.get("tries", int, 5),
        ),
    )
    retransmit.check_unknown()
    remote_port = _port(node, "remote_port", 500)
    ike_rekey = int(node.duration("rekey_time", 14400))
    ike_rand = None if node.optional("rand_time") is None else int(node.duration("rand_time", 0))
    ike_over = None if node.optional("over_time") is None else int(node.duration("over_time", 0))
    dpd = node.child("dpd")
    dpd_delay = dpd.duration("delay", 0.0)
    dpd_action = dpd.choice("action", ("clear", "restart", "hold"), "clear")
    dpd.check_unknown()
    ike = _wrap(
        node.path,
        lambda: IkeConfig(
            name,
            local_id,
            remote_id,
            psk,
            ",".join(proposals),
            tuple(children),
            rt,
            prefer_own_proposals=node.get("prefer_own_proposals", bool, True),
            send_initial_contact=node.get("send_initial_contact", bool, True),
            natt_keepalive=node.duration("keepalive", 20.0),
            force_encap=node.get("encap", bool, False),
            reauth_time=int(node.duration("reauth_time", 0)),
            fragmentation=node.get("fragmentation", bool, True),
            fragment_size=node.get("fragment_size", int, 1200),
            mobike=node.get("mobike", bool, False),
            mobike_no_nats=node.get("mobike_no_nats", bool, False),
            rekey_time=ike_rekey,
            rand_time=ike_rand,
            over_time=ike_over,
            dpd_delay=dpd_delay,
            dpd_action=dpd_action,
            credentials=creds,
            eap=eap,
            eap_client=eap_client,
        ),
    )
    node.check_unknown()
    return Connection(ike, local_addrs, remote_addrs, remote_port, start_action)


def parse_config(data: object, base: Path = Path(".")) -> StandaloneConfig:
    """`base` resolves relative file names (psk_file)."""
    from meshsec.agent.standalone import remote_access as ra

    root = _Node(data if data is not None else {}, "")
    agent = parse_agent(root.child("agent"))
    pools = ra.parse_pools(root.child("pools"))
    eap_users = ra.parse_secrets(root.child("secrets"), base)
    conns_node = root.child("connections")
    connections = []
    remote_access = []
    for conn_name in conns_node.data:
        cname = str(conn_name)
        if not _NAME.match(cname):
            raise ConfigError(conns_node.at(cname), "names are [A-Za-z0-9_.-], up to 64 characters")
        if ra.is_remote_access(conns_node.data[conn_name]):
            remote_access.append(ra.parse_connection(conns_node.child(cname), cname, base, pools))
        else:
            connections.append(parse_connection(conns_node.child(cname), cname, base, eap_users))
    conns_node.check_unknown()
    root.check_unknown()
    if not connections and not remote_access:
        raise ConfigError("connections", "needs at least one connection")
    return StandaloneConfig(agent, tuple(connections), pools, eap_users, tuple(remote_access))


def load_config(path: Path) -> StandaloneConfig:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError("", f"cannot read {path}: {exc.strerror}") from None
    try:
        data = safe_load(text)  # bounded: size, depth, alias expansion
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise ConfigError("", f"{path} is not valid YAML{line}: {getattr(exc, 'problem', exc)}") from None
    return parse_config(data, path.parent)


def world_readable(path: Path) -> bool:
    """A config holding PSKs should not be readable by everyone; the runner warns if it is."""
    try:
        return bool(os.stat(path).st_mode & stat.S_IROTH)
    except OSError:
        return False
