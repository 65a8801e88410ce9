"""The CRDs' openAPIV3Schema (generated from controller/resources/schema.py) against the parser.

Drift: for every object the parser reads with a closed key set, the schema must list exactly
those keys; every schema field must occur in tests/k8s/maximal.yaml. Verdicts: the examples and
the maximal documents pass both; broken documents are refused by both, at the same field path.
"""

from __future__ import annotations

import copy
import ipaddress
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshsec.controller.operator import crds
from meshsec.controller.operator.conditions import manifest
from meshsec.controller.resources import Kind, ValidationError, parse_resource
from meshsec.controller.resources.fields import Fields
from meshsec.controller.resources.schema import SPECS, Object, objects

jsonschema = pytest.importorskip("jsonschema", reason="jsonschema (comes with kubernetes-validate) missing")

ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = ROOT / "deploy/helm/meshsec/templates/crds"
EXAMPLES = sorted((ROOT / "deploy/examples").glob("*.yaml"))
MAXIMAL = Path(__file__).with_name("maximal.yaml")


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _format_checker() -> Any:
    """Kubernetes' formats: cidr is Go's net.ParseCIDR (host bits allowed), ipv4/ipv6 net.ParseIP."""
    checker = jsonschema.FormatChecker(formats=())

    @checker.checks("cidr", raises=ValueError)
    def _cidr(value: object) -> bool:
        return not isinstance(value, str) or bool(ipaddress.ip_network(value, strict=False))

    @checker.checks("ipv4", raises=ValueError)
    def _ipv4(value: object) -> bool:
        return not isinstance(value, str) or bool(ipaddress.IPv4Address(value))

    @checker.checks("ipv6", raises=ValueError)
    def _ipv6(value: object) -> bool:
        return not isinstance(value, str) or bool(ipaddress.IPv6Address(value))

    return checker


def crd_errors(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """(path, message) for every violation of the kind's CRD schema, as the API server checks it."""
    kind = crds.kind_of(doc["kind"])
    schema = crds.crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    validator = jsonschema.Draft4Validator(schema, format_checker=_format_checker())
    out = []
    for error in validator.iter_errors(doc):
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
        out.append((path.lstrip("."), error.message))
    return out


def parser_errors(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """The parser's verdict on what the operator sends for this custom resource (its kind as the
    controller names it, without Kubernetes-only fields such as an ExternalGateway's secretKeyRef)."""
    try:
        parse_resource(manifest(crds.kind_of(doc["kind"]), doc))
    except ValidationError as exc:
        return [(e.path, e.reason) for e in exc.errors]
    return []


def test_chart_crds_are_generated_from_the_schema() -> None:
    assert crds.stale(CRD_DIR) == []
    result = subprocess.run([str(ROOT / "deploy/gen-crds"), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_stale_crd_is_detected(tmp_path: Path) -> None:
    crds.write(tmp_path)
    path = tmp_path / crds.file_name(Kind.SITE)
    path.write_text(path.read_text().replace("minItems: 1", "minItems: 2"))
    (tmp_path / crds.file_name(Kind.NODE)).unlink()
    problems = crds.stale(tmp_path)
    assert len(problems) == 2
    assert any("sites" in p and "differs" in p for p in problems)
    assert any("nodes" in p and "missing" in p for p in problems)
    assert crds.main(["--check", str(tmp_path)]) == 1


def _doc_blocks() -> list[Path]:
    """YAML blocks of docs/kubernetes.md that declare meshsec resources, as temporary files."""
    text = (ROOT / "docs/kubernetes.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.S)
    return [Path(f"docs/kubernetes.md#{i}") for i, b in enumerate(blocks) if "meshsec.io/v1alpha1" in b]


def _load(path: Path) -> list[dict[str, Any]]:
    if path.name.startswith("kubernetes.md#"):
        text = (ROOT / "docs/kubernetes.md").read_text()
        block = re.findall(r"```yaml\n(.*?)```", text, flags=re.S)[int(path.name.partition("#")[2])]
        return [d for d in yaml.safe_load_all(block) if d is not None]
    return _docs(path)


@pytest.mark.parametrize("path", [*EXAMPLES, MAXIMAL, *_doc_blocks()], ids=lambda p: p.name)
def test_documents_pass_crd_schema_and_parser(path: Path) -> None:
    docs = _load(path)
    assert docs
    for doc in docs:
        assert crd_errors(doc) == [], doc["metadata"]["name"]
        assert parser_errors(doc) == [], doc["metadata"]["name"]


def _normal(path: str) -> str:
    return re.sub(r"\[\d+\]", "[]", path)


def _key_paths(value: object, path: str = "") -> Iterator[str]:
    if isinstance(value, dict):
        for key, sub in value.items():
            child = f"{path}.{key}" if path else str(key)
            yield child
            yield from _key_paths(sub, child)
    elif isinstance(value, list):
        for item in value:
            yield from _key_paths(item, f"{path}[]")


def test_schema_keys_equal_parser_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    accepted: dict[tuple[str, str], set[str]] = {}
    original = Fields.only

    def recording_only(self: Fields, *allowed: str) -> None:
        accepted.setdefault((self.kind, _normal(self.path)), set()).update(allowed)
        original(self, *allowed)

    monkeypatch.setattr(Fields, "only", recording_only)
    docs = _docs(MAXIMAL)
    for doc in docs:
        parse_resource(doc)
    for kind in Kind:
        schema_objects: dict[str, Object] = dict(objects(SPECS[kind], "spec"))
        parsed = {path: keys for (k, path), keys in accepted.items() if k == kind.value}
        for path, keys in parsed.items():
            if not path.startswith("spec"):
                continue
            assert path in schema_objects, f"{kind.value}: parser reads {path}, schema has no object there"
            assert set(schema_objects[path].properties) == keys, f"{kind.value} {path}"
        # Objects the parser reads without `only` (an ExternalGateway's auth names inline secrets
        # in its refusal) still need their fields used by the documents below.
        present = {p for d in docs if crds.kind_of(d["kind"]) is kind for p in _key_paths(d["spec"], "spec")}
        for path, obj in schema_objects.items():
            for name in obj.properties:
                assert f"{path}.{name}" in present, f"{kind.value}: maximal.yaml never uses {path}.{name}"


def _set(doc: dict[str, Any], path: str, value: object) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    parts = [int(p) if p.isdigit() else p for p in re.split(r"\.|\[|\]\.?", path) if p]
    target: Any = out
    for part in parts[:-1]:
        target = target[part]
    if value is _DELETE:
        del target[parts[-1]]
    else:
        target[parts[-1]] = value
    return out


_DELETE = object()
_BY_NAME = {d["metadata"]["name"]: d for d in _docs(MAXIMAL)}

# (document, field path, new value or _DELETE): refused by the CRD schema and by the parser,
# both naming that path.
BROKEN = [
    ("max-site", "spec.prefixes", _DELETE),
    ("max-site", "spec.prefixes", []),
    ("max-site", "spec.prefixes[0]", "198.19.10.0/33"),
    ("max-site", "spec.gatewaySelector.matchExpressions[0].operator", "Like"),
    ("max-node", "spec.site", _DELETE),
    ("max-node", "spec.endpoints.public[0]", "not-an-address"),
    ("max-hub", "spec.topology", "ring"),
    ("max-hub", "spec.scope", 7),
    ("max-hub", "spec.crypto.ikeLifetimeSeconds", 10),
    ("max-hub", "spec.crypto.childLifetimeSeconds", "3600"),
    ("max-hub", "spec.crypto.pfs", "yes"),
    ("max-hub", "spec.crypto.dpd.delaySeconds", 0),
    ("max-hub", "spec.crypto.dpd.action", "hold"),
    ("max-hub", "spec.auth.pskGeneration", 0),
    ("max-hub", "spec.hubs.selector", _DELETE),
    ("max-hub", "spec.hubs.spokeToSpoke", "true"),
    ("max-partial", "spec.partial.pairs[0]", ["node-a"]),
    ("max-partial", "spec.mode", "bridge"),
    ("max-gw", "spec.address", "198.18.200.300"),
    ("max-gw", "spec.auth.pskSecretRef", _DELETE),
    ("max-gw", "spec.sites", []),
    ("max-gw", "spec.profile", "oracle"),
    ("max-gw", "spec.crypto.ikeLifetimeSeconds", 200000),
]


@pytest.mark.parametrize(("name", "path", "value"), BROKEN, ids=[f"{n}:{p}" for n, p, _ in BROKEN])
def test_broken_documents_refused_by_both_at_the_path(name: str, path: str, value: object) -> None:
    doc = _set(_BY_NAME[name], path, value)
    crd = crd_errors(doc)
    parser = parser_errors(doc)
    assert crd, f"the CRD schema accepts {path}={value!r}"
    assert parser, f"the parser accepts {path}={value!r}"
    # A missing field is reported at its parent by JSON schema, at the field by the parser.
    crd_path = path.rsplit(".", 1)[0] if value is _DELETE else path
    assert any(p == crd_path for p, _ in crd), crd
    assert any(p == path or p.startswith(path) for p, _ in parser), parser


def test_parser_stricter_than_crd_is_still_caught() -> None:
    """What a structural schema cannot say (cross-field rules, proposal grammar) is left to the
    parser, which the operator runs before anything reaches the controller."""
    doc = _set(_BY_NAME["max-hub"], "spec.crypto.ikeProposals[0]", "aes256gcm16-prfsha256-x448")
    assert crd_errors(doc) == []
    assert [p for p, _ in parser_errors(doc)] == ["spec.crypto.ikeProposals[0]"]


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))


_JUNCTOR_ALLOWED = {"format", "pattern", "minLength", "maxLength", "minimum", "maximum", "enum", "required"}


def _structural_problems(node: Any, path: str, in_junctor: bool = False) -> Iterator[str]:
    """The API server's structural-schema rules that our generator could break: a type on every
    node outside anyOf/allOf/oneOf/not, only value validations inside them, no properties next to
    additionalProperties, list-map keys that are required scalar properties of the items."""
    if not isinstance(node, dict):
        return
    if in_junctor:
        extra = set(node) - _JUNCTOR_ALLOWED
        if extra:
            yield f"{path}: {sorted(extra)} inside a junctor"
    elif "type" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
        yield f"{path}: no type"
    if "properties" in node and "additionalProperties" in node:
        yield f"{path}: properties and additionalProperties together"
    if node.get("x-kubernetes-list-type") == "map":
        items = node["items"]
        for key in node["x-kubernetes-list-map-keys"]:
            if key not in items.get("required", []) or items["properties"][key]["type"] not in (
                "string",
                "integer",
            ):
                yield f"{path}: list-map key {key} must be a required scalar"
    for junctor in ("anyOf", "allOf", "oneOf"):
        for i, sub in enumerate(node.get(junctor, [])):
            yield from _structural_problems(sub, f"{path}.{junctor}[{i}]", in_junctor=True)
    for name, sub in (node.get("properties") or {}).items():
        yield from _structural_problems(sub, f"{path}.{name}", in_junctor)
    if isinstance(node.get("items"), dict):
        yield from _structural_problems(node["items"], f"{path}[]", in_junctor)
    if isinstance(node.get("additionalProperties"), dict):
        yield from _structural_problems(node["additionalProperties"], f"{path}{{}}", in_junctor)


@pytest.mark.parametrize("kind", list(Kind), ids=lambda k: k.value)
def test_crd_schemas_are_structural(kind: Kind) -> None:
    schema = crds.crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert list(_structural_problems(schema, kind.value)) == []
    # The checker does catch a broken node.
    broken = copy.deepcopy(schema)
    del broken["properties"]["spec"]["type"]
    broken["properties"]["status"]["properties"]["conditions"]["items"]["required"] = []
    assert len(list(_structural_problems(broken, kind.value))) == 2


@pytest.mark.parametrize("kind", list(Kind), ids=lambda k: k.value)
def test_printer_columns_read_conditions_the_operator_writes(kind: Kind) -> None:
    from meshsec.controller.operator.conditions import APPLIED, READY

    (version,) = crds.crd(kind)["spec"]["versions"]
    shown = {
        m.group(1)
        for c in version["additionalPrinterColumns"]
        for m in [re.search(r'@\.type=="(\w+)"', c["jsonPath"])]
        if m
    }
    assert shown == {APPLIED, READY}
