"""What the operator writes into a custom resource's status and sends to the controller."""

from __future__ import annotations

import datetime
import subprocess
import sys

import pytest

from meshsec.controller.operator.conditions import (
    MAX_MESSAGE,
    Condition,
    field_problems,
    join_problems,
    manifest,
    tunnel_conditions,
    with_condition,
)
from meshsec.controller.resources import FieldError, Kind, ValidationError, parse_resource

T0 = datetime.datetime(2026, 1, 1, 12, 0, tzinfo=datetime.UTC)
T1 = T0 + datetime.timedelta(minutes=5)


def with_ready(
    previous: object, status: str, reason: str, message: str, generation: int, now: datetime.datetime
) -> list[dict[str, object]]:
    return with_condition(previous, Condition("Ready", status, reason, message), generation, now)


def test_manifest_keeps_identity_labels_and_spec_only() -> None:
    body = {
        "apiVersion": "meshsec.io/v1alpha1",
        "kind": "Site",
        "metadata": {
            "name": "dc1",
            "uid": "0f0f",
            "resourceVersion": "17",
            "labels": {"region": "eu"},
            "annotations": {"operator.meshsec.io/last-handled-configuration": "{}"},
            "finalizers": ["meshsec.io/controller-sync"],
        },
        "spec": {"prefixes": ["198.19.1.0/24"], "gatewaySelector": {}},
        "status": {"conditions": []},
    }
    doc = manifest(Kind.SITE, body)
    assert doc == {
        "apiVersion": "meshsec.io/v1alpha1",
        "kind": "Site",
        "metadata": {"name": "dc1", "labels": {"region": "eu"}},
        "spec": {"prefixes": ["198.19.1.0/24"], "gatewaySelector": {}},
    }
    assert parse_resource(doc).metadata.name == "dc1"


def test_ready_transition_time_moves_only_with_the_status() -> None:
    first = with_ready(None, "False", "ValidationFailed", "spec.prefixes: required", 1, T0)
    assert first == [
        {
            "type": "Ready",
            "status": "False",
            "reason": "ValidationFailed",
            "message": "spec.prefixes: required",
            "lastTransitionTime": "2026-01-01T12:00:00Z",
            "observedGeneration": 1,
        }
    ]
    # Same status, new message and generation: the transition time stays.
    again = with_ready(first, "False", "ValidationFailed", "spec.prefixes[0]: bad", 2, T1)
    assert again[0]["lastTransitionTime"] == "2026-01-01T12:00:00Z"
    assert (again[0]["message"], again[0]["observedGeneration"]) == ("spec.prefixes[0]: bad", 2)
    flipped = with_ready(again, "True", "Applied", "in the controller (created)", 2, T1)
    assert flipped[0]["lastTransitionTime"] == "2026-01-01T12:05:00Z"
    # A resync that finds nothing new produces the same list (so no status patch is sent).
    later = T1 + datetime.timedelta(seconds=30)
    assert with_ready(flipped, "True", "Applied", "in the controller (created)", 2, later) == flipped


def test_other_conditions_are_kept() -> None:
    other = {"type": "Custom", "status": "True"}
    out = with_ready([other, "junk"], "True", "Applied", "", 1, T0)
    assert out[0] == other and out[1]["type"] == "Ready" and len(out) == 2
    # Replaced where it stands: another condition after it keeps its place.
    applied = with_condition(out, Condition("Applied", "True", "Applied", ""), 1, T0)
    again = with_ready(applied, "False", "TunnelsNotEstablished", "0/1 tunnels established", 1, T1)
    assert [c["type"] for c in again] == ["Custom", "Ready", "Applied"]


def _pairs(*conditions: Condition) -> list[tuple[str, str, str, str]]:
    return [(c.type, c.status, c.reason, c.message) for c in conditions]


def test_ready_and_degraded_from_tunnel_counts() -> None:
    assert _pairs(*tunnel_conditions(3, 3, 0)) == [
        ("Ready", "True", "TunnelsEstablished", "3/3 tunnels established"),
        ("Degraded", "False", "NoFailures", "3/3 tunnels established"),
    ]
    assert _pairs(*tunnel_conditions(0, 0, 0)) == [
        ("Ready", "True", "NoTunnels", "0/0 tunnels established"),
        ("Degraded", "False", "NoFailures", "0/0 tunnels established"),
    ]
    assert _pairs(*tunnel_conditions(3, 1, 0)) == [
        ("Ready", "False", "TunnelsNotEstablished", "1/3 tunnels established, 2 not up yet"),
        ("Degraded", "False", "NoFailures", "1/3 tunnels established, 2 not up yet"),
    ]
    counts = "1/4 tunnels established, 2 failed, 1 not up yet"
    assert _pairs(*tunnel_conditions(4, 1, 2)) == [
        ("Ready", "False", "TunnelsNotEstablished", counts),
        ("Degraded", "True", "TunnelsFailed", counts),
    ]
    # A Node: its agent must be online as well.
    assert _pairs(*tunnel_conditions(1, 1, 0, "Online"))[0][1] == "True"
    assert _pairs(*tunnel_conditions(0, 0, 0, "Pending")) == [
        ("Ready", "False", "AgentPending", "its agent has not reported yet; 0/0 tunnels established"),
        ("Degraded", "False", "NoFailures", "0/0 tunnels established"),
    ]
    offline = "its agent stopped reporting; 1/1 tunnels established"
    assert _pairs(*tunnel_conditions(1, 1, 0, "Offline")) == [
        ("Ready", "False", "AgentOffline", offline),
        ("Degraded", "True", "AgentOffline", offline),
    ]


def test_problems_name_the_field_or_the_other_resource() -> None:
    errors = [
        FieldError("Node", "gw1", "spec.site", "references unknown Site/dc9"),
        FieldError("Site", "dc2", "spec.prefixes", "198.19.2.0/24 overlaps Site/dc1"),
    ]
    assert field_problems(errors, Kind.NODE, "gw1") == (
        "spec.site: references unknown Site/dc9",
        "Site/dc2: spec.prefixes: 198.19.2.0/24 overlaps Site/dc1",
    )


def test_parser_errors_become_field_paths() -> None:
    doc = {
        "apiVersion": "meshsec.io/v1alpha1",
        "kind": "Site",
        "metadata": {"name": "x"},
        "spec": {"prefixes": ["bad"]},
    }
    with pytest.raises(ValidationError) as info:
        parse_resource(doc)
    problems = field_problems(info.value.errors, Kind.SITE, "x")
    assert any(p.startswith("spec.prefixes[0]: invalid CIDR") for p in problems)
    assert any(p.startswith("spec.gatewaySelector: required") for p in problems)


def test_long_problem_lists_are_cut_with_a_count() -> None:
    problems = [f"spec.prefixes[{i}]: invalid CIDR 'x{i}'" for i in range(500)]
    text = join_problems(problems)
    assert len(text) <= MAX_MESSAGE
    assert text.endswith("(500 problems)")
    assert join_problems(problems[:2]) == "; ".join(problems[:2])


def test_operator_entry_point_help() -> None:
    pytest.importorskip("kopf", reason="kopf not installed (k8s extra)")
    result = subprocess.run(
        [sys.executable, "-m", "meshsec.controller.operator", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "--admin-socket" in result.stdout and "--peering" in result.stdout
