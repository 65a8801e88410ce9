"""Parsing RemoteAccessPool and RemoteAccessUser manifests (docs/remote-access.md).

Field-level rules only; what spans resources (a user's pool exists, pools do not overlap Sites or
each other, identities are unique) is in `validate_remote`.
"""

from __future__ import annotations

import dataclasses

from meshsec.controller.resources.algorithms import ProposalKind
from meshsec.controller.resources.cloud import PROFILES
from meshsec.controller.resources.crypto import parse_crypto
from meshsec.controller.resources.fields import Fields, valid_name
from meshsec.controller.resources.model import (
    CloudProfileName,
    CryptoProfile,
    Device,
    Dpd,
    Platform,
    PoolRoutes,
    Prefix,
    RemoteAccessPoolSpec,
    RemoteAccessUserSpec,
    RemoteAuthMethod,
    RouteMode,
)

# What phones and laptops offer natively (Windows' Set-VpnConnectionIPsecConfiguration with
# GCMAES256/ECP384, Apple's AES-256-GCM/SHA2-384/group 20), so a pool works with every profile
# `meshctl remote-access profile` renders unless the operator narrows it.
REMOTE_ACCESS_PROFILE = dataclasses.replace(
    PROFILES[CloudProfileName.GENERIC],
    defaults=CryptoProfile(
        ("aes256gcm16-prfsha384-ecp384", "aes256gcm16-prfsha256-x25519"),
        ("aes256gcm16-ecp384",),
        14400,
        3600,
        True,
        Dpd(delay_s=30, timeout_s=150),
    ),
)

# Lease allocation scans a pool's range (controller/remoteaccess/leases.py): a range is at most
# this many addresses per family, so an IPv4 pool is /16 or smaller and IPv6 ranges are /112 or
# smaller, and the smallest pool holds two clients.
MAX_POOL_PREFIX_BITS = 16
MIN_POOL_PREFIX_BITS = 1

# Words that mark a secret someone tried to inline into a user; the value is never echoed.
_SECRET_WORDS = ("password", "secret", "hash", "key")


def pool_spec(f: Fields) -> RemoteAccessPoolSpec:
    f.only("addresses", "dns", "routes", "gateways", "auth", "crypto")
    addresses = f.prefixes("addresses", required=True)
    families = [p.version for p in addresses]
    for version in sorted({v for v in families if families.count(v) > 1}):
        f.error("addresses", f"at most one IPv{version} range per pool")
    for i, prefix in enumerate(addresses):
        host_bits = prefix.max_prefixlen - prefix.prefixlen
        if host_bits > MAX_POOL_PREFIX_BITS:
            f.error(
                f"addresses[{i}]",
                f"{prefix} holds more than 2^{MAX_POOL_PREFIX_BITS} addresses; "
                f"use /{prefix.max_prefixlen - MAX_POOL_PREFIX_BITS} or smaller",
            )
        elif host_bits <= MIN_POOL_PREFIX_BITS:
            f.error(f"addresses[{i}]", f"{prefix} is too small; use a /{prefix.max_prefixlen - 2} or larger")
    dns = f.addresses("dns")
    routes = f.sub("routes")
    routes.only("mode", "prefixes")
    mode = routes.enum("mode", RouteMode, RouteMode.SPLIT)
    prefixes: tuple[Prefix, ...] = routes.prefixes("prefixes")
    if mode is RouteMode.SPLIT and not prefixes:
        routes.error("prefixes", "split routes need at least one prefix (or mode: full)")
    if mode is RouteMode.FULL and prefixes:
        routes.error("prefixes", "mode full routes everything; leave prefixes out")
    for i, prefix in enumerate(prefixes):
        if prefix.prefixlen == 0:
            routes.error(f"prefixes[{i}]", f"{prefix} is a full tunnel; say mode: full")
    auth = f.sub("auth")
    auth.only("methods")
    methods: list[RemoteAuthMethod] = []
    for i, item in enumerate(auth.strings("methods")):
        method = next((m for m in RemoteAuthMethod if m.value == item), None)
        if method is None:
            auth.error(f"methods[{i}]", f"must be one of {', '.join(m.value for m in RemoteAuthMethod)}")
        elif method not in methods:
            methods.append(method)
    return RemoteAccessPoolSpec(
        addresses=addresses,
        dns=dns,
        routes=PoolRoutes(mode, prefixes),
        gateways=f.selector("gateways"),
        auth_methods=tuple(methods) or (RemoteAuthMethod.CERTIFICATE,),
        crypto=parse_crypto(f.sub("crypto"), REMOTE_ACCESS_PROFILE, ProposalKind.ESP),
    )


def user_spec(f: Fields, name: str) -> RemoteAccessUserSpec:
    f.only("identity", "pool", "auth", "devices")
    identity = f.string("identity", name or "-")
    if len(identity) > 253 or any(c.isspace() or not c.isprintable() for c in identity):
        f.error("identity", "must be at most 253 printable characters without spaces")
    pool = f.string("pool")
    if pool and not valid_name(pool):
        f.error("pool", "must be a lowercase DNS subdomain name")
    auth = f.sub("auth")
    for key in sorted(str(k) for k in auth.data if k != "method"):
        # Never echo the value: it may be the very password that must not be inlined.
        auth.error(
            key,
            "inline secrets are not accepted; set the password with `meshctl remote-access set-password`"
            if any(word in key.lower() for word in _SECRET_WORDS)
            else "unknown field",
        )
    method = auth.enum("method", RemoteAuthMethod, RemoteAuthMethod.CERTIFICATE)
    devices: list[Device] = []
    seen: set[str] = set()
    for path, item in f.items("devices"):
        d = Fields(item, path, f.errors, f.kind, f.name)
        d.only("name", "platform")
        device_name = d.string("name")
        if device_name and not valid_name(device_name):
            d.error("name", "must be a lowercase DNS subdomain name")
        elif device_name in seen:
            d.error("name", f"device {device_name!r} is listed twice")
        seen.add(device_name)
        devices.append(Device(device_name, d.enum("platform", Platform)))
    return RemoteAccessUserSpec(identity, pool, method, tuple(devices))
