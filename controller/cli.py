"""``meshsec-controller``: run a controller replica, or create a bootstrap token through one.

meshsec-controller                                   # embedded store, local listeners
meshsec-controller --store etcd://127.0.0.1:2379 --listen 0.0.0.0:7443 --replica ctl-a
meshsec-controller token create node-a --site dc1     # via the admin socket
meshsec-controller admin issue alice --out DIR [--set-context prod --server ctl:7443]
meshsec-controller admin list | admin revoke alice | admin revoke --serial SERIAL
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc

from meshsec.common.cli_args import uint32
from meshsec.common.extras import require as require_extra
from meshsec.common.logging import add_log_format_argument
from meshsec.common.logging import configure as configure_logging
from meshsec.common.secrets import Secret
from meshsec.common.version import describe as describe_version
from meshsec.controller.heap import HeapKeeper
from meshsec.controller.server import Controller, ControllerConfig, EtcdTlsFiles, open_store
from meshsec.controller.service.core import Settings
from meshsec.controller.store import StoreCorruptError
from meshsec.meshctl import admins
from meshsec.meshctl.client import AdminClient, Target
from meshsec.meshctl.config import MeshConfig
from meshsec.meshctl.errors import MeshctlError
from meshsec.v1 import admin_pb2, admin_pb2_grpc

DEFAULT_DATA_DIR = Path("/var/lib/meshsec/controller")
DEFAULT_ADMIN_SOCKET = "/run/meshsec/admin.sock"


def _serve_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="meshsec-controller",
        description="Run one meshsec controller replica. With no options it uses an embedded store in "
        "--data-dir and listens on loopback only. Subcommands: `token create NODE --site SITE`, "
        "`admin issue|list|revoke` (see `meshsec-controller admin --help`).",
    )
    p.add_argument("--version", action="version", version=describe_version("meshsec-controller"))
    p.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help=f"state directory: embedded store, ca.pem for agents (default {DEFAULT_DATA_DIR})",
    )
    p.add_argument(
        "--store",
        help="embedded:/path/store.log (default: <data-dir>/store.log) or "
        "etcd://host:port[,host:port] for several replicas",
    )
    p.add_argument(
        "--listen",
        default="127.0.0.1:7443",
        help="mTLS listener for agents and admins with certificates (default %(default)s)",
    )
    p.add_argument(
        "--bootstrap-listen",
        default="127.0.0.1:7444",
        help="server-TLS listener that only answers Enroll (default %(default)s)",
    )
    p.add_argument(
        "--admin-socket",
        default=DEFAULT_ADMIN_SOCKET,
        help="Unix socket for AdminService, mode 0600; '' disables (default %(default)s)",
    )
    p.add_argument(
        "--metrics",
        default="127.0.0.1:9443",
        help="Prometheus /metrics address; '' disables (default %(default)s)",
    )
    p.add_argument(
        "--server-name",
        action="append",
        default=[],
        help="extra DNS name or IP for the serving certificate (repeatable)",
    )
    p.add_argument(
        "--repair-store",
        action="store_true",
        help="start even though the embedded store lost acknowledged records: keep the records that "
        "verify, save the damaged file beside it (docs/stores.md); without it such a store refuses",
    )
    p.add_argument("--etcd-ca", type=Path, help="CA bundle for etcd's serving certificate (TLS to etcd)")
    p.add_argument("--etcd-cert", type=Path, help="client certificate for etcd --client-cert-auth")
    p.add_argument("--etcd-key", type=Path, help="client key for --etcd-cert")
    p.add_argument("--replica", default=os.uname().nodename, help="this replica's name (default: host name)")
    p.add_argument(
        "--node-cert-hours", type=float, default=24.0, help="node certificate lifetime (default 24)"
    )
    p.add_argument("--status-interval", type=int, default=30, help="agent heartbeat interval, s (default 30)")
    p.add_argument(
        "--ca-passphrase-file",
        type=Path,
        help="encrypt the CA key in the store with the passphrase in this file",
    )
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default INFO)")
    add_log_format_argument(p)
    return p


def _token_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="meshsec-controller token create",
        description="Create a bootstrap token through the local admin socket.",
    )
    p.add_argument("node", nargs="?", default="", help="bind the token to this node name (recommended)")
    p.add_argument("--site", required=True, help="site the node joins")
    p.add_argument("--uses", type=uint32, default=1, help="enrollments allowed (default 1)")
    p.add_argument("--ttl", type=uint32, default=3600, help="lifetime in seconds (default 3600)")
    p.add_argument("--label", action="append", default=[], help="node label key=value (repeatable)")
    p.add_argument("--allow-reenroll", action="store_true", help="may replace an existing node of that name")
    p.add_argument("--admin-socket", default=DEFAULT_ADMIN_SOCKET, help="default %(default)s")
    return p


def _admin_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="meshsec-controller admin",
        description="Issue, list and revoke admin certificates (for meshctl over mTLS) through the "
        "local admin socket. The key is made here; --out gets ca.pem, NAME.pem and NAME-key.pem (0600).",
    )
    p.add_argument("--admin-socket", default=DEFAULT_ADMIN_SOCKET, help="default %(default)s")
    admins.add_actions(
        p,
        argparse.ArgumentParser,
        context_help="also write DIR/config, a meshctl config with context CTX naming the files "
        "beside it (copy DIR and use MESHCONFIG=DIR/config or meshctl --config DIR/config)",
    )
    return p


def _admin(argv: list[str]) -> int:
    args = _admin_parser().parse_args(argv)
    config = MeshConfig.load(args.out / "config") if args.admin_command == "issue" else None
    try:
        with AdminClient(Target.parse(f"unix:{args.admin_socket}")) as client:
            return admins.admin(args, client, sys.stdout, config)
    except MeshctlError as error:
        print(f"error: {error.message}", file=sys.stderr)
        return error.exit_code


async def _serve(args: argparse.Namespace) -> int:
    passphrase = None
    if args.ca_passphrase_file is not None:
        passphrase = Secret(args.ca_passphrase_file.read_bytes().strip())
    etcd_tls = None
    if args.etcd_ca is not None:
        etcd_tls = EtcdTlsFiles(args.etcd_ca, args.etcd_cert, args.etcd_key)
    elif args.etcd_cert is not None or args.etcd_key is not None:
        print("error: --etcd-cert/--etcd-key need --etcd-ca", file=sys.stderr)
        return 2
    try:
        store = await open_store(
            args.store or f"embedded:{args.data_dir / 'store.log'}", etcd_tls, repair=args.repair_store
        )
    except StoreCorruptError as exc:
        print(f"meshsec-controller: store damaged: {exc}", file=sys.stderr)
        return 3
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    config = ControllerConfig(
        listen=args.listen,
        bootstrap_listen=args.bootstrap_listen,
        admin_socket=args.admin_socket or None,
        metrics=args.metrics or None,
        data_dir=args.data_dir,
        server_names=args.server_name,
        settings=Settings(
            replica=args.replica,
            node_cert_lifetime=datetime.timedelta(hours=args.node_cert_hours),
            status_interval_s=args.status_interval,
        ),
        ca_passphrase=passphrase,
    )
    controller = Controller(store, config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    heap: HeapKeeper | None = None
    heap_task: asyncio.Task[None] | None = None
    try:
        await controller.start()
        heap = HeapKeeper(_changing(controller))
        heap.start()
        heap_task = asyncio.create_task(heap.run(), name="heap-keeper")
        print(
            f"meshsec-controller {args.replica}: mTLS {args.listen} (port {controller.mtls_port}), "
            f"bootstrap {args.bootstrap_listen} (port {controller.bootstrap_port}), "
            f"admin socket {config.admin_socket}, metrics port {controller.metrics_port}",
            flush=True,
        )
        await stop.wait()
    finally:
        if heap_task is not None:
            heap_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heap_task
        if heap is not None:
            heap.stop()
        await controller.stop()
        await store.close()
    return 0


def _changing(controller: Controller) -> Callable[[], bool]:
    """Whether the mesh moved since the last call: a full collection waits for a quiet moment."""
    seen = -1

    def changed() -> bool:
        nonlocal seen
        revision = controller.core.state.revision if controller.core is not None else 0
        moved, seen = revision != seen, revision
        return moved

    return changed


async def _create_token(args: argparse.Namespace) -> int:
    labels = {}
    for item in args.label:
        key, eq, value = item.partition("=")
        if not eq:
            print(f"--label {item!r}: expected key=value", file=sys.stderr)
            return 2
        labels[key] = value
    async with grpc.aio.insecure_channel(f"unix:{args.admin_socket}") as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        try:
            response = await stub.CreateBootstrapToken(
                admin_pb2.CreateBootstrapTokenRequest(
                    node_name=args.node,
                    site=args.site,
                    ttl_seconds=args.ttl,
                    uses=args.uses,
                    node_labels=labels,
                    allow_reenroll=args.allow_reenroll,
                ),
                timeout=10,
            )
        except grpc.aio.AioRpcError as exc:
            print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    print(response.token)
    print(
        f"token id {response.token_id}, {response.uses} use(s), "
        f"expires {response.expires_at.ToJsonString()}, "
        f"CA sha256 {response.ca_cert_sha256}",
        file=sys.stderr,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["admin"]:
        return _admin(argv[1:])
    if argv[:2] == ["token", "create"]:
        return asyncio.run(_create_token(_token_parser().parse_args(argv[2:])))
    args = _serve_parser().parse_args(argv)
    if (args.store or "").startswith("etcd://"):
        require_extra("controller", "meshsec-controller --store etcd://")
    configure_logging(args.log_level, log_format=args.log_format)
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(_serve(args))
    return 130


if __name__ == "__main__":
    sys.exit(main())
