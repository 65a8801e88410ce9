"""RemoteAccessPool and RemoteAccessUser: field rules, round trip, cross-resource validation."""

from __future__ import annotations

from ipaddress import ip_network
from typing import Any

import pytest

from meshsec.controller.mesh import Delete, MeshIndex, Upsert
from meshsec.controller.resources import ValidationError, parse_resource
from meshsec.controller.resources.model import (
    Kind,
    RemoteAccessPool,
    RemoteAccessUser,
    RemoteAuthMethod,
    RouteMode,
)
from meshsec.controller.resources.serialize import to_manifest
from tests.controller.test_mesh_support import site


def pool(name: str = "staff", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "addresses": ["198.19.200.0/24"],
        "dns": ["198.19.0.53"],
        "routes": {"mode": "split", "prefixes": ["198.19.0.0/20"]},
        "gateways": {"matchLabels": {"role": "ra"}},
        "auth": {"methods": ["certificate", "eap-mschapv2"]},
    }
    body.update(spec)
    return {
        "apiVersion": "meshsec.io/v1alpha1",
        "kind": "RemoteAccessPool",
        "metadata": {"name": name},
        "spec": body,
    }


def user(name: str = "alice", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "identity": f"{name}@example.test",
        "pool": "staff",
        "auth": {"method": "eap-mschapv2"},
        "devices": [{"name": "phone", "platform": "apple"}],
    }
    body.update(spec)
    return {
        "apiVersion": "meshsec.io/v1alpha1",
        "kind": "RemoteAccessUser",
        "metadata": {"name": name},
        "spec": body,
    }


def _problems(doc: dict[str, Any]) -> list[str]:
    with pytest.raises(ValidationError) as info:
        parse_resource(doc)
    return [f"{e.path}: {e.reason}" for e in info.value.errors]


def test_pool_parses_with_defaults_and_round_trips() -> None:
    parsed = parse_resource(pool())
    assert isinstance(parsed, RemoteAccessPool)
    assert parsed.spec.addresses == (ip_network("198.19.200.0/24"),)
    assert parsed.spec.routes.mode is RouteMode.SPLIT
    assert parsed.spec.crypto.ike_proposals[0] == "aes256gcm16-prfsha384-ecp384"
    assert parse_resource(to_manifest(parsed)) == parsed
    full = parse_resource(pool(routes={"mode": "full"}, auth=None))
    assert isinstance(full, RemoteAccessPool)
    assert [str(p) for p in full.spec.routes.selectors()] == ["0.0.0.0/0", "::/0"]
    assert full.spec.auth_methods == (
        RemoteAuthMethod.CERTIFICATE,
    )  # fail closed: no password login by default


def test_user_parses_and_round_trips() -> None:
    parsed = parse_resource(user())
    assert isinstance(parsed, RemoteAccessUser)
    assert parsed.spec.identity == "alice@example.test"
    assert parse_resource(to_manifest(parsed)) == parsed


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            {"addresses": ["198.19.200.0/24", "198.19.201.0/24"]},
            "spec.addresses: at most one IPv4 range per pool",
        ),
        ({"addresses": ["198.18.0.0/15"]}, "spec.addresses[0]: 198.18.0.0/15 holds more than 2^16 addresses"),
        ({"addresses": ["198.19.200.0/31"]}, "spec.addresses[0]: 198.19.200.0/31 is too small"),
        ({"addresses": ["198.19.200.1/24"]}, "spec.addresses[0]: invalid CIDR"),
        ({"routes": {"mode": "split"}}, "spec.routes.prefixes: split routes need at least one prefix"),
        (
            {"routes": {"mode": "full", "prefixes": ["198.19.0.0/16"]}},
            "spec.routes.prefixes: mode full routes everything",
        ),
        ({"routes": {"prefixes": ["0.0.0.0/0"]}}, "spec.routes.prefixes[0]: 0.0.0.0/0 is a full tunnel"),
        (
            {"auth": {"methods": ["pap"]}},
            "spec.auth.methods[0]: must be one of certificate, eap-tls, eap-mschapv2",
        ),
        ({"crypto": {"ikeProposals": ["aes128-sha1-modp1024"]}}, "spec.crypto.ikeProposals[0]:"),
        ({"gateways": None}, "spec.gateways: required"),
    ],
)
def test_pool_field_errors(spec: dict[str, Any], expected: str) -> None:
    problems = _problems(pool(**spec))
    assert any(p.startswith(expected) for p in problems), problems


def test_user_refuses_inline_password_without_echoing_it() -> None:
    problems = _problems(user(auth={"method": "eap-mschapv2", "password": "hunter2-not-echoed"}))
    assert problems == [
        "spec.auth.password: inline secrets are not accepted; "
        "set the password with `meshctl remote-access set-password`"
    ]
    assert "hunter2" not in " ".join(problems)


def test_user_field_errors() -> None:
    problems = _problems(
        user(
            identity="has space",
            devices=[{"name": "a", "platform": "apple"}, {"name": "a", "platform": "nokia"}],
        )
    )
    assert "spec.identity: must be at most 253 printable characters without spaces" in problems
    assert "spec.devices[1].name: device 'a' is listed twice" in problems
    assert any(p.startswith("spec.devices[1].platform: must be one of apple") for p in problems)


def _index(*docs: dict[str, Any]) -> MeshIndex:
    index = MeshIndex()
    index.apply(Upsert(parse_resource(d)) for d in docs)
    return index


def _rejected(index: MeshIndex, changes: list[Upsert | Delete]) -> list[str]:
    before = index.resources()
    with pytest.raises(ValidationError) as info:
        index.apply(changes)
    assert index.resources() == before
    return [str(e) for e in info.value.errors]


def test_users_and_pools_validate_together_and_make_no_tunnels() -> None:
    index = _index(site("dc1", ["198.19.1.0/24"]), pool(), user(), user("bob"))
    assert {r.metadata.name for r in index.resources()} == {"dc1", "staff", "alice", "bob"}
    assert index.apply([Upsert(parse_resource(user("carol")))]) == {}  # no node gets a delta
    assert _rejected(index, [Upsert(parse_resource(user("dave", pool="nope")))]) == [
        "RemoteAccessUser/dave: spec.pool: references unknown RemoteAccessPool/nope"
    ]
    assert _rejected(index, [Upsert(parse_resource(user("eve", identity="ALICE@example.test")))]) == [
        "RemoteAccessUser/eve: spec.identity: 'ALICE@example.test' is also the identity of "
        "RemoteAccessUser/alice"
    ]
    assert _rejected(index, [Upsert(parse_resource(user("frank", auth={"method": "eap-tls"})))]) == [
        "RemoteAccessUser/frank: spec.auth.method: eap-tls is not allowed by RemoteAccessPool/staff "
        "(certificate, eap-mschapv2)"
    ]
    # Narrowing the pool's methods is refused while users still use the one it drops.
    narrowed = _rejected(index, [Upsert(parse_resource(pool(auth={"methods": ["certificate"]})))])
    assert (
        "RemoteAccessUser/alice: spec.auth.method: eap-mschapv2 is not allowed by "
        "RemoteAccessPool/staff (certificate)"
        in narrowed
    )
    assert _rejected(index, [Delete(Kind.REMOTE_ACCESS_POOL, "staff")]) == [
        "RemoteAccessPool/staff: cannot delete: still referenced by RemoteAccessUser/alice"
    ]
    users = [Delete(Kind.REMOTE_ACCESS_USER, n) for n in ("alice", "bob", "carol")]
    index.apply([*users, Delete(Kind.REMOTE_ACCESS_POOL, "staff")])
    assert [r.metadata.name for r in index.resources()] == ["dc1"]


def test_pool_ranges_must_not_overlap_sites_or_other_pools() -> None:
    index = _index(site("dc1", ["198.19.1.0/24"]), pool())
    assert _rejected(index, [Upsert(parse_resource(pool("lab", addresses=["198.19.1.0/25"])))]) == [
        "RemoteAccessPool/lab: spec.addresses: 198.19.1.0/25 overlaps Site/dc1 prefix 198.19.1.0/24; "
        "client addresses must be unique"
    ]
    assert _rejected(index, [Upsert(parse_resource(pool("other", addresses=["198.19.200.128/25"])))]) == [
        "RemoteAccessPool/other: spec.addresses: 198.19.200.128/25 overlaps RemoteAccessPool/staff prefix "
        "198.19.200.0/24; client addresses must be unique"
    ]
    # A Site that grows over a pool is refused too.
    grown = _rejected(index, [Upsert(parse_resource(site("dc1", ["198.19.192.0/18"])))])
    assert any(
        "RemoteAccessPool/staff: spec.addresses: 198.19.200.0/24 overlaps Site/dc1" in p for p in grown
    ), grown
