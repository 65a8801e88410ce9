"""The CRDs' CEL rules (`x-kubernetes-validations`) evaluated as the API server does, with
cel-python for the language and small shims for the Kubernetes CEL library functions the rules use.

Kubernetes' CIDR library (1.31+) is reproduced as far as the rules need it: ``isCIDR(s)`` (an
address, a slash and a prefix length, no zone), ``cidr(s)`` (keeps the address as written, so
``cidr('10.0.0.1/8') != cidr('10.0.0.1/8').masked()``), ``.masked()``, ``.containsCIDR(c)``
(false across address families) and ``==``. No other extension function is provided, so a rule
that used one would fail here, not pass unnoticed. Rule placement follows the API server: a rule
runs with ``self`` the value at its schema node, only where that value is present; its error is
reported at the node's path plus the rule's ``fieldPath``. ``x-kubernetes-list-type: set`` is
checked too (the API server refuses duplicates itself).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from functools import cache
from typing import Any

import pytest

celpy = pytest.importorskip("celpy", reason="cel-python not installed (k8s test dependency)")
celtypes = celpy.celtypes


class Cidr:
    """Kubernetes' CIDR value: the address as written and its prefix length."""

    def __init__(self, text: object) -> None:
        if not is_cidr(text):
            raise ValueError(f"network address parse error during conversion from string: {text!r}")
        address, _, bits = str(text).partition("/")
        self.address = ipaddress.ip_address(address)
        self.network = ipaddress.ip_network(str(text), strict=False)
        self.bits = int(bits)

    def __eq__(self, other: object) -> Any:
        same = isinstance(other, Cidr) and (self.address, self.bits) == (other.address, other.bits)
        return celtypes.BoolType(same)

    def __ne__(self, other: object) -> Any:
        return celtypes.BoolType(not self.__eq__(other))

    def __hash__(self) -> int:
        return hash((self.address, self.bits))


def is_cidr(text: object) -> Any:
    value = str(text)
    if "/" not in value or "%" in value:
        return celtypes.BoolType(False)
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return celtypes.BoolType(False)
    return celtypes.BoolType(True)


def _masked(c: Cidr) -> Cidr:
    return Cidr(str(c.network))


def _prefix_length(c: Cidr) -> Any:
    return celtypes.IntType(c.bits)


def _contains_cidr(a: Cidr, b: Cidr) -> Any:
    return celtypes.BoolType(a.network.version == b.network.version and b.network.subnet_of(a.network))


FUNCTIONS = {
    "isCIDR": is_cidr,
    "cidr": Cidr,
    "masked": _masked,
    "containsCIDR": _contains_cidr,
    "prefixLength": _prefix_length,
}


@cache
def _program(rule: str) -> Any:
    env = celpy.Environment()
    return env.program(env.compile(rule), functions=FUNCTIONS)


def evaluate(rule: str, value: object) -> bool:
    """The rule's verdict on `value` as ``self``; a rule that cannot be evaluated counts as false
    (the API server reports an evaluation error as a failed validation too)."""
    try:
        result = _program(rule).evaluate({"self": celpy.json_to_cel(value)})
    except celpy.CELEvalError:
        return False
    if isinstance(result, celpy.CELEvalError):
        return False
    return bool(result)


def rules_in(schema: dict[str, Any]) -> Iterator[tuple[str, dict[str, str]]]:
    """(schema path, rule) for every rule of a schema, lists written ``path[]``."""
    for path, node in _nodes(schema, ""):
        for rule in node.get("x-kubernetes-validations", []):
            yield path, rule


def _nodes(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, sub in (node.get("properties") or {}).items():
        yield from _nodes(sub, f"{path}.{name}" if path else name)
    if isinstance(node.get("items"), dict):
        yield from _nodes(node["items"], f"{path}[]")


def violations(schema: dict[str, Any], value: object, path: str = "") -> list[tuple[str, str]]:
    """(path, message) for every CEL rule and list-set uniqueness the value breaks."""
    out: list[tuple[str, str]] = []
    for rule in schema.get("x-kubernetes-validations", []):
        if not evaluate(rule["rule"], value):
            out.append(((path + rule.get("fieldPath", "")).lstrip("."), rule["message"]))
    if isinstance(value, dict):
        for name, sub in (schema.get("properties") or {}).items():
            if name in value:
                out.extend(violations(sub, value[name], f"{path}.{name}"))
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        seen: list[object] = []
        for i, item in enumerate(value):
            if schema.get("x-kubernetes-list-type") == "set" and item in seen:
                out.append((f"{path}[{i}]".lstrip("."), f"Duplicate value: {item!r}"))
            seen.append(item)
            out.extend(violations(schema["items"], item, f"{path}[{i}]"))
    return out
