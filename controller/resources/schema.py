"""Machine-readable shape of each kind's ``spec`` and ``status``: the single source the CRDs'
openAPIV3Schema is generated from (`meshsec.controller.operator.crds`).

The parser (`parse.py`) stays the authority on what is valid; this table states the shape
(field names, types, enums, numeric bounds, required fields) and the per-object rules (CEL
``x-kubernetes-validations``: host bits, nesting, fields valid only with a topology, lifetimes per
profile) that Kubernetes can check before a custom resource is stored. A rule mirrors a check of
the parser and is never stricter; what needs another resource stays with the parser. Enum values
and lifetime bounds are taken from the model and the cloud profiles, not restated.
`tests/k8s/test_schema.py` keeps the two from drifting: every object's property names must equal
the keys the parser accepts at that path, and the examples and a set of broken documents must get
the same verdict from both; `tests/k8s/test_crd_rules.py` evaluates every rule.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from meshsec.controller.resources.cloud import PROFILES
from meshsec.controller.resources.fields import DNS_SUBDOMAIN_PATTERN
from meshsec.controller.resources.model import (
    AuthMethod,
    CloudProfileName,
    DpdAction,
    IpsecProtocol,
    Kind,
    Mode,
    Platform,
    RemoteAuthMethod,
    RouteMode,
    Scope,
    StartAction,
    Topology,
)
from meshsec.controller.resources.parse_remote import MAX_POOL_PREFIX_BITS, MIN_POOL_PREFIX_BITS
from meshsec.controller.resources.selector import Operator

MAX_INT32 = 2**31 - 1
# Longest text forms: an IPv6 address with an embedded IPv4 one is 45 characters, plus "/128". They
# bound the cost the API server estimates for each CEL rule on such a string.
MAX_IP_TEXT = 45
MAX_CIDR_TEXT = MAX_IP_TEXT + 4
# Prefix lists in a custom resource: the overlap rule compares every pair, and the API server
# refuses a CRD whose rules it cannot bound. `meshctl apply` has no such cap.
MAX_PREFIXES = 128


@dataclass(frozen=True, slots=True)
class Rule:
    """One CEL rule (Kubernetes `x-kubernetes-validations`), evaluated with ``self`` the value at
    its place in the schema; ``field`` (e.g. ``.hubs``) is where the error is reported."""

    rule: str
    message: str
    field: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class String:
    description: str = ""
    enum: tuple[str, ...] = ()
    # "ip" (IPv4 or IPv6 address), "cidr" or "" (any string).
    format: str = ""
    min_length: int = 1
    max_length: int | None = None
    rules: tuple[Rule, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Integer:
    description: str = ""
    minimum: int | None = None
    maximum: int | None = None
    rules: tuple[Rule, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Boolean:
    description: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class StringMap:
    description: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Array:
    items: Schema
    description: str = ""
    min_items: int = 0
    max_items: int | None = None
    # Items are objects identified by these keys (server-side apply merges them per key).
    map_keys: tuple[str, ...] = ()
    # Items are unique scalars (the API server refuses a duplicate itself).
    unique: bool = False
    rules: tuple[Rule, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Object:
    properties: Mapping[str, Schema]
    description: str = ""
    required: tuple[str, ...] = ()
    rules: tuple[Rule, ...] = ()


Schema = String | Integer | Boolean | StringMap | Array | Object


def _values(enum_type: type[enum.Enum]) -> tuple[str, ...]:
    return tuple(str(m.value) for m in enum_type)


def _lifetime_bounds(names: tuple[CloudProfileName, ...], child: bool) -> tuple[int, int]:
    """The widest range any of these profiles allows; the parser narrows it per profile."""
    ranges = [PROFILES[n].child_lifetime_range if child else PROFILES[n].ike_lifetime_range for n in names]
    return min(low for low, _ in ranges), max(high for _, high in ranges)


def _one_of(field: str, values: tuple[str, ...]) -> str:
    return f"self.{field} in [{', '.join(repr(v) for v in values)}]"


def _nonempty(field: str) -> str:
    """CEL: the list field is present and has an item (what the parser's truthiness test says)."""
    return f"(has(self.{field}) && size(self.{field}) > 0)"


_WITH_VALUES = (Operator.IN.value, Operator.NOT_IN.value)
_WITHOUT_VALUES = (Operator.EXISTS.value, Operator.DOES_NOT_EXIST.value)
# fields.Fields.selector: In/NotIn need values, Exists/DoesNotExist take none.
_EXPRESSION_RULES = (
    Rule(
        f"!({_one_of('operator', _WITH_VALUES)}) || {_nonempty('values')}",
        "In and NotIn need at least one value",
        ".values",
    ),
    Rule(
        f"!({_one_of('operator', _WITHOUT_VALUES)}) || !{_nonempty('values')}",
        "Exists and DoesNotExist take no values",
        ".values",
    ),
)


def _selector(description: str) -> Object:
    return Object(
        description=description + " (Kubernetes label selector; {} selects everything)",
        properties={
            "matchLabels": StringMap(description="labels that must all be equal"),
            "matchExpressions": Array(
                items=Object(
                    properties={
                        "key": String(description="label key"),
                        "operator": String(enum=_values(Operator)),
                        "values": Array(items=String(), description="for In and NotIn; empty otherwise"),
                    },
                    required=("key", "operator"),
                    rules=_EXPRESSION_RULES,
                )
            ),
        },
    )


# fields.Fields.prefixes parses with strict=True: an address with host bits set is refused.
_HOST_BITS = Rule(
    "!isCIDR(self) || cidr(self) == cidr(self).masked()",
    "host bits must be zero (198.19.10.0/24, not 198.19.10.1/24)",
)
# overlap.nested_pairs: no prefix of a Site may contain another (equal ones are merged).
_NOT_NESTED = Rule(
    "self.all(a, !isCIDR(a) || self.all(b, !isCIDR(b)"
    " || cidr(a) == cidr(b) || !cidr(a).containsCIDR(cidr(b))))",
    "prefixes must not overlap",
)


def _prefixes(description: str, min_items: int = 0, rules: tuple[Rule, ...] = ()) -> Array:
    return Array(
        items=String(format="cidr", rules=(_HOST_BITS,)),
        description=description,
        min_items=min_items,
        max_items=MAX_PREFIXES,
        rules=rules,
    )


def _lifetime_rules(f: str, profiles: tuple[CloudProfileName, ...]) -> tuple[Rule, ...]:
    """crypto.parse_crypto: a lifetime given in the crypto block ``f`` must lie in the range of
    the resource's profile (absent: generic); one rule per profile and lifetime."""
    out = []
    for key, child in (("ikeLifetimeSeconds", False), ("childLifetimeSeconds", True)):
        value = f"self.{f}.{key}"
        for name in profiles:
            profile = PROFILES[name]
            low, high = profile.child_lifetime_range if child else profile.ike_lifetime_range
            if (low, high) == _lifetime_bounds(profiles, child):
                continue  # the schema's minimum and maximum say it already
            out.append(
                Rule(
                    f"!has(self.{f}) || !has({value}) || {_PROFILE} != {name.value!r}"
                    f" || ({low} <= {value} && {value} <= {high})",
                    f"the {name.value} profile allows {low} to {high}",
                    f".{f}.{key}",
                )
            )
    return tuple(out)


def _crypto(profiles: tuple[CloudProfileName, ...], description: str) -> Object:
    ike_low, ike_high = _lifetime_bounds(profiles, child=False)
    child_low, child_high = _lifetime_bounds(profiles, child=True)
    return Object(
        description=description,
        properties={
            "ikeProposals": Array(
                items=String(),
                description="strongSwan-style proposals, e.g. aes256gcm16-prfsha256-x25519; ke1_..ke7_"
                " add RFC 9370 key exchanges, e.g. aes256gcm16-prfsha256-x25519-ke1_mlkem768",
            ),
            "espProposals": Array(
                items=String(),
                description="ESP (or AH) proposals; a D-H group in them means PFS, ke1_mlkem768 a hybrid PFS",
            ),
            "ikeLifetimeSeconds": Integer(minimum=ike_low, maximum=ike_high),
            "childLifetimeSeconds": Integer(
                minimum=child_low, maximum=child_high, description="not above ikeLifetimeSeconds"
            ),
            "pfs": Boolean(description="must agree with the D-H groups in espProposals"),
            "dpd": Object(
                properties={
                    "delaySeconds": Integer(minimum=1, maximum=3600),
                    "timeoutSeconds": Integer(minimum=1, maximum=86400, description="at least delaySeconds"),
                    "action": String(enum=_values(DpdAction)),
                },
                rules=(
                    Rule(
                        "!has(self.delaySeconds) || !has(self.timeoutSeconds)"
                        " || self.timeoutSeconds >= self.delaySeconds",
                        "shorter than delaySeconds",
                        ".timeoutSeconds",
                    ),
                ),
            ),
        },
        rules=(
            # Only when both are given: a default lifetime depends on the profile.
            Rule(
                "!has(self.ikeLifetimeSeconds) || !has(self.childLifetimeSeconds)"
                " || self.childLifetimeSeconds <= self.ikeLifetimeSeconds",
                "exceeds ikeLifetimeSeconds",
                ".childLifetimeSeconds",
            ),
        ),
    )


_START_ACTION = String(enum=_values(StartAction), description="for the initiating side")
# fields.valid_name: a lowercase DNS subdomain of at most 253 characters (the bound also bounds
# the rule's cost). The parser's own pattern, which RE2 reads the same way.
MAX_NAME = 253
_DNS_NAME_RULE = Rule(f"self.matches(r'{DNS_SUBDOMAIN_PATTERN}')", "must be a lowercase DNS subdomain name")


def _name(description: str) -> String:
    return String(description=description, max_length=MAX_NAME, rules=(_DNS_NAME_RULE,))


_HUB = Topology.HUB_AND_SPOKE.value
_PROFILE = f"(has(self.profile) ? self.profile : {CloudProfileName.GENERIC.value!r})"
_PARTIAL = Topology.PARTIAL.value

SITE_SPEC = Object(
    properties={
        "prefixes": _prefixes("CIDRs behind the site (host bits zero, no overlaps)", 1, (_NOT_NESTED,)),
        "gatewaySelector": _selector("nodes of this site that are its gateways"),
    },
    required=("prefixes", "gatewaySelector"),
)

NODE_SPEC = Object(
    properties={
        "site": String(description="name of the Site the node belongs to"),
        "endpoints": Object(
            description="underlay addresses; at least one",
            properties={
                "public": Array(items=String(format="ip")),
                "private": Array(items=String(format="ip")),
            },
            rules=(
                Rule(
                    f"{_nonempty('public')} || {_nonempty('private')}",
                    "needs at least one public or private address",
                ),
            ),
        ),
        "identity": Object(
            properties={
                "ikeId": String(description="IKE identity; defaults to the node name"),
                "certificateId": String(description="serial of the certificate the controller CA issued"),
            }
        ),
        "prefixes": _prefixes("CIDRs the node routes (e.g. its podCIDRs): node-scope tunnel-mode selectors"),
    },
    required=("site", "endpoints"),
)

MESH_POLICY_SPEC = Object(
    properties={
        "topology": String(enum=_values(Topology)),
        "scope": String(enum=_values(Scope), description="node: node to node; site: gateway to gateway"),
        "members": _selector("Nodes (scope node) or Sites (scope site) in the mesh"),
        "hubs": Object(
            description="hub-and-spoke only",
            properties={
                "selector": _selector("the members that are hubs"),
                "spokeToSpoke": Boolean(description="hubs carry spoke-to-spoke traffic"),
                "transitPrefixes": _prefixes("with spokeToSpoke: supernets spokes reach through hubs"),
            },
            required=("selector",),
            rules=(
                Rule(
                    f"!{_nonempty('transitPrefixes')} || (has(self.spokeToSpoke) && self.spokeToSpoke)",
                    "only meaningful with spokeToSpoke: true",
                    ".transitPrefixes",
                ),
            ),
        ),
        "partial": Object(
            description="partial only: pairs and/or rules",
            properties={
                "pairs": Array(
                    items=Array(
                        items=String(),
                        min_items=2,
                        max_items=2,
                        rules=(Rule("size(self) != 2 || self[0] != self[1]", "pairs a member with itself"),),
                    )
                ),
                "rules": Array(
                    items=Object(
                        properties={"from": _selector("one side"), "to": _selector("other side")},
                        required=("from", "to"),
                    )
                ),
            },
        ),
        "crypto": _crypto((CloudProfileName.GENERIC,), "defaults: the generic profile"),
        "auth": Object(
            properties={
                "method": String(enum=_values(AuthMethod)),
                "pskGeneration": Integer(minimum=1, maximum=MAX_INT32, description="bump to rotate PSKs"),
            }
        ),
        "mode": String(enum=_values(Mode), description="transport needs scope node"),
        "protocol": String(enum=_values(IpsecProtocol)),
        "startAction": _START_ACTION,
    },
    required=("topology", "scope", "members"),
    rules=(
        Rule(f"self.topology != {_HUB!r} || has(self.hubs)", f"required for topology {_HUB}", ".hubs"),
        Rule(f"self.topology == {_HUB!r} || !has(self.hubs)", f"only valid for topology {_HUB}", ".hubs"),
        Rule(
            f"self.topology != {_PARTIAL!r}"
            f" || (has(self.partial) && ({_nonempty('partial.pairs')} || {_nonempty('partial.rules')}))",
            f"topology {_PARTIAL} needs pairs or rules",
            ".partial",
        ),
        Rule(
            f"self.topology == {_PARTIAL!r} || !has(self.partial)",
            f"only valid for topology {_PARTIAL}",
            ".partial",
        ),
        Rule(
            f"!has(self.mode) || self.mode != {Mode.TRANSPORT.value!r} || self.scope != {Scope.SITE.value!r}",
            "transport mode protects node addresses only; use scope node",
            ".mode",
        ),
    ),
)

EXTERNAL_GATEWAY_SPEC = Object(
    properties={
        "address": String(format="ip"),
        "ikeId": String(description="defaults to the address"),
        "auth": Object(
            properties={"pskSecretRef": _name("name of the Secret holding the PSK")},
            required=("pskSecretRef",),
        ),
        "prefixes": _prefixes("CIDRs behind the gateway", min_items=1),
        "sites": Array(
            items=String(), min_items=1, unique=True, description="every gateway of these sites connects"
        ),
        "profile": String(enum=_values(CloudProfileName)),
        "crypto": _crypto(tuple(CloudProfileName), "overrides, checked against the profile"),
        "startAction": _START_ACTION,
    },
    required=("address", "auth", "prefixes", "sites"),
    rules=_lifetime_rules("crypto", tuple(CloudProfileName)),
)


def _pool_size_rule() -> Rule:
    """parse_remote.pool_spec: a range holds at most 2^MAX_POOL_PREFIX_BITS addresses and more
    than 2^MIN_POOL_PREFIX_BITS (a colon marks IPv6, as `format: cidr` leaves no other kind)."""
    bounds = {bits: (bits - MAX_POOL_PREFIX_BITS, bits - MIN_POOL_PREFIX_BITS - 1) for bits in (32, 128)}
    length = "cidr(self).prefixLength()"

    def within(bits: int) -> str:
        low, high = bounds[bits]
        return f"({low} <= {length} && {length} <= {high})"

    return Rule(
        f"!isCIDR(self) || (self.contains(':') ? {within(128)} : {within(32)})",
        f"IPv4 ranges are /{bounds[32][0]} to /{bounds[32][1]}, IPv6 /{bounds[128][0]} to /{bounds[128][1]}",
    )


_FULL = RouteMode.FULL.value

REMOTE_ACCESS_POOL_SPEC = Object(
    properties={
        "addresses": Array(
            items=String(format="cidr", rules=(_HOST_BITS, _pool_size_rule())),
            min_items=1,
            max_items=2,
            description="client address ranges: at most one IPv4 (/16../30) and one IPv6 (/112../126)",
            rules=(
                Rule(
                    "size(self) < 2 || self[0].contains(':') != self[1].contains(':')",
                    "at most one IPv4 and one IPv6 range per pool",
                ),
            ),
        ),
        "dns": Array(items=String(format="ip"), description="DNS servers handed to clients"),
        "routes": Object(
            properties={
                "mode": String(enum=_values(RouteMode), description="split: only prefixes; full: everything"),
                "prefixes": Array(
                    items=String(
                        format="cidr",
                        rules=(
                            _HOST_BITS,
                            Rule(
                                "!isCIDR(self) || cidr(self).prefixLength() > 0",
                                "a /0 is a full tunnel; say mode: full",
                            ),
                        ),
                    ),
                    description="split mode: what goes through the tunnel",
                    max_items=MAX_PREFIXES,
                ),
            },
            rules=(
                Rule(
                    f"!has(self.mode) || self.mode != {_FULL!r} || !{_nonempty('prefixes')}",
                    "mode full routes everything; leave prefixes out",
                    ".prefixes",
                ),
            ),
        ),
        "gateways": _selector("Nodes that terminate this pool's clients"),
        "auth": Object(
            properties={
                "methods": Array(
                    items=String(enum=_values(RemoteAuthMethod)), description="allowed; default certificate"
                )
            }
        ),
        "crypto": _crypto((CloudProfileName.GENERIC,), "defaults: what phones and laptops offer natively"),
    },
    required=("addresses", "gateways"),
    rules=(
        # Split is the default mode, and a pool without routes is split with nothing to route.
        Rule(
            f"has(self.routes) && ((has(self.routes.mode) && self.routes.mode == {_FULL!r})"
            " || (has(self.routes.prefixes) && size(self.routes.prefixes) > 0))",
            "split routes need at least one prefix (or mode: full)",
            ".routes",
        ),
    ),
)

REMOTE_ACCESS_USER_SPEC = Object(
    properties={
        "identity": String(
            description="EAP identity and certificate e-mail; defaults to the name",
            max_length=MAX_NAME,
            rules=(
                # user_spec: no space and nothing unprintable (ASCII controls here; the parser
                # also refuses other unprintable characters).
                Rule(r"!self.matches(r'[\s\x00-\x1f\x7f]')", "must not contain spaces or control characters"),
            ),
        ),
        "pool": _name("name of the RemoteAccessPool"),
        "auth": Object(
            properties={"method": String(enum=_values(RemoteAuthMethod))},
            description="the password (eap-mschapv2) is set with meshctl, never here",
        ),
        "devices": Array(
            items=Object(
                properties={"name": _name("device name"), "platform": String(enum=_values(Platform))},
                required=("name", "platform"),
            ),
            map_keys=("name",),
            description="one client profile and certificate per device",
        ),
    },
    required=("pool",),
)

SPECS: dict[Kind, Object] = {
    Kind.SITE: SITE_SPEC,
    Kind.NODE: NODE_SPEC,
    Kind.MESH_POLICY: MESH_POLICY_SPEC,
    Kind.EXTERNAL_GATEWAY: EXTERNAL_GATEWAY_SPEC,
    Kind.REMOTE_ACCESS_POOL: REMOTE_ACCESS_POOL_SPEC,
    Kind.REMOTE_ACCESS_USER: REMOTE_ACCESS_USER_SPEC,
}

# --- status: observed state, written by the controller side, never a mesh input ------------------

CONDITION = Object(
    properties={
        "type": String(description="Ready, Synced"),
        "status": String(enum=("True", "False", "Unknown")),
        "reason": String(min_length=0, description="CamelCase, e.g. Applied, ValidationFailed"),
        "message": String(
            min_length=0, description="for validation failures: every problem as field.path: reason"
        ),
        "lastTransitionTime": String(description="RFC 3339"),
        "observedGeneration": Integer(minimum=0),
    },
    required=("type", "status"),
)

_STATUS_COMMON: dict[str, Schema] = {
    "observedGeneration": Integer(minimum=0, description="metadata.generation the conditions are about"),
    "conditions": Array(items=CONDITION, map_keys=("type",)),
    "tunnels": Object(
        description="tunnels this resource takes part in, as the controller sees them",
        properties={
            "desired": Integer(minimum=0),
            "established": Integer(minimum=0),
            "failed": Integer(minimum=0),
        },
    ),
}

STATUS: dict[Kind, Object] = {
    Kind.SITE: Object(properties=_STATUS_COMMON),
    Kind.NODE: Object(
        properties={
            **_STATUS_COMMON,
            "phase": String(
                enum=("Pending", "Online", "Offline"),
                description="Online: its agent reported within the heartbeat interval",
            ),
            "lastSeen": String(description="RFC 3339 time of the agent's last accepted report"),
            "observedEndpoints": Array(items=String(format="ip")),
        }
    ),
    Kind.MESH_POLICY: Object(properties=_STATUS_COMMON),
    Kind.EXTERNAL_GATEWAY: Object(properties=_STATUS_COMMON),
    Kind.REMOTE_ACCESS_POOL: Object(properties=_STATUS_COMMON),
    Kind.REMOTE_ACCESS_USER: Object(properties=_STATUS_COMMON),
}


# --- rendering -------------------------------------------------------------------------------------


def to_openapi(schema: Schema) -> dict[str, Any]:
    """A structural OpenAPI v3 schema as Kubernetes' apiextensions/v1 accepts it."""
    out: dict[str, Any] = {}
    if isinstance(schema, String):
        out["type"] = "string"
        if schema.min_length:
            out["minLength"] = schema.min_length
        if schema.max_length is not None:
            out["maxLength"] = schema.max_length
        if schema.enum:
            out["enum"] = list(schema.enum)
        if schema.format == "cidr":
            out["format"] = "cidr"
            out["maxLength"] = MAX_CIDR_TEXT
        elif schema.format == "ip":
            out["maxLength"] = MAX_IP_TEXT
            out["anyOf"] = [{"format": "ipv4"}, {"format": "ipv6"}]
    elif isinstance(schema, Integer):
        out["type"] = "integer"
        if schema.minimum is not None:
            out["minimum"] = schema.minimum
        if schema.maximum is not None:
            out["maximum"] = schema.maximum
    elif isinstance(schema, Boolean):
        out["type"] = "boolean"
    elif isinstance(schema, StringMap):
        out["type"] = "object"
        out["additionalProperties"] = {"type": "string"}
    elif isinstance(schema, Array):
        out["type"] = "array"
        out["items"] = to_openapi(schema.items)
        if schema.min_items:
            out["minItems"] = schema.min_items
        if schema.max_items is not None:
            out["maxItems"] = schema.max_items
        if schema.map_keys:
            out["x-kubernetes-list-type"] = "map"
            out["x-kubernetes-list-map-keys"] = list(schema.map_keys)
        elif schema.unique:
            out["x-kubernetes-list-type"] = "set"
    else:
        out["type"] = "object"
        out["properties"] = {name: to_openapi(sub) for name, sub in schema.properties.items()}
        if schema.required:
            out["required"] = list(schema.required)
    if schema.description:
        out["description"] = schema.description
    if not isinstance(schema, (Boolean, StringMap)) and schema.rules:
        out["x-kubernetes-validations"] = [_validation(r) for r in schema.rules]
    return out


def _validation(rule: Rule) -> dict[str, str]:
    out = {"rule": rule.rule, "message": rule.message}
    if rule.field:
        out["fieldPath"] = rule.field
    return out


def objects(schema: Schema, path: str = "") -> Iterator[tuple[str, Object]]:
    """Every Object in the tree with its path; list items are written ``path[]``."""
    if isinstance(schema, Object):
        yield path, schema
        for name, sub in schema.properties.items():
            yield from objects(sub, f"{path}.{name}" if path else name)
    elif isinstance(schema, Array):
        yield from objects(schema.items, f"{path}[]")


__all__ = [
    "SPECS",
    "STATUS",
    "Array",
    "Boolean",
    "Integer",
    "Object",
    "Rule",
    "Schema",
    "String",
    "StringMap",
    "objects",
    "to_openapi",
]
