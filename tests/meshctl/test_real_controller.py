"""meshctl against a real meshsec-controller: apply (created/unchanged, all or nothing, the
controller's validation errors with field paths), get in every format, selectors, describe,
topology, events, tokens, delete, and the exit codes scripts rely on."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import yaml

from meshsec.meshctl.cli import main

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "examples" / "lab-mesh.yaml"


def meshctl(socket: Path, *args: str) -> int:
    return main(["--controller", str(socket), *args])


def test_apply_is_declarative_and_reports_each_resource(
    controller: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert meshctl(controller, "apply", "-f", str(EXAMPLE)) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "site/dc1 created" and "externalgateway/partner-aws created" in out and len(out) == 11
    assert meshctl(controller, "apply", "-f", str(EXAMPLE)) == 0
    assert all(line.endswith(" unchanged") for line in capsys.readouterr().out.splitlines())
    changed = EXAMPLE.read_text().replace("region: eu-central", "region: eu-north")
    monkeypatch.setattr("sys.stdin", io.StringIO(changed))
    assert meshctl(controller, "apply", "-f", "-", "-o", "json") == 0
    result = json.loads(capsys.readouterr().out)
    actions = {(r["kind"], r["name"]): r["action"] for r in result["results"]}
    assert actions[("Site", "dc2")] == "configured" and actions[("Site", "dc1")] == "unchanged"
    assert result["results"][1]["resource"]["metadata"]["labels"]["region"] == "eu-north"


def test_controller_validation_errors_are_located_and_nothing_is_applied(
    controller: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert meshctl(controller, "apply", "-f", str(EXAMPLE)) == 0
    capsys.readouterr()
    bad = controller.parent / "bad.yaml"
    bad.write_text(
        "apiVersion: meshsec.io/v1alpha1\nkind: Site\nmetadata: {name: fine}\n"
        "spec: {prefixes: [198.19.77.0/24], gatewaySelector: {matchLabels: {role: gateway}}}\n"
        "---\napiVersion: meshsec.io/v1alpha1\nkind: Site\nmetadata: {name: clash}\n"
        "spec: {prefixes: [198.19.1.0/25], gatewaySelector: {matchLabels: {role: gateway}}}\n"
    )
    assert meshctl(controller, "apply", "-f", str(bad)) == 1
    err = capsys.readouterr().err
    assert "nothing was applied" in err
    assert f"{bad}: document 2 (Site/clash): spec.prefixes" in err
    assert "198.19.1.0/24" in err  # names what it overlaps
    assert meshctl(controller, "get", "site", "fine") == 1  # all or nothing: the good one is absent too
    assert "not found" in capsys.readouterr().err.lower()


def test_get_formats_and_selectors(controller: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert meshctl(controller, "apply", "-f", str(EXAMPLE)) == 0
    capsys.readouterr()
    assert meshctl(controller, "get", "sites", "-l", "kind=datacenter", "-o", "json") == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["kind"] == "List" and [i["metadata"]["name"] for i in doc["items"]] == ["dc1", "dc2"]
    assert meshctl(controller, "get", "node", "vpc-gw1", "-o", "yaml") == 0
    node = yaml.safe_load(capsys.readouterr().out)
    assert node["kind"] == "MeshNode" and node["spec"]["endpoints"] == {"private": ["198.18.130.10"]}
    assert meshctl(controller, "get", "nodes") == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:4] == ["NAME", "SITE", "ENDPOINTS", "ONLINE"] and len(table) == 4
    assert meshctl(controller, "get", "policies", "-o", "wide") == 0
    assert "hub-and-spoke" in capsys.readouterr().out
    assert meshctl(controller, "get", "tunnels", "-o", "json") == 0
    tunnels = json.loads(capsys.readouterr().out)["items"]
    pairs = sorted(tuple(e["name"] for e in t["ends"]) for t in tunnels)
    assert pairs == [
        ("dc1-gw1", "dc2-gw1"),
        ("dc1-gw1", "partner-aws"),
        ("dc1-gw1", "vpc-gw1"),
        ("dc2-gw1", "partner-aws"),
    ]
    assert all("key" not in json.dumps(t["desired"].get("auth", {})) for t in tunnels)
    assert meshctl(controller, "get", "tunnels", "--policy", "dc-mesh") == 0
    rows = capsys.readouterr().out.splitlines()
    assert len(rows) == 2 and rows[1].startswith("dc1-gw1 <-> dc2-gw1") and "DOWN" in rows[1]
    assert meshctl(controller, "get", "tunnels", "--state", "bogus") == 2
    assert meshctl(controller, "get", "gadgets") == 2
    assert meshctl(controller, "get", "sites", "-l", "in (") == 1  # the controller refuses the selector


def test_describe_topology_events_and_tokens(
    controller: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert meshctl(controller, "apply", "-f", str(EXAMPLE)) == 0
    capsys.readouterr()
    assert meshctl(controller, "describe", "node", "dc1-gw1") == 0
    text = capsys.readouterr().out
    assert "Name:         dc1-gw1" in text and "Online:       no" in text
    assert "dc1-gw1 <-> dc2-gw1" in text and "Events:" in text and "Last errors:  <none>" in text
    assert meshctl(controller, "get", "tunnels", "-o", "json") == 0
    tunnel_id = json.loads(capsys.readouterr().out)["items"][0]["tunnelId"]
    assert meshctl(controller, "describe", "tunnel", tunnel_id) == 0
    assert f"Tunnel:       {tunnel_id}" in capsys.readouterr().out
    assert meshctl(controller, "describe", "site", "nowhere") == 1
    capsys.readouterr()
    svg = tmp_path / "mesh.svg"
    assert meshctl(controller, "topology", "--svg", str(svg), "--dot") == 0
    dot = capsys.readouterr().out
    assert dot.startswith("graph meshsec {") and dot.count("subgraph cluster_") == 4
    assert "<svg" in svg.read_text()
    assert meshctl(controller, "events") == 0
    assert "Applied" in capsys.readouterr().out
    assert meshctl(controller, "events", "-o", "json", "--name", "dc1") == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert events and all(e["involved"]["name"] == "dc1" for e in events)
    assert meshctl(controller, "token", "create", "dc1-gw1", "--site", "dc1", "-o", "json") == 0
    token = json.loads(capsys.readouterr().out)
    assert token["token"].startswith(token["tokenId"] + ".") and len(token["caCertSha256"]) == 64
    assert meshctl(controller, "token", "revoke", token["tokenId"]) == 0


def test_delete_by_name_and_by_file(controller: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert meshctl(controller, "apply", "-f", str(EXAMPLE)) == 0
    assert meshctl(controller, "delete", "site", "dc1") == 1  # nodes still belong to it
    assert "dc1" in capsys.readouterr().err
    assert meshctl(controller, "delete", "node", "vpc-gw1") == 0
    assert capsys.readouterr().out == "node/vpc-gw1 deleted\n"
    assert meshctl(controller, "delete", "node", "vpc-gw1") == 1
    assert meshctl(controller, "delete", "node", "vpc-gw1", "--ignore-not-found") == 0
    capsys.readouterr()
    assert meshctl(controller, "delete", "-f", str(EXAMPLE), "--ignore-not-found") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "remoteaccessuser/bob deleted" and out[-1] == "site/vpc deleted"  # reverse order
    assert "externalgateway/partner-aws deleted" in out
    assert meshctl(controller, "get", "sites", "-o", "json") == 0
    assert json.loads(capsys.readouterr().out)["items"] == []


def test_unreachable_controller_exits_3_with_a_hint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--controller", str(tmp_path / "none.sock"), "get", "sites"]) == 3
    err = capsys.readouterr().err
    assert "does not exist" in err and "meshsec-controller" in err and "meshctl lab up" in err
    import socket as socketlib

    dead = tmp_path / "dead.sock"
    with socketlib.socket(socketlib.AF_UNIX) as s:
        s.bind(str(dead))  # a socket file nobody listens on
    assert main(["--controller", str(dead), "--timeout", "3", "get", "sites"]) == 3
    assert "hint:" in capsys.readouterr().err
    assert main(["--controller", "nohostport", "get", "sites"]) == 2


def test_secret_set_from_file_and_env_get_and_delete_never_print_the_value(
    controller: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert meshctl(controller, "apply", "-f", str(EXAMPLE)) == 0
    # Accepted, but the gateway's PSK Secret does not exist yet: apply and describe say so.
    missing = "PSK Secret 'partner-aws-psk' does not exist"
    assert f"warning: externalgateway/partner-aws: {missing}" in capsys.readouterr().err
    assert meshctl(controller, "describe", "externalgateway", "partner-aws") == 0
    assert f"Warning:      {missing}" in capsys.readouterr().out
    key_file = tmp_path / "psk"
    key_file.write_bytes(b"from-file-key-0123456789\n")
    assert meshctl(controller, "secret", "set", "partner-aws-psk", "--from-file", str(key_file)) == 0
    assert capsys.readouterr().out == "secret partner-aws-psk created (used by partner-aws)\n"
    assert meshctl(controller, "describe", "externalgateway", "partner-aws") == 0
    assert "Warning:" not in capsys.readouterr().out
    assert meshctl(controller, "apply", "-f", str(EXAMPLE)) == 0
    assert "warning:" not in capsys.readouterr().err
    monkeypatch.setenv("LAB_PSK", "from-env-key-abcdefghij")
    assert meshctl(controller, "secret", "set", "partner-aws-psk", "--from-env", "LAB_PSK") == 0
    assert "replaced" in capsys.readouterr().out
    # Too short: refused by the controller with its reason; a value on argv is not even accepted.
    monkeypatch.setenv("SHORT", "short")
    assert meshctl(controller, "secret", "set", "spare", "--from-env", "SHORT") == 1
    assert "at least 16 bytes (got 5)" in capsys.readouterr().err
    assert meshctl(controller, "secret", "set", "spare", "from-argv-key-0123456789") != 0
    assert "--from-file --from-env is required" in capsys.readouterr().err
    assert meshctl(controller, "get", "secrets") == 0
    table = capsys.readouterr().out
    assert "partner-aws-psk" in table and "partner-aws" in table
    assert meshctl(controller, "get", "secrets", "-o", "json") == 0
    listed = capsys.readouterr().out
    assert json.loads(listed)["secrets"][0]["usedBy"] == ["partner-aws"]
    assert "from-env-key" not in table + listed and "from-file-key" not in table + listed
    assert meshctl(controller, "events", "-o", "json", "--name", "partner-aws-psk") == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["message"] for e in events] == ["secret partner-aws-psk set"] * 2
    assert meshctl(controller, "secret", "delete", "partner-aws-psk") == 0
    assert meshctl(controller, "secret", "delete", "partner-aws-psk") != 0
    assert "not found" in capsys.readouterr().err
    assert meshctl(controller, "get", "secrets") == 0
    assert capsys.readouterr().out == ""


def test_old_node_kind_applies_and_deletes_with_a_notice(
    controller: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`kind: Node` (chart 0.1's CRD kind) still works against a real controller, with a note on
    stderr; what `get -o yaml` prints (kind MeshNode) applies back without one."""
    assert meshctl(controller, "apply", "-f", str(EXAMPLE)) == 0
    capsys.readouterr()
    old = controller.parent / "old-node.yaml"
    old.write_text(
        "apiVersion: meshsec.io/v1alpha1\nkind: Node\nmetadata: {name: old-gw}\n"
        "spec: {site: dc1, endpoints: {public: [198.18.1.77]}}\n"
    )
    assert meshctl(controller, "apply", "-f", str(old)) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == "node/old-gw created"
    assert f"note: {old}: kind Node is deprecated in manifests: write kind MeshNode" in captured.err
    assert meshctl(controller, "get", "node", "old-gw", "-o", "yaml") == 0
    again = controller.parent / "again.yaml"
    again.write_text(capsys.readouterr().out)
    assert yaml.safe_load(again.read_text())["kind"] == "MeshNode"
    assert meshctl(controller, "apply", "-f", str(again)) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == "node/old-gw unchanged" and "deprecated" not in captured.err
    assert meshctl(controller, "delete", "-f", str(old)) == 0
    assert "kind Node is deprecated" in capsys.readouterr().err
    assert meshctl(controller, "get", "node", "old-gw") == 1
