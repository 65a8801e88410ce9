"""The commands that talk to the controller: one function per verb, all printing to stdout."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

from google.protobuf import timestamp_pb2

from meshsec.common.api import missing_psk_warning
from meshsec.common.version import VERSION
from meshsec.meshctl import admins, day2, manifest, remote_access, secrets
from meshsec.meshctl.client import AdminClient
from meshsec.meshctl.config import MeshConfig, config_path
from meshsec.meshctl.convert import message_to_dict, resource_to_dict, struct_to_dict
from meshsec.meshctl.describe import describe_resource, describe_tunnel
from meshsec.meshctl.errors import EXIT_OK, EXIT_USER, MeshctlError, UsageError, UserError
from meshsec.meshctl.events import EVENT_COLUMNS, event_json, event_line, event_row
from meshsec.meshctl.kinds import (
    GATEWAY,
    NODE,
    POLICY,
    REMOTE_ACCESS_KINDS,
    SITE,
    USER,
    Kind,
    is_lease,
    is_tunnel,
    resource_kind,
)
from meshsec.meshctl.printable import printable
from meshsec.meshctl.table import Cell, Column, print_table
from meshsec.meshctl.topology import to_dot, write_svg
from meshsec.meshctl.views import (
    dump,
    resource_columns,
    resource_document,
    resource_row,
    tunnel_columns,
    tunnel_document,
    tunnel_row,
)
from meshsec.v1 import admin_pb2, common_pb2

ACTIONS = {
    admin_pb2.APPLY_ACTION_CREATED: "created",
    admin_pb2.APPLY_ACTION_CONFIGURED: "configured",
    admin_pb2.APPLY_ACTION_UNCHANGED: "unchanged",
}


def dispatch(args: argparse.Namespace, client: AdminClient, out: TextIO | None = None) -> int:
    handlers: dict[str, Callable[[argparse.Namespace, AdminClient, TextIO], int]] = {
        "apply": apply,
        "delete": delete,
        "get": get,
        "describe": describe,
        "topology": topology,
        "events": events,
        "token": token,
        "secret": secrets.secret,
        "remote-access": remote_access.remote_access,
        "version": version,
        "admin": lambda a, c, o: admins.admin(a, c, o, MeshConfig.load(config_path(a.config))),
        "diagnose": day2.diagnose,
        "wait": day2.wait,
    }
    return handlers[args.command](args, client, out or sys.stdout)


def apply(args: argparse.Namespace, client: AdminClient, out: TextIO) -> int:
    documents = _load_noting(args.filename)
    response = client.apply(
        [d.resource for d in documents], dry_run=args.dry_run, labels=[d.where for d in documents]
    )
    if args.output != "text":
        # Past the controller's response budget a result carries no resource (`meshctl get` it).
        results = [
            {
                "kind": r.kind,
                "name": r.name,
                "action": ACTIONS.get(r.action, "unknown"),
                **({"resource": resource_to_dict(r.resource)} if r.HasField("resource") else {}),
                "warnings": list(r.warnings),
            }
            for r in response.results
        ]
        out.write(dump({"dryRun": bool(args.dry_run), "results": results}, args.output))
        return EXIT_OK
    suffix = " (dry run)" if args.dry_run else ""
    for result in response.results:
        line = f"{result.kind.lower()}/{result.name} {ACTIONS.get(result.action, 'applied')}{suffix}"
        out.write(printable(line) + "\n")
        for warning in result.warnings:
            sys.stderr.write(printable(f"warning: {result.kind.lower()}/{result.name}: {warning}") + "\n")
    return EXIT_OK


def _load_noting(paths: list[str]) -> list[manifest.Document]:
    """The manifests, with their notices (a deprecated kind name) on stderr."""
    documents = manifest.load(paths)
    for notice in manifest.notices(documents):
        sys.stderr.write(printable(f"note: {notice}") + "\n")
    return documents


def delete(args: argparse.Namespace, client: AdminClient, out: TextIO) -> int:
    targets: list[tuple[str, str]] = []
    if args.filename:
        if args.kind:
            raise UsageError("give either -f FILE or KIND NAME, not both")
        targets = [
            (d.resource.kind, d.resource.metadata.name)
            for d in manifest.deletion_order(_load_noting(args.filename))
        ]
    else:
        if not args.kind or not args.names:
            raise UsageError(
                "delete needs -f FILE or KIND NAME...", hint="e.g. `meshctl delete node dc1-gw1`"
            )
        kind = resource_kind(args.kind)
        targets = [(kind.name, name) for name in args.names]
    status = EXIT_OK
    for kind_name, name in targets:
        try:
            client.delete(kind_name, name)
        except UserError as error:
            if "NOT_FOUND" in error.message or "not found" in error.message.lower():
                if args.ignore_not_found:
                    continue
                sys.stderr.write(printable(f"error: {kind_name.lower()}/{name} not found") + "\n")
                status = EXIT_USER
                continue
            raise
        out.write(printable(f"{kind_name.lower()}/{name} deleted") + "\n")
    return status


def _topology_or_none(client: AdminClient) -> admin_pb2.Topology | None:
    """Live node facts for tables; a controller without them still gets a table."""
    try:
        return client.topology()
    except MeshctlError:
        return None


def get(args: argparse.Namespace, client: AdminClient, out: TextIO) -> int:
    if getattr(args, "watch", False):
        return get_watch(args, client, out)
    if is_tunnel(args.kind):
        return get_tunnels(args, client, out)
    if secrets.is_secret(args.kind):
        return secrets.get_secrets(args, client, out)
    if is_lease(args.kind):
        return remote_access.get_leases(args, client, out)
    kind = resource_kind(args.kind)
    resources = _resources(args, client, kind)
    if args.output in ("json", "yaml"):
        out.write(dump(resource_document(resources, single=len(args.names) == 1), args.output))
        return EXIT_OK
    if not resources:
        sys.stderr.write(f"No {kind.plural} found.\n")
        return EXIT_OK
    wide = args.output == "wide"
    live = _topology_or_none(client) if kind in (SITE, NODE) else None
    rows = [resource_row(kind, r, wide=wide, topology=live) for r in resources]
    print_table(resource_columns(kind, wide), rows, out)
    return EXIT_OK


def _resources(args: argparse.Namespace, client: AdminClient, kind: Kind) -> list[common_pb2.Resource]:
    if args.names:
        if args.selector:
            raise UsageError("a label selector cannot be combined with names")
        return [client.get(kind.name, name) for name in args.names]
    return client.list_resources(kind.name, args.selector)


def get_watch(args: argparse.Namespace, client: AdminClient, out: TextIO) -> int:
    if args.output not in ("table", "wide"):
        raise UsageError(
            "--watch prints tables (-o table or wide)", hint="`meshctl events -w -o json` for scripts"
        )
    wide = args.output == "wide"
    if is_tunnel(args.kind):

        def snapshot() -> tuple[list[Column], dict[str, list[Cell]]]:
            rows = {t.tunnel_id: tunnel_row(t, wide=wide) for t in _tunnels(args, client)}
            return tunnel_columns(wide), rows

    else:
        if secrets.is_secret(args.kind):
            raise UsageError("secrets cannot be watched")
        kind = resource_kind(args.kind)

        def snapshot() -> tuple[list[Column], dict[str, list[Cell]]]:
            live = _topology_or_none(client) if kind in (SITE, NODE) else None
            rows = {
                r.metadata.name: resource_row(kind, r, wide=wide, topology=live)
                for r in _resources(args, client, kind)
            }
            return resource_columns(kind, wide), rows

    return day2.watch(snapshot, out, interval=args.interval, timeout=args.watch_timeout)


def tunnel_state(text: str) -> common_pb2.TunnelState:
    if not text:
        return common_pb2.TUNNEL_STATE_UNSPECIFIED
    name = "TUNNEL_STATE_" + text.upper()
    if name not in common_pb2.TunnelState.keys():  # noqa: SIM118 (an enum wrapper, not a dict)
        known = ", ".join(k.removeprefix("TUNNEL_STATE_").lower() for k in common_pb2.TunnelState.keys()[1:])
        raise UsageError(f"--state {text!r}: expected one of {known}")
    return common_pb2.TunnelState.Value(name)  # type: ignore[return-value]


def get_tunnels(args: argparse.Namespace, client: AdminClient, out: TextIO) -> int:
    tunnels = _tunnels(args, client)
    if args.output in ("json", "yaml"):
        out.write(dump(tunnel_document(tunnels, single=len(args.names) == 1), args.output))
        return EXIT_OK
    if not tunnels:
        sys.stderr.write("No tunnels found.\n")
        return EXIT_OK
    wide = args.output == "wide"
    print_table(tunnel_columns(wide), [tunnel_row(t, wide=wide) for t in tunnels], out)
    return EXIT_OK


def _tunnels(args: argparse.Namespace, client: AdminClient) -> list[admin_pb2.TunnelInfo]:
    if args.selector:
        raise UsageError("tunnels have no labels; filter with --node, --site, --policy or --state")
    request = admin_pb2.ListTunnelsRequest(
        node=args.node, site=args.site, policy=args.policy, state=tunnel_state(args.state)
    )
    tunnels = client.tunnels(request)
    if args.names:
        wanted = set(args.names)
        missing = wanted - {t.tunnel_id for t in tunnels}
        if missing:
            raise UserError(
                f"tunnel {', '.join(sorted(missing))} not found",
                hint="`meshctl get tunnels -o wide` lists tunnel ids",
            )
        tunnels = [t for t in tunnels if t.tunnel_id in wanted]
    return tunnels


def recent_events(client: AdminClient, *, name: str = "", kinds: Sequence[str] = ()) -> list[admin_pb2.Event]:
    request = admin_pb2.WatchEventsRequest(
        since_time=timestamp_pb2.Timestamp(seconds=1), name=name, kinds=list(kinds)
    )
    try:
        return list(client.events(request, follow=False))
    except MeshctlError:
        return []


def describe(args: argparse.Namespace, client: AdminClient, out: TextIO) -> int:
    if is_tunnel(args.kind):
        matches = [t for t in client.tunnels() if t.tunnel_id == args.name]
        if not matches:
            raise UserError(f"tunnel {args.name!r} not found", hint="`meshctl get tunnels -o wide` lists ids")
        out.write(describe_tunnel(matches[0], events=recent_events(client, name=args.name)))
        return EXIT_OK
    kind = resource_kind(args.kind)
    resource = client.get(kind.name, args.name)
    if kind in REMOTE_ACCESS_KINDS:
        leases = client.leases(args.name) if kind == USER else []
        out.write(
            describe_resource(
                resource,
                tunnels=[],
                events=recent_events(client, name=args.name),
                extra=remote_access.lease_lines(leases) if kind == USER else (),
            )
        )
        return EXIT_OK
    out.write(
        describe_resource(
            resource,
            tunnels=client.tunnels(_tunnel_filter(kind, args.name)),
            events=recent_events(client, name=args.name),
            node=_node_facts(client, kind, args.name),
            warnings=_warnings(client, resource),
        )
    )
    return EXIT_OK


def _warnings(client: AdminClient, resource: common_pb2.Resource) -> list[str]:
    """An ExternalGateway whose PSK Secret is missing (the controller says so at apply time too)."""
    if resource.kind != "ExternalGateway":
        return []
    ref = struct_to_dict(resource.spec).get("auth", {}).get("pskSecretRef")
    if not ref or ref in {s.name for s in client.list_secrets()}:
        return []
    return [missing_psk_warning(str(ref))]


def _tunnel_filter(kind: Kind, name: str) -> admin_pb2.ListTunnelsRequest:
    if kind == NODE:
        return admin_pb2.ListTunnelsRequest(node=name)
    if kind == SITE:
        return admin_pb2.ListTunnelsRequest(site=name)
    if kind == POLICY:
        return admin_pb2.ListTunnelsRequest(policy=name)
    assert kind == GATEWAY
    # Gateway tunnels come from the gateway's own resource, named after it as the policy.
    return admin_pb2.ListTunnelsRequest(policy=name)


def _node_facts(client: AdminClient, kind: Kind, name: str) -> admin_pb2.TopologyNode | None:
    if kind != NODE:
        return None
    live = _topology_or_none(client)
    return next((n for n in live.nodes if n.name == name), None) if live is not None else None


def topology(args: argparse.Namespace, client: AdminClient, out: TextIO) -> int:
    source = to_dot(client.topology(args.site))
    if args.svg:
        write_svg(source, Path(args.svg))
        sys.stderr.write(f"wrote {args.svg}\n")
    if args.dot and args.dot != "-":
        Path(args.dot).write_text(source, encoding="utf-8")
        sys.stderr.write(f"wrote {args.dot}\n")
    elif args.dot == "-" or not args.svg:
        out.write(source)
    return EXIT_OK


def events(args: argparse.Namespace, client: AdminClient, out: TextIO) -> int:
    request = admin_pb2.WatchEventsRequest(
        since_time=timestamp_pb2.Timestamp(seconds=1), name=args.name, kinds=args.kind
    )
    stream = client.events(request, follow=args.watch)
    if args.output == "json":
        for event in stream:
            out.write(event_json(event) + "\n")
            out.flush()
        return EXIT_OK
    if not args.watch:
        found = list(stream)
        if not found:
            sys.stderr.write("No events.\n")
        else:
            print_table(EVENT_COLUMNS, [event_row(e) for e in found], out)
        return EXIT_OK
    for event in stream:
        out.write(event_line(event) + "\n")
        out.flush()
    return EXIT_OK


def version(args: argparse.Namespace, client: AdminClient, out: TextIO) -> int:
    """meshctl's own version, then the controller's (kubectl-style: an unreachable controller is an
    error after the client version has been printed)."""
    answer: admin_pb2.GetVersionResponse | None = None
    failure: MeshctlError | None = None
    if not args.client:
        try:
            answer = client.version()
        except MeshctlError as error:
            failure = error
    if args.output == "text":
        out.write(f"meshctl:    {VERSION}\n")
        if answer is not None:
            replica = f" (replica {printable(answer.replica)})" if answer.replica else ""
            out.write(f"controller: {printable(answer.version)}{replica}\n")
    else:
        document = {"meshctl": VERSION}
        if answer is not None:
            document["controller"] = answer.version
            document["replica"] = answer.replica
        out.write(dump(document, args.output))
    if failure is not None:
        raise failure
    return EXIT_OK


def token(args: argparse.Namespace, client: AdminClient, out: TextIO) -> int:
    if args.token_command == "revoke":
        client.revoke_token(args.token_id)
        out.write(printable(f"token {args.token_id} revoked") + "\n")
        return EXIT_OK
    labels: dict[str, str] = {}
    for item in args.label:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--label {item!r}: expected KEY=VALUE")
        labels[key] = value
    response = client.create_token(
        admin_pb2.CreateBootstrapTokenRequest(
            node_name=args.node,
            site=args.site,
            ttl_seconds=args.ttl,
            uses=args.uses,
            node_labels=labels,
            allow_reenroll=args.allow_reenroll,
        )
    )
    if args.output == "json":
        out.write(dump(message_to_dict(response), "json"))
        return EXIT_OK
    out.write(printable(response.token) + "\n")
    sys.stderr.write(
        printable(
            f"token id {response.token_id}, {response.uses} use(s), expires "
            f"{response.expires_at.ToJsonString()}; "
            f"pin the controller CA with sha256 {response.ca_cert_sha256}"
        )
        + "\nThe token is shown once. Save it on the node (e.g. in /etc/meshsec/token, mode 0600) and start "
        + "its agent with:\n  "
        + printable(shlex.join(agent_enroll_argv(args.node, response.ca_cert_sha256)))
        + "\n"
    )
    return EXIT_OK


def agent_enroll_argv(node: str, ca_sha256: str, token_file: str = "/etc/meshsec/token") -> list[str]:
    """The agent command line that enrolls `node` with a token (tested against the agent's own
    argument parser). The controller's listener addresses are placeholders: meshctl only knows
    the admin endpoint."""
    return ["meshsec-agent", "run", "--controller", "CONTROLLER:PORT",
            "--bootstrap", "CONTROLLER:BOOTSTRAP_PORT", "--node", node,
            "--state-dir", "/var/lib/meshsec", "--token-file", token_file,
            "--ca-sha256", ca_sha256]
