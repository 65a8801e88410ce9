"""meshctl's manifest reading: the example parses, and every envelope problem is reported with
its file, document number, resource and field path, all at once."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from meshsec.meshctl import manifest
from meshsec.meshctl.convert import resource_to_dict
from meshsec.meshctl.errors import UserError, ValidationFailed

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "examples" / "lab-mesh.yaml"

GOOD_SITE = """\
apiVersion: meshsec.io/v1alpha1
kind: Site
metadata: {name: dc9, labels: {tier: 1}}
spec: {prefixes: [198.19.9.0/24], weight: 14400}
"""


def test_example_manifest_loads_every_resource_in_order() -> None:
    docs = manifest.load([str(EXAMPLE)])
    kinds = [(d.resource.kind, d.resource.metadata.name) for d in docs]
    assert kinds[:3] == [("Site", "dc1"), ("Site", "dc2"), ("Site", "vpc")]
    assert ("ExternalGateway", "partner-aws") in kinds
    assert ("RemoteAccessPool", "staff") in kinds and ("RemoteAccessUser", "bob") in kinds
    assert len(kinds) == 11  # and the road warriors' pool and user
    assert docs[3].source.endswith("lab-mesh.yaml: document 4")


def test_spec_numbers_and_labels_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(GOOD_SITE)
    (doc,) = manifest.load([str(path)])
    as_dict = resource_to_dict(doc.resource)
    assert as_dict["spec"] == {"prefixes": ["198.19.9.0/24"], "weight": 14400}  # an int again, not 14400.0
    assert as_dict["metadata"]["labels"] == {"tier": "1"}


def test_every_problem_is_reported_with_its_location(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "apiVersion: v1\nkind: Node\nmetadata: {name: Bad_Name, labels: {a: [1]}}\n"
        "spec: {since: 2024-01-01}\n"
        "---\n- not a mapping\n---\napiVersion: meshsec.io/v1alpha1\nkind: Gadget\nmetadata: {name: g}\n"
        "extra: 1\n"
    )
    with pytest.raises(ValidationFailed) as info:
        manifest.load([str(path)])
    text = str(info.value)
    where = f"{path}: document 1 (Node/Bad_Name)"
    assert f"{where}: apiVersion: must be 'meshsec.io/v1alpha1'" in text
    assert f"{where}: metadata.name: must be a DNS-1123 label" in text
    assert f"{where}: metadata.labels.a: must be a string" in text
    assert f"{where}: spec.since: date values are not supported" in text
    assert f"{path}: document 2: a resource must be a mapping, not a list" in text
    assert (
        f"{path}: document 3 (Gadget/g): kind: must be one of Site, MeshNode, MeshPolicy, ExternalGateway"
        in text
    )
    assert f"{path}: document 3 (Gadget/g): extra: unknown field" in text
    assert info.value.exit_code == 1
    assert text.startswith("7 validation errors; nothing was applied")


def test_yaml_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("apiVersion: meshsec.io/v1alpha1\nkind: [Site\n")
    with pytest.raises(ValidationFailed, match=r"broken.yaml:3:1: invalid YAML"):
        manifest.load([str(path)])


def test_duplicates_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text(GOOD_SITE + "---\n" + GOOD_SITE)
    with pytest.raises(ValidationFailed, match=r"document 2 \(Site/dc9\): metadata.name: duplicate of"):
        manifest.load([str(path)])


def test_directories_lists_and_empty_documents(tmp_path: Path) -> None:
    (tmp_path / "b.yaml").write_text("---\n" + GOOD_SITE + "---\n")
    (tmp_path / "a.yml").write_text(
        "kind: List\nitems:\n- apiVersion: meshsec.io/v1alpha1\n  kind: Site\n  metadata: {name: dc8}\n"
    )
    (tmp_path / "notes.txt").write_text("ignored")
    docs = manifest.load([str(tmp_path)])
    assert [d.resource.metadata.name for d in docs] == ["dc8", "dc9"]  # a.yml before b.yaml
    assert docs[0].source.endswith("a.yml: document 1 items[0]")


def test_missing_path_and_empty_manifest(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such file or directory"):
        manifest.load([str(tmp_path / "nope.yaml")])
    (tmp_path / "empty.yaml").write_text("---\n")
    with pytest.raises(UserError, match="no resources found"):
        manifest.load([str(tmp_path / "empty.yaml")])


def test_deletion_order_puts_sites_last() -> None:
    docs = manifest.deletion_order(manifest.load([str(EXAMPLE)]))
    kinds = [d.resource.kind for d in docs]
    assert kinds[-3:] == ["Site", "Site", "Site"]
    assert kinds.index("Node") > kinds.index("MeshPolicy")


NODE_DOC = """\
apiVersion: meshsec.io/v1alpha1
kind: {kind}
metadata: {{name: gw{i}}}
spec: {{site: dc9, endpoints: {{public: [198.18.9.{i}]}}}}
"""


def test_meshnode_is_the_manifest_kind_and_node_a_deprecated_alias(tmp_path: Path) -> None:
    """MeshNode (the CRD's kind) and the old Node load alike, as the API's Node; only Node gets a
    deprecation notice, once per file; output says MeshNode, so it applies again unchanged."""
    new, old = tmp_path / "new.yaml", tmp_path / "old.yaml"
    new.write_text(NODE_DOC.format(kind="MeshNode", i=1))
    old.write_text(NODE_DOC.format(kind="Node", i=2) + "---\n" + NODE_DOC.format(kind="Node", i=3))
    docs = manifest.load([str(new), str(old)])
    assert [d.resource.kind for d in docs] == ["Node", "Node", "Node"]
    assert [bool(d.notice) for d in docs] == [False, True, True]
    (notice,) = manifest.notices(docs)
    assert notice.startswith(f"{old}: kind Node is deprecated") and "write kind MeshNode" in notice
    assert resource_to_dict(docs[0].resource)["kind"] == "MeshNode"
    again = tmp_path / "again.yaml"
    again.write_text(yaml.safe_dump(resource_to_dict(docs[1].resource)))
    (reloaded,) = manifest.load([str(again)])
    assert reloaded.resource == docs[1].resource and not reloaded.notice
