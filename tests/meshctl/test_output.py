"""Rendering: tables fit a terminal and carry colour only when asked, rows per kind, tunnel rows,
stable json/yaml documents, and the topology picture (DOT rendered to SVG by the real `dot`)."""

from __future__ import annotations

import io
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from google.protobuf import timestamp_pb2

from meshsec.meshctl.convert import dict_to_struct
from meshsec.meshctl.events import event_line
from meshsec.meshctl.kinds import NODE, POLICY, SITE
from meshsec.meshctl.table import Column, Styled, fit_widths, print_table, render
from meshsec.meshctl.topology import to_dot, write_svg
from meshsec.meshctl.views import (
    duration,
    resource_document,
    resource_row,
    selector_text,
    tunnel_document,
    tunnel_row,
)
from meshsec.v1 import admin_pb2, agent_pb2, common_pb2

NOW = datetime(2026, 11, 29, 12, 0, 0, tzinfo=UTC)


def ts(seconds_before_now: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=int(NOW.timestamp()) - seconds_before_now)


def tunnel(state: int, *, error: str = "") -> admin_pb2.TunnelInfo:
    status = agent_pb2.TunnelStatus(
        tunnel_id="t-1",
        state=state,
        ike_sa=agent_pb2.IkeSaStatus(nat_detected=True, established_at=ts(300)),
        child_sas=[
            agent_pb2.ChildSaStatus(
                spi_in=0xC0FFEE01,
                spi_out=0x0BADF00D,
                encryption_algorithm="AES_GCM_16-256",
                bytes_in=512,
                bytes_out=1024 * 1024 * 3,
            )
        ],
    )
    if error:
        status.last_error.CopyFrom(common_pb2.ErrorInfo(reason=error, message="peer did not answer"))
    return admin_pb2.TunnelInfo(
        tunnel_id="t-1",
        policy="dc-mesh",
        state=state,
        ends=[
            admin_pb2.TunnelEnd(
                name="dc1-gw1",
                kind=common_pb2.PEER_KIND_NODE,
                site="dc1",
                status=status,
                endpoint=common_pb2.Endpoint(address="198.18.101.1"),
            ),
            admin_pb2.TunnelEnd(
                name="dc2-gw1",
                kind=common_pb2.PEER_KIND_NODE,
                site="dc2",
                endpoint=common_pb2.Endpoint(address="198.18.2.1"),
            ),
        ],
    )


def test_fit_widths_cuts_the_widest_shrinkable_column_first() -> None:
    assert fit_widths([10, 40, 30], [True, True, True], None) == [10, 40, 30]
    widths = fit_widths([10, 40, 30], [True, True, True], 60)
    assert sum(widths) + 2 * 3 <= 60
    assert widths[0] == 10 and widths[1] <= 30 + 1
    # Nothing shrinkable: the table stays as wide as it is.
    assert fit_widths([10, 40], [False, False], 20) == [10, 40]


def test_render_aligns_cuts_and_colours_only_when_enabled() -> None:
    cols = [Column("NAME", shrink=False), Column("VALUE")]
    rows = [["a", Styled("x" * 50, "red")], ["bb", "short"]]
    plain = render(cols, rows, colour=False, width=None)
    assert "\x1b[" not in plain and "x" * 50 in plain
    lines = plain.splitlines()
    assert lines[0].index("VALUE") == lines[1].index("x") == lines[2].index("short")
    cut = render(cols, rows, colour=False, width=30)
    assert all(len(line) <= 30 for line in cut.splitlines())
    assert "~" in cut
    coloured = render(cols, rows, colour=True, width=None)
    assert "\x1b[31m" in coloured and "\x1b[1mNAME" in coloured


def test_print_table_writes_no_escape_codes_to_a_pipe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.delenv("COLUMNS", raising=False)
    out = io.StringIO()
    print_table([Column("STATE")], [[Styled("ESTABLISHED", "green")]], out)
    assert out.getvalue() == "STATE\nESTABLISHED\n"


def test_durations_and_selectors() -> None:
    assert [duration(s) for s in (5, 119, 300, 3 * 3600 + 60 * 5, 49 * 3600)] == [
        "5s",
        "119s",
        "5m",
        "3h5m",
        "2d",
    ]
    selector = {
        "matchLabels": {"kind": "datacenter"},
        "matchExpressions": [
            {"key": "cloud-attach", "operator": "Exists"},
            {"key": "region", "operator": "In", "values": ["eu", "us"]},
        ],
    }
    assert selector_text(selector) == "kind=datacenter,cloud-attach,region in (eu,us)"
    assert selector_text({}) == "(all)"  # an empty selector selects everything
    assert selector_text(None) == "-"


def test_resource_rows_use_spec_and_live_topology() -> None:
    node = common_pb2.Resource(
        api_version="meshsec.io/v1alpha1",
        kind="Node",
        metadata=common_pb2.ObjectMeta(name="dc1-gw1", labels={"role": "gateway"}, creation_time=ts(600)),
        spec=dict_to_struct(
            {"site": "dc1", "endpoints": {"public": ["198.18.1.1"], "private": ["198.18.101.1"]}}
        ),
    )
    live = admin_pb2.Topology(
        nodes=[
            admin_pb2.TopologyNode(
                name="dc1-gw1",
                online=True,
                dataplane_backend=agent_pb2.DATAPLANE_BACKEND_USERSPACE,
                agent_version="0.1.0",
            )
        ]
    )
    row = [str(c) for c in resource_row(NODE, node, wide=True, topology=live, now=NOW)]
    assert row == [
        "dc1-gw1",
        "dc1",
        "198.18.1.1,198.18.101.1",
        "yes",
        "userspace",
        "10m",
        "0.1.0",
        "role=gateway",
    ]
    policy = common_pb2.Resource(
        kind="MeshPolicy",
        metadata=common_pb2.ObjectMeta(name="dc-mesh"),
        spec=dict_to_struct(
            {
                "topology": "full-mesh",
                "scope": "site",
                "members": {"matchLabels": {"kind": "datacenter"}},
                "auth": {"method": "certificate"},
            }
        ),
    )
    assert [str(c) for c in resource_row(POLICY, policy, wide=False)] == [
        "dc-mesh",
        "full-mesh",
        "site",
        "kind=datacenter",
        "certificate",
        "-",
    ]
    site = common_pb2.Resource(
        kind="Site",
        metadata=common_pb2.ObjectMeta(name="dc1"),
        spec=dict_to_struct({"prefixes": ["198.19.1.0/24"]}),
    )
    assert [str(c) for c in resource_row(SITE, site, wide=False, topology=None)][:3] == [
        "dc1",
        "198.19.1.0/24",
        "-",
    ]


def test_tunnel_rows_show_state_uptime_nat_and_errors() -> None:
    up = tunnel(common_pb2.TUNNEL_STATE_ESTABLISHED)
    row = tunnel_row(up, wide=True, now=NOW)
    assert [str(c) for c in row[:5]] == ["dc1-gw1 <-> dc2-gw1", "dc-mesh", "ESTABLISHED", "5m", "yes"]
    assert isinstance(row[2], Styled) and row[2].colour == "green"
    assert str(row[7]) == "c0ffee01/0badf00d AES_GCM_16-256"
    assert str(row[8]) == "512B/3.0MiB"
    failed = tunnel_row(tunnel(common_pb2.TUNNEL_STATE_FAILED, error="TIMEOUT"), wide=True, now=NOW)
    assert str(failed[3]) == "-"  # not up, so no uptime
    assert str(failed[9]) == "dc1-gw1: TIMEOUT peer did not answer"


def test_machine_readable_documents_are_stable() -> None:
    doc = tunnel_document([tunnel(common_pb2.TUNNEL_STATE_ESTABLISHED)], single=False)
    assert doc["kind"] == "List"
    item = doc["items"][0]
    assert item["state"] == "TUNNEL_STATE_ESTABLISHED" and item["tunnelId"] == "t-1"
    assert json.loads(json.dumps(doc)) == doc
    res = common_pb2.Resource(
        api_version="meshsec.io/v1alpha1",
        kind="Site",
        metadata=common_pb2.ObjectMeta(name="dc1", resource_version="7", generation=2),
        spec=dict_to_struct({"prefixes": ["198.19.1.0/24"]}),
    )
    single = resource_document([res], single=True)
    assert single == {
        "apiVersion": "meshsec.io/v1alpha1",
        "kind": "Site",
        "metadata": {"name": "dc1", "resourceVersion": "7", "generation": 2},
        "spec": {"prefixes": ["198.19.1.0/24"]},
    }
    assert yaml.safe_load(yaml.safe_dump(single)) == single


def topology() -> admin_pb2.Topology:
    ref = common_pb2.ObjectRef
    return admin_pb2.Topology(
        sites=[
            admin_pb2.TopologySite(name="dc1", prefixes=["198.19.1.0/24"]),
            admin_pb2.TopologySite(name="dc2", prefixes=["198.19.2.0/24"]),
        ],
        nodes=[
            admin_pb2.TopologyNode(name="dc1-gw1", site="dc1", online=True),
            admin_pb2.TopologyNode(name="dc2-gw1", site="dc2"),
        ],
        external_gateways=[
            admin_pb2.TopologyGateway(
                name="partner",
                endpoint=common_pb2.Endpoint(address="198.18.200.1"),
                prefixes=["198.19.200.0/24"],
            )
        ],
        links=[
            admin_pb2.TopologyLink(
                tunnel_id="t-a",
                policy="dc-mesh",
                a=ref(kind="Node", name="dc1-gw1"),
                b=ref(kind="Node", name="dc2-gw1"),
                state=common_pb2.TUNNEL_STATE_ESTABLISHED,
            ),
            admin_pb2.TopologyLink(
                tunnel_id="t-b",
                policy="partner",
                a=ref(kind="Node", name="dc2-gw1"),
                b=ref(kind="ExternalGateway", name="partner"),
                state=common_pb2.TUNNEL_STATE_FAILED,
            ),
        ],
    )


def test_dot_has_site_clusters_and_state_colours() -> None:
    dot = to_dot(topology())
    assert dot.count("subgraph cluster_") == 3  # two sites and the external gateways
    assert 'label="dc1\\n198.19.1.0/24"' in dot
    assert '"node:dc1-gw1" -- "node:dc2-gw1" [color=forestgreen' in dot
    assert '"node:dc2-gw1" -- "gw:partner" [color=red' in dot


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz `dot` not installed")
def test_svg_is_rendered_by_graphviz(tmp_path: Path) -> None:
    out = tmp_path / "mesh.svg"
    write_svg(to_dot(topology()), out)
    svg = out.read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    assert "dc1&#45;gw1" in svg and ">FAILED<" in svg


def test_event_line() -> None:
    event = admin_pb2.Event(
        sequence=4,
        time=ts(0),
        type=admin_pb2.EVENT_TYPE_WARNING,
        reason="TunnelFailed",
        involved=common_pb2.ObjectRef(kind="Tunnel", name="t-1"),
        message="no answer",
    )
    assert event_line(event) == "2026-11-29T12:00:00Z  Warning  TunnelFailed  tunnel/t-1  no answer"
