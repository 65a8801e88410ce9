"""meshctl's command line: argument parsing, dispatch, and exit codes (see meshsec.meshctl.errors)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from meshsec.common.cli_args import uint32
from meshsec.common.logging import add_log_format_argument
from meshsec.common.logging import configure as configure_logging
from meshsec.common.version import describe as describe_version
from meshsec.meshctl import (
    admins,
    commands,
    completion,
    config,
    config_commands,
    day2,
    remote_access,
    secrets,
)
from meshsec.meshctl.client import ENV_CONTROLLER, AdminClient
from meshsec.meshctl.config import ENV_CONFIG
from meshsec.meshctl.errors import EXIT_OK, MeshctlError, UsageError
from meshsec.meshctl.printable import printable
from meshsec.meshctl.table import paint, use_colour

OUTPUTS = ("table", "wide", "json", "yaml")


class _Parser(argparse.ArgumentParser):
    """Usage errors raise instead of exiting, so main() reports every failure the same way."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message, hint=f"see `{self.prog} --help`")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="meshctl", description="Manage a meshsec IPsec mesh through its controller.")
    parser.add_argument(
        "--controller",
        metavar="ADDR",
        help=f"unix:/path/admin.sock (default, or ${ENV_CONTROLLER}) or host:port with --tls-*",
    )
    parser.add_argument("--tls-ca", type=Path, help="CA bundle for a TCP controller")
    parser.add_argument("--tls-cert", type=Path, help="admin client certificate for a TCP controller")
    parser.add_argument("--tls-key", type=Path, help="admin client key for a TCP controller")
    parser.add_argument("--tls-server-name", help="name to check in the controller's serving certificate")
    parser.add_argument("--context", help="use this context of the meshctl config (see `meshctl config`)")
    parser.add_argument(
        "--config",
        type=Path,
        help=f"meshctl config file (default ${ENV_CONFIG}, else ~/.config/meshsec/config)",
    )
    parser.add_argument("--timeout", type=float, default=15.0, help="seconds per call (default 15)")
    parser.add_argument("--version", action="version", version=describe_version("meshctl"))
    add_log_format_argument(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("apply", help="create or update resources from YAML (all or nothing)")
    p.add_argument("-f", "--filename", action="append", required=True, metavar="FILE|DIR|-")
    p.add_argument("--dry-run", action="store_true", help="validate and show what would change")
    p.add_argument("-o", "--output", choices=("text", "json", "yaml"), default="text")

    p = sub.add_parser("delete", help="delete resources named in files, or KIND NAME")
    p.add_argument("kind", nargs="?")
    p.add_argument("names", nargs="*")
    p.add_argument("-f", "--filename", action="append", metavar="FILE|DIR|-")
    p.add_argument("--ignore-not-found", action="store_true")

    p = sub.add_parser(
        "get", help="list sites, nodes, policies, gateways, pools, users, tunnels, leases or secrets"
    )
    p.add_argument(
        "kind", metavar="KIND", help="sites|nodes|policies|gateways|pools|users|tunnels|leases|secrets"
    )
    p.add_argument("names", nargs="*", metavar="NAME")
    p.add_argument("-o", "--output", choices=OUTPUTS, default="table")
    p.add_argument("-l", "--selector", default="", help="label selector, e.g. region=eu,kind!=vpc")
    p.add_argument("--node", default="", help="tunnels: only those with an end on this node")
    p.add_argument("--site", default="", help="tunnels: only those touching this site")
    p.add_argument("--policy", default="", help="tunnels: only those from this policy")
    p.add_argument("--state", default="", help="tunnels: established|connecting|failed|down|...")
    day2.add_watch_arguments(p)

    p = sub.add_parser("describe", help="one object in detail: status, tunnels, recent events, last errors")
    p.add_argument("kind", metavar="KIND")
    p.add_argument("name", metavar="NAME")

    p = sub.add_parser("topology", help="the computed mesh as Graphviz DOT (default) or SVG")
    p.add_argument("--dot", nargs="?", const="-", metavar="FILE", help="write DOT to FILE (default stdout)")
    p.add_argument("--svg", metavar="FILE", help="render SVG with graphviz `dot` into FILE")
    p.add_argument("--site", default="", help="only this site and the tunnels touching it")

    p = sub.add_parser("events", help="controller events (retained, then live with --watch)")
    p.add_argument("-w", "--watch", action="store_true", help="keep following new events")
    p.add_argument("--kind", action="append", default=[], help="only events about this kind")
    p.add_argument("--name", default="", help="only events about this object")
    p.add_argument("-o", "--output", choices=("table", "json"), default="table")

    p = sub.add_parser("token", help="bootstrap tokens for enrolling nodes")
    tsub = p.add_subparsers(dest="token_command", metavar="ACTION", parser_class=_Parser)
    tsub.required = True
    t = tsub.add_parser("create", help="create a token for NODE (printed once)")
    t.add_argument("node", metavar="NODE")
    t.add_argument("--site", required=True)
    t.add_argument("--ttl", type=uint32, default=0, help="seconds (default: controller's, 1 h)")
    t.add_argument("--uses", type=uint32, default=1)
    t.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    t.add_argument("--allow-reenroll", action="store_true")
    t.add_argument("-o", "--output", choices=("text", "json"), default="text")
    t = tsub.add_parser("revoke", help="revoke a token by its id")
    t.add_argument("token_id", metavar="TOKEN_ID")

    secrets.add_parser(sub, _Parser)
    remote_access.add_parser(sub, _Parser)
    admins.add_parser(sub, _Parser)
    config_commands.add_parser(sub, _Parser)
    day2.add_parsers(sub, _Parser)
    completion.add_parser(sub, _Parser)

    p = sub.add_parser("version", help="meshctl's version and, when reachable, the controller's")
    p.add_argument("--client", action="store_true", help="only meshctl's own version, no controller call")
    p.add_argument("-o", "--output", choices=("text", "json", "yaml"), default="text")

    p = sub.add_parser("lab", help="the local multi-site lab in network namespaces (root)")
    lsub = p.add_subparsers(dest="lab_command", metavar="ACTION", parser_class=_Parser)
    lsub.required = True
    up = lsub.add_parser("up", help="build the lab, start controller and agents, prove traffic")
    up.add_argument(
        "--timeout",
        dest="lab_timeout",
        type=float,
        default=120.0,
        help="seconds to wait for tunnels (default 120)",
    )
    up.add_argument("--no-strongswan", action="store_true", help="leave out the external strongSwan gateway")
    up.add_argument("--no-agents", action="store_true", help="only the namespaces, controller and resources")
    up.add_argument(
        "--agents",
        choices=("auto", "connected", "standalone"),
        default="auto",
        help="connected: agents enroll and follow the controller (default when available); "
        "standalone: interim configs derived from the computed tunnels",
    )
    up.add_argument("-f", "--filename", help="mesh to apply (default: deploy/examples/lab-mesh.yaml)")
    up.add_argument(
        "--datacenters",
        type=int,
        choices=range(2, 5),
        default=2,
        metavar="N",
        help="data-centre sites dc1..dcN, 2 to 4 (default 2; more need -f with their Sites and Nodes)",
    )
    lsub.add_parser("down", help="remove everything the lab created")
    lsub.add_parser("status", help="what the lab is running, and its tunnels")
    rs = lsub.add_parser("restart", help="restart agents as a DaemonSet rollout does, under 10 ms pings; "
                         "print the packets lost per pair")  # fmt: skip
    rs.add_argument("nodes", nargs="*", metavar="NODE", help="node(s) to restart, one after another")
    rs.add_argument("--all", action="store_true", help="every lab agent, one after another")
    rs.add_argument("--timeout", dest="lab_timeout", type=float, default=60.0,
                    help="seconds for each agent to be ready with every tunnel up again (default 60)")
    return parser


def client_for(args: argparse.Namespace) -> AdminClient:
    target, tls = config.connection(args)
    return AdminClient(target, tls=tls, timeout=args.timeout)


def report(error: MeshctlError, stream: TextIO) -> None:
    colour = use_colour(stream)
    # Messages carry the controller's error details (and names from its resources).
    stream.write(f"{paint('error:', 'red', colour)} {printable(error.message, keep_newlines=True)}\n")
    if error.hint:
        stream.write(f"{paint('hint:', 'yellow', colour)} {printable(error.hint, keep_newlines=True)}\n")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command == "completion":  # needs no controller
            return completion.completion(args, parser, sys.stdout)
        configure_logging("WARNING", log_format=args.log_format)  # diagnostics of the libraries used
        if args.command == "lab":
            from meshsec.meshctl.lab.commands import run_lab  # the lab needs root tools; load on demand

            return run_lab(args)
        if args.command == "config":
            return config_commands.run_config(args, sys.stdout)
        with client_for(args) as client:
            return commands.dispatch(args, client)
    except MeshctlError as error:
        report(error, sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `meshctl get tunnels | head`
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
