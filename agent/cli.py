"""`meshsec-agent`: the node agent's command line.

    meshsec-agent --config FILE        standalone: IKE connections from a YAML file, no controller
    meshsec-agent status [--socket P | --state-dir DIR]
                                       tables of IKE/CHILD SAs from a running agent (--json: raw)
    meshsec-agent run --controller ADDR --node NAME [--state-dir DIR] ...
                                       controller-connected (docs/agent.md)
    meshsec-agent health [--live | --ready] [--socket P | --state-dir DIR]
                                       exit 0 (healthy) or 1, one line saying why (probes)
    meshsec-agent drain [--socket P | --state-dir DIR]
                                       a `run` agent leaves the mesh (DELETE to its peers, SAs
                                       removed) and exits; a plain SIGTERM is a restart instead

`main` dispatches on the mode flags and commands; each is a function taking the parsed arguments."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from meshsec.agent.node.statedir import STATUS_SOCKET
from meshsec.agent.standalone.config import DEFAULT_STATUS_SOCKET, ConfigError, load_config, world_readable
from meshsec.common.extras import require as require_extra
from meshsec.common.logging import add_log_format_argument
from meshsec.common.logging import configure as configure_logging
from meshsec.common.version import describe as describe_version

log = logging.getLogger("meshsec.agent")

EXIT_CONFIG = 2
EXIT_UNAVAILABLE = 3
# Where `run` keeps its key, certificate, desired state and (by default) its status socket.
DEFAULT_STATE_DIR = Path("/var/lib/meshsec")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meshsec-agent", description="meshsec node agent")
    parser.add_argument("--version", action="version", version=describe_version("meshsec-agent"))
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--config", type=Path, metavar="FILE", help="run standalone from a YAML file")
    parser.add_argument("--check", action="store_true", help="with --config: validate the file and exit")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default=None)
    add_log_format_argument(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    status = sub.add_parser("status", help="show the IKE and CHILD SAs of a running agent")
    where = status.add_mutually_exclusive_group()
    where.add_argument("--socket", type=Path, help="status socket path (default: try the standalone socket "
                       f"{DEFAULT_STATUS_SOCKET}, then {DEFAULT_STATE_DIR}/{STATUS_SOCKET})")
    where.add_argument("--state-dir", type=Path, help="a `run` agent's state dir: its status.sock")
    status.add_argument("--json", action="store_true", help="print the raw JSON document")
    health = sub.add_parser("health", help="exit 0 if a running agent is live (or ready), else 1")
    probe = health.add_mutually_exclusive_group()
    probe.add_argument("--live", action="store_true", help="the agent answers on its status socket (default)")
    probe.add_argument("--ready", action="store_true",
                       help="also enrolled, desired state received and applied by a running data plane")
    where = health.add_mutually_exclusive_group()
    where.add_argument("--socket", type=Path, help="status socket path")
    where.add_argument("--state-dir", type=Path, help="a `run` agent's state dir: its status.sock")
    health.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the answer (5)")
    drain = sub.add_parser("drain", help="a running `run` agent leaves the mesh and exits (node removal)")
    where = drain.add_mutually_exclusive_group()
    where.add_argument("--socket", type=Path, help="status socket path")
    where.add_argument("--state-dir", type=Path, help="a `run` agent's state dir: its status.sock")
    drain.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the answer (5)")
    run = sub.add_parser("run", help="run connected to a controller (docs/agent.md)")
    run.add_argument("--controller", required=True, metavar="HOST:PORT", help="controller mTLS listener")
    run.add_argument("--bootstrap", metavar="HOST:PORT", help="controller bootstrap listener (to enroll)")
    run.add_argument("--node", required=True, help="node name (certificate CN)")
    run.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR,
                     help=f"key, certificate, last desired state (default {DEFAULT_STATE_DIR})")
    run.add_argument("--token-file", type=Path, help="bootstrap token (needed until enrolled)")
    run.add_argument("--ca-file", type=Path, help="controller CA certificate (needed until enrolled)")
    run.add_argument("--ca-sha256", help="pin: SHA-256 of the CA certificate's DER (hex)")
    run.add_argument("--server-name", help="name to verify in the controller's certificate")
    run.add_argument(
        "--dataplane",
        choices=("auto", "userspace", "kernel", "none"),
        default="auto",
        help="none: IKE only, no packet processing (testing)",
    )
    run.add_argument("--tun-name", default="meshsec0", help="userspace data plane TUN device")
    run.add_argument("--userspace-daemon", choices=("spawn", "connect", "off"), default="spawn",
                     help="the userspace data plane runs as meshsec-dataplane, which forwards on while "
                          "the agent restarts: spawn (start it where none answers; default), connect "
                          "(systemd or a Kubernetes container starts it), off (in the agent: a restart "
                          "drops traffic)")
    run.add_argument("--dataplane-socket", type=Path,
                     help="meshsec-dataplane's control socket (default: <state-dir>/dataplane.sock)")
    run.add_argument("--ike-port", type=int, default=500)
    run.add_argument("--address", action="append", default=[], help="endpoint to report (repeatable)")
    run.add_argument("--status-socket", type=Path, help="default: <state-dir>/status.sock")
    run.add_argument("--metrics", metavar="HOST:PORT", help="serve Prometheus /metrics here")
    run.add_argument("--leave-on-stop", action="store_true",
                     help="SIGTERM/SIGINT leave the mesh (DELETE, SAs removed) instead of restarting "
                          "(the default: no DELETE, the data plane keeps forwarding)")
    run.add_argument("--responder-grace", type=float, default=10.0, help=argparse.SUPPRESS)
    # Half-open IKE SA limits (RFC 7296 2.6; standalone mode's `responder:` section): a
    # remote-access gateway whose clients share one carrier NAT address raises the per-address pair.
    limits = run.add_argument_group("half-open IKE SA limits")
    for flag, default, what in (
        ("--cookie-threshold", 10, "in all before COOKIEs are demanded"),
        ("--block-threshold", 1000, "in all beyond which new IKE_SA_INITs are dropped"),
        ("--cookie-threshold-per-address", 3, "from one address before COOKIEs are demanded"),
        ("--block-threshold-per-address", 5, "from one address beyond which its IKE_SA_INITs are dropped"),
    ):
        limits.add_argument(flag, type=_positive_int, default=default, metavar="N",
                            help=f"half-open IKE SAs {what} ({default})")
    run.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")
    add_log_format_argument(run)
    return parser


def run_until_stopped(
    agent: Coroutine[Any, Any, None], config_errors: tuple[type[Exception], ...] = ()
) -> int:
    """Runs the agent until it returns or Ctrl-C; what stops it from starting becomes an exit code
    (`config_errors`: the operator must fix the configuration; OSError: a resource is unavailable)."""
    try:
        asyncio.run(agent)
    except KeyboardInterrupt:
        pass
    except config_errors as exc:
        log.error("%s", exc)
        return EXIT_CONFIG
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return EXIT_UNAVAILABLE
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def run_connected(args: argparse.Namespace) -> int:
    from meshsec.agent.ike.responder import ResponderSettings
    from meshsec.agent.node.agent import NodeAgentConfig, run
    from meshsec.agent.node.credentials import EnrollmentError

    configure_logging(args.log_level, log_format=args.log_format)
    config = NodeAgentConfig(
        controller=args.controller,
        node=args.node,
        state_dir=args.state_dir,
        bootstrap=args.bootstrap,
        token_file=args.token_file,
        ca_file=args.ca_file,
        ca_sha256=args.ca_sha256,
        server_name=args.server_name,
        dataplane=args.dataplane,
        tun_name=args.tun_name,
        userspace_daemon=args.userspace_daemon,
        dataplane_socket=args.dataplane_socket,
        ike_port=args.ike_port,
        status_socket=args.status_socket,
        metrics=args.metrics,
        addresses=tuple(args.address),
        responder_grace=args.responder_grace,
        leave_on_stop=args.leave_on_stop,
        responder=ResponderSettings(
            cookie_threshold=args.cookie_threshold,
            block_threshold=args.block_threshold,
            cookie_threshold_per_address=args.cookie_threshold_per_address,
            block_threshold_per_address=args.block_threshold_per_address,
        ),
    )
    return run_until_stopped(run(config), config_errors=(EnrollmentError,))


def run_standalone(args: argparse.Namespace) -> int:
    from meshsec.agent.standalone.runner import run

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"meshsec-agent: invalid configuration {args.config}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.check:
        print(f"{args.config}: OK ({len(config.connections) + len(config.remote_access)} connection(s))")
        return 0
    configure_logging(args.log_level or config.agent.log_level, log_format=args.log_format)
    if world_readable(args.config):
        log.warning("%s is readable by every user and may hold pre-shared keys", args.config)
    return run_until_stopped(run(config))


def _sockets(args: argparse.Namespace) -> list[Path]:
    if args.socket is not None:
        return [args.socket]
    if args.state_dir is not None:
        return [args.state_dir / STATUS_SOCKET]
    # standalone's socket, then a `run` agent's in the default state dir
    return [Path(DEFAULT_STATUS_SOCKET), DEFAULT_STATE_DIR / STATUS_SOCKET]


def check_health(args: argparse.Namespace) -> int:
    """One line on stdout, exit 0 or 1: what an exec probe needs (hostNetwork pods: no port)."""
    from meshsec.agent.standalone.status import query_status

    tried = []
    for path in _sockets(args):
        try:
            answer = query_status(path, timeout=args.timeout, command="health")
        except (OSError, ValueError) as exc:
            tried.append(f"{path}: {exc}")
            continue
        if not answer.get("ok"):
            print(f"unhealthy: {path} answered {answer.get('error') or 'not ok'}")
            return 1
        if not args.ready:
            print(f"live: the agent answers on {path}")
            return 0
        ready = answer.get("ready") is True
        print(f"{'ready' if ready else 'not ready'}: {answer.get('reason') or '-'}")
        return 0 if ready else 1
    print("not live: no agent answering; tried " + "; ".join(tried))
    return 1


def drain_agent(args: argparse.Namespace) -> int:
    """Asks the agent to leave; returns once it accepted (it then deletes its SAs and exits)."""
    from meshsec.agent.standalone.status import query_status

    path = args.socket if args.socket is not None else (args.state_dir or DEFAULT_STATE_DIR) / STATUS_SOCKET
    try:
        answer = query_status(path, timeout=args.timeout, command="drain")
    except (OSError, ValueError) as exc:
        print(f"meshsec-agent drain: no agent answering on {path}: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    if not answer.get("draining"):
        print(f"meshsec-agent drain: {path} refused: {answer.get('error') or answer}", file=sys.stderr)
        return 1
    print(f"draining: the agent on {path} is leaving the mesh")
    return 0


def show_status(args: argparse.Namespace) -> int:
    from meshsec.agent.standalone.status import format_status, query_status

    candidates = _sockets(args)
    tried = []
    for path in candidates:
        try:
            status = query_status(path)
        except (OSError, ValueError) as exc:
            tried.append(f"{path}: {exc}")
            continue
        print(json.dumps(status, indent=2) if args.json else format_status(status))
        return 0
    print("meshsec-agent status: no agent answering; tried " + "; ".join(tried)
          + " (give --socket PATH or --state-dir DIR)", file=sys.stderr)
    return EXIT_UNAVAILABLE


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "status": show_status,
    "health": check_health,
    "run": run_connected,
    "drain": drain_agent,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is not None:
        if args.command == "run":
            require_extra("agent", "meshsec-agent run")
        return COMMANDS[args.command](args)
    if args.config is not None:
        require_extra("agent", "meshsec-agent --config")
        return run_standalone(args)
    parser.error("give --config FILE (standalone mode) or a command such as 'status'")
    return EXIT_CONFIG  # not reached: parser.error exits


if __name__ == "__main__":
    sys.exit(main())
