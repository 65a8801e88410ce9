"""The computed mesh as a Graphviz picture: sites are clusters, tunnels are edges coloured by state."""

from __future__ import annotations

import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

from meshsec.meshctl.errors import UserError
from meshsec.meshctl.printable import printable
from meshsec.meshctl.views import state_name
from meshsec.v1 import admin_pb2, common_pb2

EDGE_COLOURS = {
    "ESTABLISHED": "forestgreen",
    "REKEYING": "forestgreen",
    "CONNECTING": "orange",
    "FAILED": "red",
    "DELETING": "grey50",
    "DOWN": "grey60",
}
EDGE_STYLES = {"DOWN": "dashed", "DELETING": "dashed", "CONNECTING": "dashed"}


def quote(text: str) -> str:
    """A DOT string; ``\\n`` inside stays a DOT line break, quotes are escaped."""
    return '"' + text.replace('"', '\\"') + '"'


def node_id(kind: str, name: str) -> str:
    return quote(("gw:" if kind == "ExternalGateway" else "node:") + name)


def to_dot(topology: admin_pb2.Topology) -> str:
    lines = [
        "graph meshsec {",
        '  graph [fontname="Helvetica", rankdir=LR, labelloc=t, label="meshsec mesh"];',
        '  node [fontname="Helvetica", shape=box, style="rounded,filled", fillcolor=white];',
        '  edge [fontname="Helvetica", fontsize=9, penwidth=2];',
    ]
    by_site: dict[str, list[admin_pb2.TopologyNode]] = defaultdict(list)
    for node in topology.nodes:
        by_site[node.site].append(node)
    site_names = [s.name for s in topology.sites] + sorted(set(by_site) - {s.name for s in topology.sites})
    sites = {s.name: s for s in topology.sites}
    for index, site_name in enumerate(site_names):
        site = sites.get(site_name)
        prefixes = ", ".join(site.prefixes) if site is not None else ""
        lines.append(f"  subgraph cluster_{index} {{")
        site_label = quote(site_name + "\\n" + prefixes if prefixes else site_name)
        lines.append(f"    label={site_label};")
        lines.append('    style="rounded,filled"; fillcolor=aliceblue; color=steelblue;')
        for node in sorted(by_site.get(site_name, []), key=lambda n: n.name):
            public = [e.address for e in node.endpoints if e.scope == common_pb2.ADDRESS_SCOPE_PUBLIC]
            address = (public or [e.address for e in node.endpoints] or [""])[0]
            fill = "honeydew" if node.online else "mistyrose"
            label = f"{node.name}\\n{address}" if address else node.name
            lines.append(f"    {node_id('Node', node.name)} [label={quote(label)}, fillcolor={fill}];")
        if not by_site.get(site_name):
            lines.append(f'    {quote("site:" + site_name)} [label="(no nodes)", style=dashed];')
        lines.append("  }")
    if topology.external_gateways:
        lines.append("  subgraph cluster_external {")
        lines.append('    label="external gateways"; style="dashed"; color=grey40;')
        for gw in topology.external_gateways:
            label = f"{gw.name}\\n{gw.endpoint.address}\\n{', '.join(gw.prefixes)}"
            lines.append(
                f"    {node_id('ExternalGateway', gw.name)} [label={quote(label)}, shape=component];"
            )
        lines.append("  }")
    for link in sorted(topology.links, key=lambda lk: lk.tunnel_id):
        state = state_name(link.state)
        edge_label = quote(link.policy + "\\n" + state)
        attrs = [
            f"color={EDGE_COLOURS.get(state, 'grey60')}",
            f"label={edge_label}",
            f"tooltip={quote(link.tunnel_id)}",
        ]
        if state in EDGE_STYLES:
            attrs.append(f"style={EDGE_STYLES[state]}")
        a, b = node_id(link.a.kind, link.a.name), node_id(link.b.kind, link.b.name)
        lines.append(f"  {a} -- {b} [{', '.join(attrs)}];")
    lines.append("}")
    # Names and addresses come from the controller; DOT is often read in a terminal too.
    return "".join(printable(line) + "\n" for line in lines)


def write_svg(dot_source: str, path: Path) -> None:
    """Render with Graphviz's ``dot``; a clear error names the package when it is missing."""
    dot = shutil.which("dot")
    if dot is None:
        raise UserError("the `dot` program is not installed", hint="apt-get install graphviz")
    proc = subprocess.run(
        [dot, "-Tsvg", "-o", str(path)],
        input=dot_source,
        text=True,
        capture_output=True,
        timeout=60,
        check=False,
    )
    if proc.returncode != 0:
        raise UserError(f"dot failed ({proc.returncode}): {proc.stderr.strip()}")
