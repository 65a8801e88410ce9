"""Checks on remote-access resources that span several of them (docs/remote-access.md).

A pool's ranges become routes on its gateways, so they must not overlap any Site's or
ExternalGateway's prefixes, nor another pool's; a user names an existing pool whose auth methods
include the user's; identities are unique (case-insensitively: EAP identities and certificate
e-mail addresses compare that way); a pool goes only when no user is left in it.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Protocol

from meshsec.controller.resources.errors import FieldError
from meshsec.controller.resources.model import (
    ExternalGateway,
    Kind,
    Prefix,
    RemoteAccessPool,
    RemoteAccessUser,
    Site,
)
from meshsec.controller.resources.overlap import PrefixOwners, first_overlaps


class RemoteAccessView(Protocol):
    def pool(self, name: str) -> RemoteAccessPool | None: ...
    def user(self, name: str) -> RemoteAccessUser | None: ...
    def all_pools(self) -> Iterable[RemoteAccessPool]: ...
    def all_users(self) -> Iterable[RemoteAccessUser]: ...
    def all_sites(self) -> Iterable[Site]: ...
    def all_external_gateways(self) -> Iterable[ExternalGateway]: ...
    def users_of_pool(self, pool: str) -> Collection[str]: ...
    def users_with_identity(self, identity: str) -> Collection[str]: ...


def check_pools(view: RemoteAccessView, names: Iterable[str]) -> list[FieldError]:
    entries: list[tuple[Prefix, tuple[Kind, str]]] = []
    for site in view.all_sites():
        entries += [(p, (Kind.SITE, site.metadata.name)) for p in site.spec.prefixes]
    for eg in view.all_external_gateways():
        entries += [(p, (Kind.EXTERNAL_GATEWAY, eg.metadata.name)) for p in eg.spec.prefixes]
    for other in view.all_pools():
        entries += [(p, (Kind.REMOTE_ACCESS_POOL, other.metadata.name)) for p in other.spec.addresses]
    owners = PrefixOwners(entries)
    errors: list[FieldError] = []
    for name in sorted(set(names)):
        pool = view.pool(name)
        if pool is None:
            continue
        hits = first_overlaps(pool.spec.addresses, owners, skip=(pool.kind, name))
        for (kind, owner), (mine, theirs) in sorted(hits.items(), key=lambda h: (h[0][0].value, h[0][1])):
            errors.append(
                FieldError(
                    pool.kind.value,
                    name,
                    "spec.addresses",
                    f"{mine} overlaps {kind.value}/{owner} prefix {theirs}; client addresses must be unique",
                )
            )
    return errors


def check_user(view: RemoteAccessView, user: RemoteAccessUser) -> list[FieldError]:
    errors: list[FieldError] = []
    name, spec = user.metadata.name, user.spec

    def err(path: str, reason: str) -> None:
        errors.append(FieldError(user.kind.value, name, path, reason))

    pool = view.pool(spec.pool)
    if pool is None:
        err("spec.pool", f"references unknown RemoteAccessPool/{spec.pool}")
    elif spec.auth_method not in pool.spec.auth_methods:
        allowed = ", ".join(m.value for m in pool.spec.auth_methods)
        err(
            "spec.auth.method",
            f"{spec.auth_method.value} is not allowed by RemoteAccessPool/{spec.pool} ({allowed})",
        )
    others = sorted(u for u in view.users_with_identity(spec.identity) if u != name)
    if others:
        err("spec.identity", f"{spec.identity!r} is also the identity of RemoteAccessUser/{others[0]}")
    return errors


def check_removed_pool(view: RemoteAccessView, name: str) -> list[FieldError]:
    if view.pool(name) is not None:
        return []
    users = sorted(view.users_of_pool(name))[:1]
    return [
        FieldError(
            Kind.REMOTE_ACCESS_POOL.value,
            name,
            "",
            f"cannot delete: still referenced by RemoteAccessUser/{u}",
        )
        for u in users
    ]
