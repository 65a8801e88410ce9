"""Reading untyped manifest dicts field by field, recording every problem with its path.

Each reader returns a usable default after recording an error, so one pass over a manifest
reports all of its problems instead of the first one only.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from enum import Enum
from ipaddress import ip_address, ip_network
from typing import TypeVar

from meshsec.controller.resources.errors import FieldError
from meshsec.controller.resources.model import Address, Prefix
from meshsec.controller.resources.overlap import prefix_order
from meshsec.controller.resources.selector import LabelSelector, Operator, Requirement

_E = TypeVar("_E", bound=Enum)

MAX_LABEL_VALUE = 63  # characters, as Kubernetes (docs/resources.md, "Limits")

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
# The CRDs' CEL rules for names use the same pattern (resources/schema.py).
DNS_SUBDOMAIN_PATTERN = _DNS_SUBDOMAIN.pattern
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


class Fields:
    """A view of one mapping at ``path`` inside the resource ``kind/name``."""

    def __init__(self, data: object, path: str, errors: list[FieldError], kind: str, name: str) -> None:
        self.path = path
        self.errors = errors
        self.kind = kind
        self.name = name
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            self.error("", f"must be a mapping, got {type(data).__name__}")
            data = {}
        self.data: Mapping[str, object] = data

    def error(self, key: str | int, reason: str) -> None:
        path = _join(self.path, key) if key != "" else self.path
        self.errors.append(FieldError(self.kind, self.name, path, reason))

    def at(self, key: str | int) -> str:
        return _join(self.path, key)

    def only(self, *allowed: str) -> None:
        """Rejects unknown keys: a misspelt optional field must not silently fall back to a default."""
        for key in sorted(str(k) for k in self.data if k not in allowed):
            self.error(key, "unknown field")

    def has(self, key: str) -> bool:
        return key in self.data and self.data[key] is not None

    def sub(self, key: str) -> Fields:
        return Fields(self.data.get(key), self.at(key), self.errors, self.kind, self.name)

    def raw(self, key: str) -> object:
        return self.data.get(key)

    def string(self, key: str, default: str | None = None) -> str:
        value = self.data.get(key)
        if value is None:
            if default is None:
                self.error(key, "required")
            return default or ""
        if not isinstance(value, str) or not value:
            self.error(key, "must be a non-empty string")
            return default or ""
        return value

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            self.error(key, f"must be an integer, got {value!r}")
            return default
        if not low <= value <= high:
            self.error(key, f"{value} is outside {low}..{high}")
            return default
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            self.error(key, f"must be true or false, got {value!r}")
            return default
        return value

    def items(self, key: str, required: bool = False) -> Iterator[tuple[str, object]]:
        """Yields (path, item) for a list field."""
        value = self.data.get(key)
        if value is None:
            if required:
                self.error(key, "required")
            return
        if not isinstance(value, list):
            self.error(key, "must be a list")
            return
        if required and not value:
            self.error(key, "must not be empty")
        for i, item in enumerate(value):
            yield _join(self.at(key), i), item

    def _error_at(self, path: str, reason: str) -> None:
        self.errors.append(FieldError(self.kind, self.name, path, reason))

    def strings(self, key: str, required: bool = False) -> tuple[str, ...]:
        out: list[str] = []
        for path, item in self.items(key, required):
            if isinstance(item, str) and item:
                out.append(item)
            else:
                self._error_at(path, "must be a non-empty string")
        return tuple(out)

    def prefixes(self, key: str, required: bool = False) -> tuple[Prefix, ...]:
        out: list[Prefix] = []
        for path, item in self.items(key, required):
            try:
                out.append(ip_network(str(item), strict=True))
            except ValueError as exc:
                self._error_at(path, f"invalid CIDR {item!r}: {exc}")
        return tuple(sorted(set(out), key=prefix_order))

    def addresses(self, key: str) -> tuple[Address, ...]:
        out: list[Address] = []
        for path, item in self.items(key):
            address = parse_address(str(item))
            if address is None:
                self._error_at(path, f"invalid IP address {item!r}")
            else:
                out.append(address)
        return tuple(out)

    def address(self, key: str) -> Address | None:
        text = self.string(key)
        if not text:
            return None
        address = parse_address(text)
        if address is None:
            self.error(key, f"invalid IP address {text!r}")
        return address

    def enum(self, key: str, enum_type: type[_E], default: _E | None = None) -> _E:
        value = self.data.get(key)
        if value is None and default is not None:
            return default
        choices = [m.value for m in enum_type]
        for member in enum_type:
            if member.value == value:
                return member
        self.error(key, f"must be one of {', '.join(map(str, choices))}" if value is not None else "required")
        return default if default is not None else next(iter(enum_type))

    def selector(self, key: str, required: bool = True) -> LabelSelector:
        if not self.has(key):
            if required:
                self.error(key, "required")
            return LabelSelector()
        sel = self.sub(key)
        sel.only("matchLabels", "matchExpressions")
        match_labels = sel.labels("matchLabels")
        requirements: list[Requirement] = []
        for path, item in sel.items("matchExpressions"):
            expr = Fields(item, path, self.errors, self.kind, self.name)
            expr.only("key", "operator", "values")
            req_key = expr.string("key")
            operator = expr.enum("operator", Operator)
            values = expr.strings("values")
            if operator in (Operator.IN, Operator.NOT_IN) and not values:
                expr.error("values", f"{operator.value} needs at least one value")
            if operator in (Operator.EXISTS, Operator.DOES_NOT_EXIST) and values:
                expr.error("values", f"{operator.value} takes no values")
            requirements.append(Requirement(req_key, operator, tuple(sorted(set(values)))))
        return LabelSelector(tuple(sorted(match_labels.items())), tuple(requirements))

    def labels(self, key: str) -> dict[str, str]:
        raw = self.data.get(key)
        if raw is None:
            return {}
        if not isinstance(raw, Mapping):
            self.error(key, "must be a mapping of strings")
            return {}
        out: dict[str, str] = {}
        for k, v in raw.items():
            path = _join(self.at(key), str(k))
            if not isinstance(k, str) or not valid_label_key(k):
                self._error_at(path, "invalid label key")
            elif isinstance(v, str) and len(v) > MAX_LABEL_VALUE:
                self._error_at(path, f"label value of {len(v)} characters; at most {MAX_LABEL_VALUE}")
            elif not isinstance(v, str) or (v and not _LABEL_NAME.match(v)):
                self._error_at(path, f"invalid label value {v!r}")
            else:
                out[k] = v
        return out


def valid_name(name: str) -> bool:
    return len(name) <= 253 and bool(_DNS_SUBDOMAIN.match(name))


def valid_label_key(key: str) -> bool:
    prefix, _, name = key.rpartition("/")
    if prefix and not valid_name(prefix):
        return False
    return len(name) <= 63 and bool(_LABEL_NAME.match(name))


def parse_address(text: str) -> Address | None:
    try:
        return ip_address(text)
    except ValueError:
        return None
