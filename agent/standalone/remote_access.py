"""Remote access in the standalone config, in the spirit of swanctl.conf's ``pools`` and
``secrets`` sections and a ``%any`` connection with EAP (docs/agent-standalone.md).

```yaml
pools:
  staff:
    addrs: [198.19.60.0/24]        # one range per address family
    dns: [198.19.50.53]
    subnet: [198.19.50.0/24]       # split routes (INTERNAL_IP4_SUBNET); omit for a full tunnel
secrets:
  eap-alice:
    id: alice@example.test
    secret: "..."                  # or secret_file: path, or nt_hash: 0x<32 hex digits>
connections:
  rw:
    pools: [staff]
    local: {id: vpn.hq.example.test, auth: pubkey, cert: gw.pem, key: gw.key}
    remote: {auth: eap-mschapv2, cas: [ca.pem]}   # pubkey | eap-tls | eap-mschapv2; id %any
    children: {rw: {local_ts: [198.19.50.0/24]}}  # remote_ts: the client's address (dynamic)
```

Passwords are turned into their NT hash while the file is read; the text is not kept. Every
connection is served (`engine_config`): certificate clients (`remote.auth: pubkey`), EAP-MSCHAPv2
clients against the secrets, EAP-TLS clients against `cas` (`eap_server_config`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from meshsec.agent.ike.certs import Credentials
from meshsec.agent.ike.config import ChildConfig, IkeConfig
from meshsec.agent.ike.constants import ProtocolId
from meshsec.agent.ike.eap import users as engine
from meshsec.agent.ike.eap.users import EapServerConfig
from meshsec.agent.ike.proposals import parse_proposals
from meshsec.agent.ike.ts import Ts
from meshsec.agent.ike.virtual_ip import AddressPool

# config.py imports this module only inside parse_config, once it is itself fully loaded.
from meshsec.agent.standalone.config import (
    ConfigError,
    _credentials,
    _identity,
    _Node,
    _read_path,
    _wrap,
)
from meshsec.common.md4 import nt_password_hash
from meshsec.common.secrets import Secret

REMOTE_AUTH = ("pubkey", "eap-mschapv2", "eap-tls")
# What a CHILD_SA config needs as the remote side; every client is narrowed to its own addresses.
DYNAMIC_REMOTE_TS = (Ts.from_cidr("0.0.0.0/0"), Ts.from_cidr("::/0"))
MAX_POOL_HOST_BITS = 16  # as RemoteAccessPool: allocation scans the range


@dataclass(frozen=True, slots=True)
class Pool:
    name: str
    addrs: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    dns: tuple[str, ...]
    subnets: tuple[str, ...]  # empty: full tunnel


@dataclass(frozen=True, slots=True)
class EapUser:
    identity: str
    nt_hash: Secret


@dataclass(frozen=True, slots=True)
class RemoteAccessConnection:
    name: str
    pools: tuple[str, ...]
    local_id: str
    credentials: Credentials
    remote_auth: str
    proposals: tuple[str, ...]
    children: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...]  # (name, local_ts, esp proposals)


def is_remote_access(data: object) -> bool:
    """Whether a connection's mapping describes road warriors with pool addresses. A connection
    with EAP from the remote but fixed remote_ts and no pools is an ordinary one (config.py):
    its clients bring their own address."""
    return isinstance(data, dict) and "pools" in data


def eap_server_config(remote_auth: str, users: Mapping[str, EapUser]) -> EapServerConfig:
    """The engine's EAP settings for a connection whose remote authenticates with `remote_auth`
    (eap-mschapv2 or eap-tls): MSCHAPv2 users from the secrets section (NT hashes); for
    EAP-TLS every identity is a user whose certificate chains to the connection's CAs and
    names that identity (there is nothing else to look up)."""

    def lookup(identity: bytes) -> engine.EapUser | None:
        if remote_auth == "eap-tls":
            return engine.EapUser(identity, tls=True)
        user = users.get(identity.decode("utf-8", "replace").lower())
        return engine.EapUser(identity, nt_hash=user.nt_hash) if user is not None else None

    return EapServerConfig(users=lookup, methods=("tls",) if remote_auth == "eap-tls" else ("mschapv2",))


def parse_pools(node: _Node) -> dict[str, Pool]:
    pools: dict[str, Pool] = {}
    for key in node.data:
        name = str(key)
        pool = node.child(name)
        addrs = []
        for i, text in enumerate(pool.strings("addrs")):
            where = f"{pool.at('addrs')}[{i}]"
            try:
                net = ipaddress.ip_network(text, strict=True)
            except ValueError as exc:
                raise ConfigError(where, f"{text!r} is not an IP prefix: {exc}") from None
            if net.max_prefixlen - net.prefixlen > MAX_POOL_HOST_BITS:
                raise ConfigError(where, f"{net} holds more than 2^{MAX_POOL_HOST_BITS} addresses")
            if net.max_prefixlen - net.prefixlen < 2:
                raise ConfigError(where, f"{net} is too small for a pool")
            addrs.append(net)
        if not addrs:
            raise ConfigError(pool.at("addrs"), "needs one IPv4 and/or one IPv6 range")
        if len({a.version for a in addrs}) != len(addrs):
            raise ConfigError(pool.at("addrs"), "at most one range per address family")
        dns = tuple(_address(pool, "dns", i, t) for i, t in enumerate(pool.strings("dns")))
        subnets = []
        for i, text in enumerate(pool.strings("subnet")):
            try:
                subnets.append(str(ipaddress.ip_network(text, strict=True)))
            except ValueError:
                raise ConfigError(f"{pool.at('subnet')}[{i}]", f"{text!r} is not an IP prefix") from None
        pool.check_unknown()
        pools[name] = Pool(name, tuple(addrs), dns, tuple(subnets))
    _no_overlaps(pools)
    return pools


def _address(node: _Node, key: str, i: int, text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ConfigError(f"{node.at(key)}[{i}]", f"{text!r} is not an IP address") from None


def _no_overlaps(pools: dict[str, Pool]) -> None:
    seen: list[tuple[str, ipaddress.IPv4Network | ipaddress.IPv6Network]] = []
    for name, pool in pools.items():
        for net in pool.addrs:
            for other, theirs in seen:
                if net.version == theirs.version and net.overlaps(theirs):
                    raise ConfigError(f"pools.{name}.addrs", f"{net} overlaps pool {other}'s {theirs}")
            seen.append((name, net))


def parse_secrets(node: _Node, base: Path) -> dict[str, EapUser]:
    """``eap-<name>`` sections; the result is keyed by identity, lower-cased."""
    users: dict[str, EapUser] = {}
    for key in node.data:
        name = str(key)
        if not name.startswith("eap-"):
            raise ConfigError(
                node.at(name), "only eap-<name> secrets are supported here (PSKs go in connections)"
            )
        entry = node.child(name)
        identity = entry.get("id", str, required=True)
        given = [k for k in ("secret", "secret_file", "nt_hash") if entry.optional(k) is not None]
        if len(given) != 1:
            raise ConfigError(entry.path, "needs exactly one of secret, secret_file, nt_hash")
        if given[0] == "nt_hash":
            text = entry.get("nt_hash", str, required=True).removeprefix("0x")
            try:
                digest = bytes.fromhex(text)
            except ValueError:
                digest = b""
            if len(digest) != 16:
                raise ConfigError(entry.at("nt_hash"), "must be 0x followed by 32 hex digits")
        else:
            if given[0] == "secret":
                password = entry.get("secret", str, required=True)
            else:
                raw = _read_path(entry.at("secret_file"), base / entry.get("secret_file", str, required=True))
                password = raw.decode("utf-8", "replace").rstrip("\r\n")
            if not 8 <= len(password) <= 256:
                raise ConfigError(
                    entry.path, f"the password must be 8 to 256 characters (got {len(password)})"
                )
            digest = nt_password_hash(password)
        entry.check_unknown()
        if identity.lower() in users:
            raise ConfigError(entry.at("id"), f"{identity!r} has a secret already")
        users[identity.lower()] = EapUser(identity, Secret(digest))
    return users


def parse_connection(node: _Node, name: str, base: Path, pools: dict[str, Pool]) -> RemoteAccessConnection:
    for key in ("remote_addrs", "start_action"):
        if node.optional(key) not in (None, "%any", ["%any"], "wait"):
            raise ConfigError(
                node.at(key), "a remote-access connection takes clients from anywhere and waits"
            )
    node.optional("local_addrs")
    names = tuple(node.strings("pools"))
    if not names:
        raise ConfigError(node.at("pools"), "a remote-access connection needs at least one pool")
    for i, pool in enumerate(names):
        if pool not in pools:
            raise ConfigError(f"{node.at('pools')}[{i}]", f"no pool {pool!r} in the pools section")
    local, remote = node.child("local"), node.child("remote")
    local_id = _identity(local, None, allow_any=False)
    if local.get("auth", str, "pubkey") != "pubkey":
        raise ConfigError(local.at("auth"), "the gateway authenticates with its certificate (pubkey)")
    remote_auth = remote.choice("auth", REMOTE_AUTH, "pubkey")
    if remote.get("id", str, "%any") != "%any":
        raise ConfigError(
            remote.at("id"), "must be %any: clients are told apart by their EAP identity or certificate"
        )
    if remote.get("eap_id", str, "%any") != "%any":
        raise ConfigError(remote.at("eap_id"), "must be %any (the secrets section lists who may connect)")
    credentials = _credentials(local, remote, base)
    local.check_unknown()
    remote.check_unknown()
    proposals = tuple(
        node.strings("proposals", ("aes256gcm16-prfsha384-ecp384", "aes256gcm16-prfsha256-x25519"))
    )
    for i, text in enumerate(proposals):
        _wrap(f"{node.at('proposals')}[{i}]", lambda t=text: parse_proposals(t, ProtocolId.IKE))  # type: ignore[misc]
    children_node = node.child("children")
    if not children_node.data:
        raise ConfigError(node.at("children"), "needs at least one child")
    children = []
    for child_key in children_node.data:
        child = children_node.child(str(child_key))
        local_ts = tuple(child.strings("local_ts"))
        if not local_ts:
            raise ConfigError(child.at("local_ts"), "is required (what clients reach through the gateway)")
        for i, text in enumerate(local_ts):
            try:
                ipaddress.ip_network(text, strict=True)
            except ValueError:
                raise ConfigError(f"{child.at('local_ts')}[{i}]", f"{text!r} is not an IP prefix") from None
        if child.optional("remote_ts") not in (None, "dynamic", ["dynamic"]):
            raise ConfigError(child.at("remote_ts"), "is the client's own address (dynamic); leave it out")
        esp = tuple(child.strings("esp_proposals", ("aes256gcm16-ecp384", "aes256gcm16")))
        for i, text in enumerate(esp):
            _wrap(f"{child.at('esp_proposals')}[{i}]", lambda t=text: parse_proposals(t, ProtocolId.ESP))  # type: ignore[misc]
        child.check_unknown()
        children.append((str(child_key), local_ts, esp))
    children_node.check_unknown()
    node.check_unknown()
    return RemoteAccessConnection(name, names, local_id, credentials, remote_auth, proposals, tuple(children))


def engine_config(
    conn: RemoteAccessConnection, pool: AddressPool, eap_users: Mapping[str, EapUser] | None = None
) -> IkeConfig:
    """The responder IkeConfig for `%any` road warriors of `conn`, drawing addresses from `pool`;
    EAP clients are checked against `eap_users` (the secrets section)."""
    eap = eap_server_config(conn.remote_auth, eap_users or {}) if conn.remote_auth != "pubkey" else None
    children = tuple(
        ChildConfig(name, tuple(Ts.from_cidr(t) for t in local_ts), DYNAMIC_REMOTE_TS, ",".join(esp))
        for name, local_ts, esp in conn.children
    )
    return IkeConfig(
        conn.name,
        conn.local_id,
        "%any",
        None,
        ",".join(conn.proposals),
        children,
        credentials=conn.credentials,
        eap=eap,
        address_pool=pool,
        # Road warriors roam and sleep: the gateway finds dead ones, they reconnect themselves.
        dpd_delay=30.0,
        send_initial_contact=False,
    )
