"""``python -m meshsec.controller.operator``: the CRD front end, run beside a controller replica.

It watches Sites, Nodes, MeshPolicies and ExternalGateways (meshsec.io/v1alpha1, cluster-scoped)
and keeps them applied through the replica's admin socket (docs/kubernetes.md). With
``--cluster-site`` it also keeps the cluster itself as a Site, one meshsec Node per core Node.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import secrets
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from meshsec.common.extras import require

# Run as a program: without the operator extra, say which one is missing (exit 2), not ImportError.
require("operator", "python -m meshsec.controller.operator")

import kopf  # noqa: E402

from meshsec.controller.operator.bootstrap import (  # noqa: E402
    BootstrapConfig,
    BootstrapKeeper,
    KubernetesSecrets,
)
from meshsec.controller.operator.cluster import (  # noqa: E402
    DEFAULT_GATEWAY_LABEL,
    ClusterConfig,
    parse_cidrs,
    parse_gateway_label,
)
from meshsec.controller.operator.handlers import (  # noqa: E402
    OperatorConfig,
    configure,
    register,
    register_nodes,
)
from meshsec.controller.operator.nodes import KubernetesNodes, NodeSweeper  # noqa: E402
from meshsec.controller.operator.psk import PskSync  # noqa: E402
from meshsec.controller.operator.secret_watch import KubernetesSecretWatch, SecretWatcher  # noqa: E402
from meshsec.controller.operator.sync import ControllerSync  # noqa: E402

DEFAULT_ADMIN_SOCKET = "/run/meshsec/admin.sock"
DEFAULT_CA_FILE = Path("/var/lib/meshsec/controller/ca.pem")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m meshsec.controller.operator", description=__doc__)
    p.add_argument(
        "--admin-socket", default=DEFAULT_ADMIN_SOCKET, help="controller admin socket (%(default)s)"
    )
    p.add_argument("--resync", type=float, default=30.0, help="re-apply and refresh status every S seconds")
    p.add_argument("--retry", type=float, default=10.0, help="retry delay while the controller is away")
    p.add_argument(
        "--peering",
        metavar="NAME",
        help="ClusterKopfPeering name: with several replicas only the one with the highest (random) "
        "priority acts; without it the operator runs standalone",
    )
    p.add_argument(
        "--liveness", metavar="URL", help="serve kopf's liveness probe, e.g. http://0.0.0.0:8080/healthz"
    )
    b = p.add_argument_group("agent bootstrap Secret (off unless --bootstrap-site is given)")
    b.add_argument("--bootstrap-site", help="keep a multi-use bootstrap token for this Site in a Secret")
    b.add_argument("--bootstrap-secret", default="meshsec-agent-bootstrap", help="Secret name (%(default)s)")
    b.add_argument(
        "--bootstrap-namespace",
        default=os.environ.get("POD_NAMESPACE", ""),
        help="Secret namespace (default $POD_NAMESPACE)",
    )
    b.add_argument("--bootstrap-uses", type=int, default=1000, help="enrollments per token (%(default)s)")
    b.add_argument("--bootstrap-ttl", type=int, default=86400, help="token lifetime, s (%(default)s)")
    b.add_argument(
        "--ca-file", type=Path, default=DEFAULT_CA_FILE, help="the controller's ca.pem (%(default)s)"
    )
    p.add_argument(
        "--secret-namespace",
        default=os.environ.get("POD_NAMESPACE", ""),
        help="namespace of the Secrets ExternalGateway spec.auth.secretKeyRef may name (default "
        "$POD_NAMESPACE; empty: secretKeyRef is refused)",
    )
    c = p.add_argument_group("the cluster as a Site (off unless --cluster-site is given)")
    c.add_argument("--cluster-site", help="Site name of this cluster: one meshsec Node per core Node")
    c.add_argument(
        "--service-cidr",
        action="append",
        default=[],
        metavar="CIDR",
        help="the cluster's service CIDR(s), added to the Site's prefixes (repeatable, or comma-separated)",
    )
    c.add_argument(
        "--gateway-label",
        default=DEFAULT_GATEWAY_LABEL,
        metavar="KEY[=VALUE]",
        help="core Nodes with this label are the Site's gateways (%(default)s)",
    )
    c.add_argument(
        "--cluster-site-label",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a label of the cluster's Site, for site-scope policy members (repeatable)",
    )
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default INFO)")
    return p


def kube_api_client() -> Any:
    """In-cluster service account, else the kubeconfig."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    return client.ApiClient()


def cluster_config(args: argparse.Namespace) -> ClusterConfig | None:
    if not args.cluster_site:
        return None
    try:
        labels = dict(_pair(text) for text in args.cluster_site_label)
        return ClusterConfig(
            site=args.cluster_site,
            service_cidrs=parse_cidrs(args.service_cidr),
            gateway_label=parse_gateway_label(args.gateway_label),
            site_labels=labels,
        )
    except ValueError as exc:
        raise SystemExit(f"python -m meshsec.controller.operator: {exc}") from None


def _pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"--cluster-site-label {text!r}: give KEY=VALUE")
    return key, value


def bootstrap_keeper(args: argparse.Namespace, sync: ControllerSync) -> BootstrapKeeper | None:
    if not args.bootstrap_site:
        return None
    if not args.bootstrap_namespace:
        raise SystemExit("--bootstrap-site needs --bootstrap-namespace (or $POD_NAMESPACE)")
    settings = BootstrapConfig(
        namespace=args.bootstrap_namespace,
        secret_name=args.bootstrap_secret,
        site=args.bootstrap_site,
        ca_file=args.ca_file,
        uses=args.bootstrap_uses,
        ttl_seconds=args.bootstrap_ttl,
    )
    return BootstrapKeeper(sync, KubernetesSecrets(kube_api_client()), settings)


def watch_gateway_secrets(psk: PskSync, api_client: Any) -> SecretWatcher:
    """A watch on each Secret an ExternalGateway references (in `psk`'s namespace only): its
    change re-syncs those gateways' PSKs at once instead of on the next resync."""
    watcher = SecretWatcher(KubernetesSecretWatch(api_client), psk.namespace, psk.secret_changed)
    psk.on_references = watcher.watch
    return watcher


def build_registry(
    sync: ControllerSync,
    config: OperatorConfig,
    *,
    login: Any = None,
    sweeper: NodeSweeper | None = None,
    psk: PskSync | None = None,
) -> kopf.OperatorRegistry:
    """Handlers for every meshsec kind (and core Node events waking `sweeper`; ExternalGateway PSKs
    from Secrets through `psk`); `login` replaces the in-cluster/kubeconfig login (tests)."""
    registry = kopf.OperatorRegistry()
    kopf.on.login(registry=registry)(login or _login)
    kopf.on.startup(registry=registry)(_startup)
    register(registry, sync, config, psk)
    if sweeper is not None:
        register_nodes(registry, sweeper)
    return registry


def _login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


def _startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    configure(settings)


async def run(args: argparse.Namespace) -> None:
    sync = ControllerSync.unix(args.admin_socket)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    keeper = bootstrap_keeper(args, sync)
    cluster = cluster_config(args)
    sweeper = (
        NodeSweeper(sync, KubernetesNodes(kube_api_client()), cluster, args.resync)
        if cluster is not None
        else None
    )
    psk = (
        PskSync(sync, KubernetesSecrets(kube_api_client()), args.secret_namespace)
        if args.secret_namespace
        else None
    )
    watcher = watch_gateway_secrets(psk, kube_api_client()) if psk is not None else None
    # Started before kopf: kopf cancels the tasks created while it runs when it stops.
    keeping = asyncio.create_task(keeper.run(stop)) if keeper is not None else None
    sweeping = asyncio.create_task(sweeper.run(stop)) if sweeper is not None else None
    try:
        await kopf.operator(
            registry=build_registry(
                sync, OperatorConfig(args.resync, args.retry), sweeper=sweeper, psk=psk
            ),
            clusterwide=True,
            standalone=args.peering is None,
            peering_name=args.peering,
            priority=secrets.randbelow(2**31 - 1) + 1 if args.peering else None,
            liveness_endpoint=args.liveness,
            stop_flag=stop,
        )
    finally:
        stop.set()
        for task in (keeping, sweeping):
            if task is not None:
                await task
        if watcher is not None:
            await watcher.close()
        await sync.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
