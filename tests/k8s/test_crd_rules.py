"""The CRDs' CEL rules, evaluated (tests/k8s/cel.py) against the documents the parser accepts and
against broken ones the parser refuses: every rule must pass every valid document (a rule is
never stricter than the parser) and each broken document must be refused by a rule at the path
the parser names. The rules are proven by their verdicts, not by being present."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from meshsec.controller.operator import crds
from meshsec.controller.resources import Kind
from tests.k8s import cel
from tests.k8s.test_schema import (
    _BY_NAME,
    _DELETE,
    EXAMPLES,
    MAXIMAL,
    _doc_blocks,
    _load,
    _set,
    crd_errors,
    parser_errors,
)


def schema_of(kind: Kind) -> dict[str, Any]:
    return crds.crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]  # type: ignore[no-any-return]


def cel_errors(doc: dict[str, Any]) -> list[tuple[str, str]]:
    return cel.violations(schema_of(crds.kind_of(doc["kind"])), doc)


@pytest.mark.parametrize("path", [*EXAMPLES, MAXIMAL, *_doc_blocks()], ids=lambda p: p.name)
def test_valid_documents_pass_every_rule(path: Path) -> None:
    for doc in _load(path):
        assert cel_errors(doc) == [], doc["metadata"]["name"]


def _changed(name: str, changes: dict[str, object]) -> dict[str, Any]:
    doc = _BY_NAME[name]
    for path, value in changes.items():
        doc = _set(doc, path, value)
    return doc


_EXPR = "spec.gatewaySelector.matchExpressions[0]"
_MEMBERS = "spec.members.matchExpressions[0]"
_TO = "spec.partial.rules[0].to.matchExpressions[0]"
_POOL_GATEWAYS = "spec.gateways.matchExpressions[0]"
# (document, changes, where a rule reports it): the parser refuses each, the schema's types and
# bounds do not, a CEL rule does.
BROKEN: list[tuple[str, dict[str, object], str]] = [
    ("max-site", {"spec.prefixes[0]": "198.19.10.1/24"}, "spec.prefixes[0]"),
    ("max-site", {"spec.prefixes": ["198.19.0.0/16", "198.19.10.0/24"]}, "spec.prefixes"),
    ("max-site", {"spec.prefixes": ["2001:db8::/32", "2001:db8:10::/48"]}, "spec.prefixes"),
    ("max-site", {f"{_EXPR}.values": []}, f"{_EXPR}.values"),
    ("max-site", {f"{_EXPR}.values": _DELETE}, f"{_EXPR}.values"),
    ("max-site", {f"{_EXPR}.operator": "Exists"}, f"{_EXPR}.values"),
    ("max-node", {"spec.endpoints": {}}, "spec.endpoints"),
    ("max-node", {"spec.prefixes[0]": "198.19.10.7/24"}, "spec.prefixes[0]"),
    ("max-node", {"spec.endpoints": {"public": [], "private": []}}, "spec.endpoints"),
    ("max-hub", {"spec.hubs": _DELETE}, "spec.hubs"),
    ("max-hub", {"spec.topology": "full-mesh"}, "spec.hubs"),
    ("max-hub", {"spec.hubs.spokeToSpoke": False}, "spec.hubs.transitPrefixes"),
    ("max-hub", {"spec.hubs.transitPrefixes[0]": "198.19.0.1/16"}, "spec.hubs.transitPrefixes[0]"),
    ("max-hub", {"spec.crypto.childLifetimeSeconds": 20000}, "spec.crypto.childLifetimeSeconds"),
    ("max-hub", {"spec.crypto.dpd.timeoutSeconds": 5}, "spec.crypto.dpd.timeoutSeconds"),
    ("max-hub", {f"{_MEMBERS}.operator": "DoesNotExist"}, f"{_MEMBERS}.values"),
    ("max-hub", {"spec.mode": "transport"}, "spec.mode"),
    ("max-partial", {"spec.partial": _DELETE}, "spec.partial"),
    ("max-partial", {"spec.partial": {"pairs": [], "rules": []}}, "spec.partial"),
    ("max-partial", {"spec.topology": "full-mesh"}, "spec.partial"),
    ("max-partial", {"spec.partial.pairs[0]": ["node-a", "node-a"]}, "spec.partial.pairs[0]"),
    ("max-partial", {f"{_TO}.values": []}, f"{_TO}.values"),
    ("max-gw", {"spec.prefixes[0]": "198.19.209.1/24"}, "spec.prefixes[0]"),
    ("max-gw", {"spec.sites": ["max-site", "max-site"]}, "spec.sites"),
    ("max-gw", {"spec.crypto.childLifetimeSeconds": 30000}, "spec.crypto.childLifetimeSeconds"),
    ("max-gw", {"spec.crypto.dpd.timeoutSeconds": 30}, "spec.crypto.dpd.timeoutSeconds"),
    # Lifetimes inside the widest range (the schema's bounds) but outside the resource's profile.
    (
        "max-gw",
        {"spec.profile": _DELETE, "spec.crypto.ikeLifetimeSeconds": 90000},
        "spec.crypto.ikeLifetimeSeconds",
    ),
    (
        "max-gw",
        {
            "spec.profile": _DELETE,
            "spec.crypto.ikeLifetimeSeconds": 172000,
            "spec.crypto.childLifetimeSeconds": 90000,
        },
        "spec.crypto.childLifetimeSeconds",
    ),
    (
        "max-gw",
        {"spec.profile": "aws", "spec.crypto.ikeLifetimeSeconds": 600},
        "spec.crypto.ikeLifetimeSeconds",
    ),
    (
        "max-gw",
        {"spec.profile": "aws", "spec.crypto.childLifetimeSeconds": 7200},
        "spec.crypto.childLifetimeSeconds",
    ),
    ("max-gw", {"spec.profile": "gcp"}, "spec.crypto.ikeLifetimeSeconds"),
    ("max-gw", {"spec.auth.pskSecretRef": "Partner_PSK"}, "spec.auth.pskSecretRef"),
    ("max-user", {"spec.identity": "max user@example.test"}, "spec.identity"),
    ("max-user", {"spec.identity": "max@example.test\x7f"}, "spec.identity"),
    ("max-user", {"spec.pool": "Max_Pool"}, "spec.pool"),
    ("max-user", {"spec.devices[0].name": "max.phone."}, "spec.devices[0].name"),
    ("max-pool", {"spec.addresses[0]": "198.19.240.1/24"}, "spec.addresses[0]"),
    ("max-pool", {"spec.addresses[0]": "198.18.0.0/15"}, "spec.addresses[0]"),
    ("max-pool", {"spec.addresses[0]": "198.19.240.0/31"}, "spec.addresses[0]"),
    ("max-pool", {"spec.addresses[1]": "2001:db8:240::/104"}, "spec.addresses[1]"),
    ("max-pool", {"spec.addresses": ["198.19.240.0/24", "198.19.241.0/24"]}, "spec.addresses"),
    ("max-pool", {"spec.routes.mode": "full"}, "spec.routes.prefixes"),
    ("max-pool", {"spec.routes": _DELETE}, "spec.routes"),
    ("max-pool", {"spec.routes.prefixes": []}, "spec.routes"),
    ("max-pool", {"spec.routes.prefixes[0]": "0.0.0.0/0"}, "spec.routes.prefixes[0]"),
    ("max-pool", {f"{_POOL_GATEWAYS}.values": []}, f"{_POOL_GATEWAYS}.values"),
    ("max-pool", {f"{_POOL_GATEWAYS}.operator": "Exists"}, f"{_POOL_GATEWAYS}.values"),
    ("max-pool", {"spec.crypto.dpd.timeoutSeconds": 10}, "spec.crypto.dpd.timeoutSeconds"),
    ("max-pool", {"spec.crypto.childLifetimeSeconds": 20000}, "spec.crypto.childLifetimeSeconds"),
    (
        "max-gw",
        {"spec.profile": "gcp", "spec.crypto.ikeLifetimeSeconds": 36000},
        "spec.crypto.childLifetimeSeconds",
    ),
]


@pytest.mark.parametrize(("name", "changes", "where"), BROKEN, ids=[f"{n}:{c}" for n, c, _ in BROKEN])
def test_broken_documents_refused_by_a_rule_and_the_parser(
    name: str, changes: dict[str, object], where: str
) -> None:
    doc = _changed(name, changes)
    found = cel_errors(doc)
    assert any(p == where or p.startswith(where + "[") for p, _ in found), found
    assert crd_errors(doc) == [], "types and bounds alone catch it: not a case for a rule"
    assert any(p == where or p.startswith(where) for p, _ in parser_errors(doc)), parser_errors(doc)


def test_every_rule_is_exercised() -> None:
    """Each rule of each CRD refuses at least one document above: a rule no case reaches is
    unproven. (One rule at several places, as in every label selector, counts once.)"""
    fired: set[tuple[str, str]] = set()
    for name, changes, _ in BROKEN:
        doc = _changed(name, changes)
        kind = crds.kind_of(doc["kind"])
        for rule_path, rule in cel.rules_in(schema_of(kind)):
            fired.update((kind.value, r) for r in _failing(doc, rule_path, rule))
    every = {(kind.value, rule["rule"]) for kind in Kind for _, rule in cel.rules_in(schema_of(kind))}
    assert every - fired == set()


def _failing(doc: dict[str, Any], rule_path: str, rule: dict[str, str]) -> list[str]:
    """The rule's text once per value at `rule_path` in `doc` that it refuses."""
    values: list[object] = [doc]
    for part in [p for p in rule_path.split(".") if p]:
        step: list[object] = []
        name, lists = part.rstrip("[]"), part.count("[]")
        for v in values:
            if isinstance(v, dict) and name in v:
                found = [v[name]]
                for _ in range(lists):
                    found = [x for f in found if isinstance(f, list) for x in f]
                step.extend(found)
        values = step
    return [rule["rule"] for v in values if not cel.evaluate(rule["rule"], v)]


def test_shims_follow_kubernetes_cidr_semantics() -> None:
    """The behaviour documented for Kubernetes' CIDR library, which the rules rely on."""
    assert cel.evaluate("isCIDR(self)", "198.19.0.0/16")
    assert not cel.evaluate("isCIDR(self)", "198.19.0.0")  # no prefix length
    assert not cel.evaluate("isCIDR(self)", "198.19.0.0/33")
    assert cel.evaluate("cidr(self).masked() == cidr('198.19.0.0/16')", "198.19.7.1/16")
    assert not cel.evaluate("cidr(self) == cidr(self).masked()", "198.19.7.1/16")
    assert cel.evaluate("cidr('198.19.0.0/16').containsCIDR(cidr(self))", "198.19.7.0/24")
    assert not cel.evaluate("cidr('198.19.7.0/24').containsCIDR(cidr(self))", "198.19.0.0/16")
    assert not cel.evaluate("cidr('::/0').containsCIDR(cidr(self))", "198.19.0.0/16")
    assert cel.evaluate("cidr(self).prefixLength() == 20", "198.19.16.0/20")
    assert cel.evaluate("cidr(self).prefixLength() == 0", "0.0.0.0/0")
    # An unknown function is an evaluation error, which counts as a refusal: no silent pass.
    assert not cel.evaluate("quantity(self).isGreaterThan(quantity('1'))", "2")


def _schema_at(schema: dict[str, Any], path: str) -> dict[str, Any]:
    node = schema
    for part in [p for p in path.split(".") if p]:
        name, lists = part.rstrip("[]"), part.count("[]")
        node = node["properties"][name]
        for _ in range(lists):
            node = node["items"]
    return node


@pytest.mark.parametrize("kind", list(Kind), ids=lambda k: k.value)
def test_every_field_path_names_a_field_of_the_schema(kind: Kind) -> None:
    """The API server refuses a CRD whose rule's fieldPath names no field below the rule."""
    schema = schema_of(kind)
    for path, rule in cel.rules_in(schema):
        here = _schema_at(schema, path)
        if "fieldPath" in rule:
            assert rule["fieldPath"].startswith(".")
            _schema_at(here, rule["fieldPath"])  # KeyError if it names nothing
        assert rule["message"] and "\n" not in rule["message"]
