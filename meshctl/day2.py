"""Day-2 verbs: `diagnose`, `wait`, and the `--watch` loop of `get`.

Watching and waiting poll the controller (ListTunnels, List, GetTopology) every `--interval`
seconds: the same calls `get` makes, so they need nothing the controller does not already offer,
and a controller restart in between costs one missed poll, not a broken stream.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from meshsec.meshctl import diagnose as diag
from meshsec.meshctl.client import AdminClient
from meshsec.meshctl.errors import EXIT_OK, EXIT_USER, MeshctlError, UsageError, UserError
from meshsec.meshctl.printable import printable
from meshsec.meshctl.probe import probe_findings
from meshsec.meshctl.table import Cell, Column, Styled, print_table, render, use_colour
from meshsec.meshctl.views import dump, state_name
from meshsec.v1 import admin_pb2

# Established also holds while rekeying: the tunnel carries traffic throughout.
CONDITIONS: dict[str, tuple[str, ...]] = {
    "established": ("ESTABLISHED", "REKEYING"),
    "connecting": ("CONNECTING",),
    "failed": ("FAILED",),
    "down": ("DOWN",),
}
_AGE_COLUMNS = {"UP", "AGE"}
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)?$")


def duration_arg(text: str) -> float:
    """``60``, ``60s``, ``2m``, ``1h``, ``500ms`` in seconds (kubectl's --timeout spelling)."""
    match = _DURATION.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a duration like 30s, 2m or 1h")
    value = float(match.group(1))
    return value * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[match.group(2) or "s"]


def add_parsers(sub: Any, parser_class: type[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("diagnose", help="what is wrong with tunnels and nodes: one line per finding")
    p.add_argument("node", nargs="?", metavar="NODE", help="only this node and its tunnels")
    p.add_argument("--tunnel", metavar="ID", help="only this tunnel and its ends")
    p.add_argument("-o", "--output", choices=("table", "json"), default="table")
    p.add_argument(
        "--probe",
        action="store_true",
        help="with NODE, run on the node: send one IKE_SA_INIT to each peer endpoint and "
        "DF-set pings for the path MTU",
    )
    p.add_argument(
        "--probe-from",
        metavar="ADDRESS",
        help="source address of the probes (default: the node's endpoint of each tunnel)",
    )
    p.add_argument(
        "--probe-timeout",
        type=duration_arg,
        default=2.0,
        help="how long to wait for each IKE answer (default 2s)",
    )

    p = sub.add_parser("wait", help="wait until tunnels meet a condition (kubectl wait style)")
    p.add_argument("targets", nargs="*", metavar="tunnel/ID")
    p.add_argument(
        "--for",
        dest="condition",
        required=True,
        metavar="condition=Established",
        help="condition=Established|Connecting|Failed|Down",
    )
    p.add_argument("--all", action="store_true", help="every tunnel the controller has")
    p.add_argument(
        "--timeout",
        dest="wait_timeout",
        type=duration_arg,
        default=30.0,
        help="give up after this long (default 30s; 60, 60s, 2m)",
    )
    p.add_argument("--interval", type=duration_arg, default=1.0, help="poll interval (default 1s)")


def add_watch_arguments(get_parser: argparse.ArgumentParser) -> None:
    get_parser.add_argument(
        "-w", "--watch", action="store_true", help="print changes until Ctrl-C or --timeout"
    )
    get_parser.add_argument(
        "--timeout",
        dest="watch_timeout",
        type=duration_arg,
        default=None,
        help="with --watch: stop after this long (60, 60s, 2m)",
    )
    get_parser.add_argument("--interval", type=duration_arg, default=1.0, help="with --watch: poll interval")


# -- diagnose ---------------------------------------------------------------------------------


def diagnose(args: argparse.Namespace, client: AdminClient, out: TextIO) -> int:
    request = admin_pb2.ListTunnelsRequest(node=args.node or "")
    tunnels = client.tunnels(request)
    if args.tunnel:
        tunnels = [t for t in tunnels if t.tunnel_id == args.tunnel]
        if not tunnels:
            raise UserError(f"tunnel {args.tunnel} not found", hint="`meshctl get tunnels -o wide` lists ids")
    topology = client.topology()
    known = {n.name for n in topology.nodes}
    if args.node and args.node not in known:
        raise UserError(f"node {args.node} not found", hint="`meshctl get nodes` lists them")
    if args.node:
        nodes = {args.node}
    elif args.tunnel:
        nodes = {e.name for t in tunnels for e in t.ends} & known
    else:
        nodes = known
    # Proposals are compared against the reverse tunnel, which a node filter may have left out.
    everything = client.tunnels() if args.node or args.tunnel else tunnels
    findings = diag.diagnose(tunnels, topology, nodes, all_tunnels=everything)
    if args.probe or args.probe_from:
        if not args.node:
            raise UsageError("--probe needs a NODE", hint="meshctl diagnose NODE --probe, run on NODE")
        findings = diag.ordered(
            findings
            + probe_findings(
                tunnels, topology, args.node, probe_from=args.probe_from, wait_s=args.probe_timeout
            )
        )
    if args.output == "json":
        out.write(dump(diag.document(findings), "json"))
    elif findings:
        print_table(diag.COLUMNS, [diag.finding_row(f) for f in findings], out)
    else:
        sys.stderr.write(f"No problems found ({len(tunnels)} tunnel(s), {len(nodes)} node(s)).\n")
    return EXIT_USER if any(f.severity == diag.ERROR for f in findings) else EXIT_OK


# -- wait -------------------------------------------------------------------------------------


def parse_condition(text: str) -> tuple[str, tuple[str, ...]]:
    kind, sep, value = text.partition("=")
    if kind.lower() != "condition" or not sep or value.lower() not in CONDITIONS:
        raise UsageError(
            f"--for {text!r}: expected condition=NAME with NAME one of "
            + ", ".join(c.capitalize() for c in CONDITIONS)
        )
    return value.capitalize(), CONDITIONS[value.lower()]


def parse_targets(targets: Sequence[str]) -> list[str]:
    ids = []
    for target in targets:
        kind, sep, name = target.partition("/")
        if not sep or kind.lower() not in ("tunnel", "tunnels", "tun") or not name:
            raise UsageError(f"{target!r}: expected tunnel/ID")
        ids.append(name)
    return ids


def wait(args: argparse.Namespace, client: AdminClient, out: TextIO) -> int:
    condition, states = parse_condition(args.condition)
    ids = parse_targets(args.targets)
    if bool(ids) == bool(args.all):
        raise UsageError(
            "give tunnel/ID... or --all", hint="e.g. `meshctl wait --for=condition=Established --all`"
        )
    deadline = time.monotonic() + args.wait_timeout
    reported: set[str] = set()
    pending: dict[str, str] = {}
    while True:
        try:
            current = {t.tunnel_id: t for t in client.tunnels()}
        except MeshctlError as error:  # keep waiting through a controller restart
            pending = {tid: f"controller: {error.message}" for tid in ids or pending or ["*"]}
        else:
            wanted = ids or sorted(current)
            pending = {}
            for tid in wanted:
                info = current.get(tid)
                state = state_name(info.state) if info is not None else "NOT FOUND"
                if info is not None and state in states:
                    if tid not in reported:
                        reported.add(tid)
                        out.write(printable(f"tunnel/{tid} condition met ({condition})") + "\n")
                        out.flush()
                else:
                    pending[tid] = state
            if not pending and (ids or current):
                return EXIT_OK
        if time.monotonic() >= deadline:
            break
        time.sleep(min(args.interval, max(deadline - time.monotonic(), 0)))
    still = ", ".join(f"tunnel/{tid} ({state})" for tid, state in sorted(pending.items())) or "no tunnels"
    raise UserError(
        f"timed out after {args.wait_timeout:g}s waiting for condition={condition}: still pending {still}"
    )


# -- get --watch ------------------------------------------------------------------------------

Snapshot = Callable[[], tuple[list[Column], dict[str, list[Cell]]]]


def _key(columns: Sequence[Column], row: Sequence[Cell]) -> tuple[str, ...]:
    """What a change is: every cell but the ages, which change every second by themselves."""
    return tuple(str(c) for col, c in zip(columns, row, strict=True) if col.header not in _AGE_COLUMNS)


def watch(snapshot: Snapshot, out: TextIO, *, interval: float, timeout: float | None) -> int:
    """The table once, then each row that changed (and deleted ones, marked), kubectl style."""
    deadline = None if timeout is None else time.monotonic() + timeout
    columns, rows = snapshot()
    print_table(columns, list(rows.values()), out)
    out.flush()
    seen = {name: _key(columns, row) for name, row in rows.items()}
    previous = rows
    colour = use_colour(out)
    state_at = next((i for i, c in enumerate(columns) if c.header == "STATE"), None)
    while deadline is None or time.monotonic() < deadline:
        time.sleep(interval if deadline is None else max(min(interval, deadline - time.monotonic()), 0))
        try:
            columns, rows = snapshot()
        except MeshctlError as error:
            sys.stderr.write(f"watch: {printable(error.message)}; retrying\n")
            continue
        changed = [row for name, row in rows.items() if seen.get(name) != _key(columns, row)]
        for name in sorted(set(seen) - set(rows)):
            changed.append(_deleted(previous[name], state_at))
        for row in changed:
            # The header line is left out: only the row, laid out like the table's.
            text = render(columns, [row], colour=colour)
            out.write(text.split("\n", 1)[1])
        out.flush()
        seen = {name: _key(columns, row) for name, row in rows.items()}
        previous = rows
    return EXIT_OK


def _deleted(row: list[Cell], state_at: int | None) -> list[Cell]:
    if state_at is None:
        return row
    return [*row[:state_at], Styled("DELETED", "grey"), *row[state_at + 1 :]]
