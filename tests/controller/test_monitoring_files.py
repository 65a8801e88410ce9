"""deploy/monitoring/: the Grafana dashboard and the Prometheus rules name only metrics that a real
agent or controller exports. Both processes are started for real (a NodeAgent without a data
plane on 127.77.3.1, a controller on an embedded store) and their /metrics scraped over HTTP."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
from pathlib import Path

import pytest
import yaml

from meshsec.agent.node.agent import NodeAgent, NodeAgentConfig
from tests.controller.ctl_harness import running_controller

pytestmark = pytest.mark.timeout(60)
MONITORING = Path(__file__).resolve().parents[2] / "deploy" / "monitoring"
METRIC = re.compile(r"\bmeshsec_[a-z0-9_]+\b")
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}


def alert_expressions() -> list[str]:
    doc = yaml.safe_load((MONITORING / "meshsec-alerts.yaml").read_text())
    rules = [rule for group in doc["groups"] for rule in group["rules"]]
    assert rules and all(rule["alert"] and rule["expr"] for rule in rules)
    return [str(rule["expr"]) for rule in rules]


def dashboard_expressions() -> list[str]:
    doc = json.loads((MONITORING / "meshsec-dashboard.json").read_text())
    targets = [t for panel in doc["panels"] for t in panel["targets"]]
    assert targets
    return [t["expr"] for t in targets]


def exported_names(exposition: str) -> set[str]:
    """Every series name the text exposition can hold, from its # TYPE lines (so a labelled
    family with no series yet counts) and its samples."""
    names: set[str] = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            base = name.removesuffix("_total") if kind == "counter" else name
            names |= {base + s for s in SUFFIXES.get(kind, ("",))}  # a counter's base is no series
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        return str(answer.read().decode())


async def test_dashboard_and_alerts_name_only_exported_metrics(tmp_path: Path) -> None:
    agent = NodeAgent(
        NodeAgentConfig(
            controller="127.0.0.1:1", node="n1", state_dir=tmp_path / "agent", dataplane="none",
            ike_port=15700, bind=("127.77.3.1",), addresses=("127.77.3.1",), metrics="127.0.0.1:0",
        )
    )  # fmt: skip
    await agent.start()  # no credentials, no token: its controller task ends, /metrics stays up
    try:
        assert agent.metrics_port is not None
        agent_text = await asyncio.to_thread(scrape, agent.metrics_port)
    finally:
        await agent.stop()
    async with running_controller(tmp_path) as ctl:
        assert ctl.metrics_port is not None
        controller_text = await asyncio.to_thread(scrape, ctl.metrics_port)

    exported = exported_names(agent_text) | exported_names(controller_text)
    assert "meshsec_build_info" in exported_names(agent_text) & exported_names(controller_text)
    for source, expressions in (("alerts", alert_expressions()), ("dashboard", dashboard_expressions())):
        referenced = {name for expr in expressions for name in METRIC.findall(expr)}
        assert referenced, source
        assert referenced <= exported, f"{source} names metrics nobody exports: {referenced - exported}"


def test_the_check_catches_a_made_up_name() -> None:
    exposition = "# TYPE meshsec_x_total counter\nmeshsec_x_total 1.0\n# TYPE meshsec_h histogram\n"
    assert {"meshsec_x_total", "meshsec_h_bucket"} <= exported_names(exposition)
    assert not {"meshsec_x", "meshsec_h", "meshsec_x_bytes_total"} & exported_names(exposition)
