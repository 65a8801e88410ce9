"""Reading resource manifests: files or directories of multi-document YAML, checked for shape.

Only the envelope is checked here (apiVersion, kind, metadata); the controller owns the spec schema
and reports its own problems with field paths. Everything found wrong in every document is reported
together, located as ``FILE: document N (Kind/name): path``.
"""

from __future__ import annotations

import datetime
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from meshsec.common.safeyaml import YamlLimitError, safe_load_all
from meshsec.meshctl.convert import dict_to_struct
from meshsec.meshctl.errors import Problem, UsageError, UserError, ValidationFailed
from meshsec.meshctl.kinds import (
    API_VERSION,
    APPLY_ORDER,
    RESOURCE_KINDS,
    deprecation_notice,
    kind_by_manifest_name,
)
from meshsec.v1 import common_pb2

_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_YAML_SUFFIXES = (".yaml", ".yml", ".json")
_METADATA_KEYS = {
    "name",
    "labels",
    "annotations",
    "resourceVersion",
    "generation",
    "uid",
    "creationTimestamp",
}
_TOP_KEYS = {"apiVersion", "kind", "metadata", "spec", "status"}


@dataclass(frozen=True)
class Document:
    source: str  # "lab.yaml: document 2"
    resource: common_pb2.Resource  # kind as the API names it
    notice: str = ""  # e.g. a deprecated kind name

    @property
    def where(self) -> str:
        return f"{self.source} ({self.resource.kind}/{self.resource.metadata.name})"


def manifest_files(paths: Sequence[str]) -> list[Path]:
    """``-f`` arguments expanded: a directory means its *.yaml/*.yml/*.json files, sorted."""
    files: list[Path] = []
    for raw in paths:
        if raw == "-":
            files.append(Path("-"))
            continue
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix in _YAML_SUFFIXES and p.is_file())
            if not found:
                raise UserError(f"{raw}: no .yaml, .yml or .json files in this directory")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise UserError(f"{raw}: no such file or directory")
    return files


def load(paths: Sequence[str]) -> list[Document]:
    documents: list[Document] = []
    problems: list[Problem] = []
    for path in manifest_files(paths):
        try:
            text = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"{path}: cannot read: {exc}") from None
        docs, found = parse_text(text, "<stdin>" if str(path) == "-" else str(path))
        documents.extend(docs)
        problems.extend(found)
    if problems:
        raise ValidationFailed(problems, hint="fix the manifest and apply again")
    if not documents:
        raise UserError("no resources found in " + ", ".join(paths))
    _reject_duplicates(documents)
    return documents


def parse_text(text: str, filename: str) -> tuple[list[Document], list[Problem]]:
    try:
        raw_docs = safe_load_all(text)
    except YamlLimitError as exc:  # hostile or runaway input: refused outright (exit 2)
        mark = exc.problem_mark
        where = f"{filename}:{mark.line + 1}" if mark is not None else filename
        raise UsageError(f"{where}: refused: {exc.problem}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{filename}:{mark.line + 1}:{mark.column + 1}" if mark is not None else filename
        problem = getattr(exc, "problem", None) or str(exc)
        return [], [Problem(where, "", f"invalid YAML: {problem}")]
    documents: list[Document] = []
    problems: list[Problem] = []
    for index, raw in enumerate(raw_docs, start=1):
        if raw is None:  # an empty document, e.g. a trailing '---'
            continue
        source = f"{filename}: document {index}"
        items = raw.get("items") if isinstance(raw, dict) and raw.get("kind") == "List" else [raw]
        if not isinstance(items, list):
            problems.append(Problem(source, "items", "must be a list of resources"))
            continue
        for sub, item in enumerate(items):
            where = source if len(items) == 1 and item is raw else f"{source} items[{sub}]"
            resource, found = to_resource(item, where)
            problems.extend(found)
            if resource is not None:
                documents.append(Document(where, resource, _notice(item)))
    return documents, problems


def to_resource(raw: Any, where: str) -> tuple[common_pb2.Resource | None, list[Problem]]:
    if not isinstance(raw, dict):
        return None, [Problem(where, "", f"a resource must be a mapping, not {_type_name(raw)}")]
    problems: list[Problem] = []
    name = raw.get("metadata", {}).get("name") if isinstance(raw.get("metadata"), dict) else None
    label = f"{where} ({raw.get('kind', '?')}/{name if isinstance(name, str) else '?'})"

    def bad(path: str, message: str) -> None:
        problems.append(Problem(label, path, message))

    for key in sorted(set(map(str, raw)) - _TOP_KEYS):
        bad(key, "unknown field (expected apiVersion, kind, metadata, spec)")
    api_version = raw.get("apiVersion")
    if api_version != API_VERSION:
        bad("apiVersion", f"must be {API_VERSION!r}, got {api_version!r}")
    kind = kind_by_manifest_name(raw.get("kind"))
    if kind is None:
        known = ", ".join(k.manifest for k in RESOURCE_KINDS)
        bad("kind", f"must be one of {known}, got {raw.get('kind')!r}")
    metadata = raw.get("metadata")
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
    resource_version = ""
    if not isinstance(metadata, dict):
        bad("metadata", "required mapping with at least a name")
    else:
        for key in sorted(set(map(str, metadata)) - _METADATA_KEYS):
            bad(f"metadata.{key}", "unknown field")
        if not isinstance(name, str) or not _NAME.match(name):
            bad("metadata.name", f"must be a DNS-1123 label (lowercase a-z, 0-9, '-'), got {name!r}")
        labels = _string_map(metadata.get("labels"), "metadata.labels", bad)
        annotations = _string_map(metadata.get("annotations"), "metadata.annotations", bad)
        rv = metadata.get("resourceVersion")
        resource_version = str(rv) if rv is not None else ""
    spec = raw.get("spec", {})
    if not isinstance(spec, dict):
        bad("spec", f"must be a mapping, not {_type_name(spec)}")
        spec = {}
    for path, reason in _unsupported_scalars(spec, "spec"):
        bad(path, reason)
    if problems:
        return None, problems
    assert kind is not None  # a problem otherwise
    resource = common_pb2.Resource(
        api_version=str(api_version),
        kind=kind.name,
        metadata=common_pb2.ObjectMeta(
            name=str(name), labels=labels, annotations=annotations, resource_version=resource_version
        ),
        spec=dict_to_struct(spec),
    )
    return resource, []


def _notice(raw: dict[str, Any]) -> str:
    kind = kind_by_manifest_name(raw.get("kind"))
    deprecated = kind is not None and kind.deprecated_name and raw.get("kind") == kind.deprecated_name
    return deprecation_notice(kind) if kind is not None and deprecated else ""


def notices(documents: Sequence[Document]) -> list[str]:
    """One line per file and notice (a file of fifty old-style Nodes says it once)."""
    seen: dict[tuple[str, str], None] = {}
    for d in documents:
        if d.notice:
            seen[(d.source.rsplit(": document", 1)[0], d.notice)] = None
    return [f"{source}: {notice}" for source, notice in seen]


def _string_map(value: Any, path: str, bad: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        bad(path, f"must be a mapping of strings, not {_type_name(value)}")
        return {}
    out: dict[str, str] = {}
    for key, item in value.items():
        if isinstance(item, bool) or not isinstance(item, (str, int, float)):
            bad(f"{path}.{key}", f"must be a string, not {_type_name(item)}; quote it")
        else:
            out[str(key)] = str(item)
    return out


def _unsupported_scalars(value: Any, path: str) -> Iterable[tuple[str, str]]:
    """Values a protobuf Struct cannot hold (YAML dates, binary, and keys that are not strings, such
    as YAML 1.1's ``on:`` read as true); ``null``, numbers, strings are fine."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                yield f"{path}.{key}", f"keys must be strings, not {_type_name(key)}; quote it"
                continue
            yield from _unsupported_scalars(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _unsupported_scalars(item, f"{path}[{i}]")
    elif isinstance(value, (datetime.date, bytes)):
        yield path, f"{_type_name(value)} values are not supported; quote it as a string"


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def _reject_duplicates(documents: Sequence[Document]) -> None:
    seen: dict[tuple[str, str], str] = {}
    problems: list[Problem] = []
    for doc in documents:
        key = (doc.resource.kind, doc.resource.metadata.name)
        if key in seen:
            problems.append(Problem(doc.where, "metadata.name", f"duplicate of {seen[key]}"))
        else:
            seen[key] = doc.source
    if problems:
        raise ValidationFailed(problems, hint="each (kind, name) may appear once per apply")


def deletion_order(documents: Sequence[Document]) -> list[Document]:
    """Dependents first: gateways and policies, then nodes, then the sites they belong to."""
    return sorted(documents, key=lambda d: -APPLY_ORDER.get(d.resource.kind, 0))
