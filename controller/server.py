"""One controller replica: store, CA, mesh state, the three listeners, metrics and leader work.

Listeners (docs/controller.md):
- mTLS (``--listen``): AgentService and AdminService; a client certificate from the controller CA
  is required in the handshake.
- bootstrap (``--bootstrap-listen``): server-authenticated TLS, AgentService.Enroll only.
- admin socket (``--admin-socket``): AdminService on a Unix socket, mode 0600.

Leader-only work (through the store's `LeaderElection`): bootstrap token and expired admin
certificate garbage collection,
NodeLost detection and event retention. Everything else runs on every replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from wsgiref.simple_server import WSGIServer

import grpc

from meshsec.common.api import MAX_MESSAGE_BYTES
from meshsec.common.deadline import within
from meshsec.common.secrets import Secret
from meshsec.controller.api.admin import AdminApi
from meshsec.controller.api.agent import AgentApi
from meshsec.controller.api.decoding import add_servicer
from meshsec.controller.ca import AdminCertificates, BootstrapTokens, CertificateAuthority
from meshsec.controller.metrics import ControllerMetrics, TimedStore
from meshsec.controller.remoteaccess.credentials import RemoteAccessCredentials
from meshsec.controller.remoteaccess.leases import LeaseAllocator
from meshsec.controller.service.claims import MeshClaims
from meshsec.controller.service.core import Core, Settings
from meshsec.controller.service.events import EventLog
from meshsec.controller.service.keys import Keys
from meshsec.controller.service.secrets import TunnelSecrets
from meshsec.controller.service.state import MeshState
from meshsec.controller.service.status import StatusBook
from meshsec.controller.store import EmbeddedStore, LeaderElection, Store, StoreError
from meshsec.v1 import admin_pb2_grpc, agent_pb2_grpc

log = logging.getLogger(__name__)

# The request size every listener accepts: gRPC's default, stated so that it stays the one meshctl
# sends and receives (MAX_MESSAGE_BYTES); responses are kept under it (Settings.max_message_bytes).
SERVER_OPTIONS = (("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),)


@dataclass(frozen=True)
class EtcdTlsFiles:
    """TLS to etcd: `ca` verifies etcd's serving certificate; `cert` and `key` (together) are the
    client certificate etcd's ``--client-cert-auth`` asks for."""

    ca: Path
    cert: Path | None = None
    key: Path | None = None

    def read(self) -> tuple[bytes, bytes | None, Secret | None]:
        if (self.cert is None) != (self.key is None):
            raise ValueError("--etcd-cert and --etcd-key go together")

        def read(path: Path, what: str) -> bytes:
            try:
                return path.read_bytes()
            except OSError as exc:
                raise ValueError(f"cannot read the etcd {what} {path}: {exc.strerror or exc}") from None

        cert = read(self.cert, "client certificate") if self.cert is not None else None
        key = Secret(read(self.key, "client key")) if self.key is not None else None
        return read(self.ca, "CA bundle"), cert, key


async def open_store(spec: str, etcd_tls: EtcdTlsFiles | None = None, *, repair: bool = False) -> Store:
    """``embedded:/path/store.log`` or ``etcd://host:port[,host:port...]`` (TLS with `etcd_tls`);
    `repair` lets an embedded log that lost acknowledged records start from what verifies
    (docs/stores.md)."""
    if etcd_tls is not None and not spec.startswith("etcd://"):
        raise ValueError("--etcd-ca/--etcd-cert/--etcd-key need --store etcd://...")
    if spec.startswith("embedded:"):
        path = Path(spec.removeprefix("embedded:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return await EmbeddedStore.open(path, repair=repair)
    if repair:
        raise ValueError("--repair-store applies to the embedded store only")
    if spec.startswith("etcd://"):
        from meshsec.controller.store.etcd import EtcdStore

        endpoints = [e for e in spec.removeprefix("etcd://").rstrip("/").split(",") if e]
        if etcd_tls is None:
            return await EtcdStore.connect(endpoints)
        ca, cert, key = etcd_tls.read()
        return await EtcdStore.connect(
            endpoints, ca_cert=ca, cert_chain=cert, cert_key=key.reveal() if key is not None else None
        )
    raise ValueError(f"--store must be embedded:/path or etcd://host:port, got {spec!r}")


def split_host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"expected host:port, got {address!r}")
    return host.strip("[]"), int(port)


@dataclass
class ControllerConfig:
    listen: str = "127.0.0.1:7443"
    bootstrap_listen: str = "127.0.0.1:7444"
    admin_socket: str | None = None
    metrics: str | None = None
    data_dir: Path | None = None
    server_names: list[str] = field(default_factory=list)
    settings: Settings = field(default_factory=Settings)
    ca_passphrase: Secret | None = None
    keys: Keys = field(default_factory=Keys)
    election_ttl_s: int = 10
    leader_period_s: float = 10.0


class Controller:
    def __init__(self, store: Store, config: ControllerConfig) -> None:
        self.config = config
        self.metrics = ControllerMetrics()
        self.store = TimedStore(store, self.metrics)
        self.election = LeaderElection(
            self.store,
            "controller",
            config.settings.replica,
            ttl=config.election_ttl_s,
            prefix=config.keys.election,
        )
        self.core: Core | None = None
        self.mtls_port = 0
        self.bootstrap_port = 0
        self.metrics_port = 0
        self._servers: list[grpc.aio.Server] = []
        self._metrics_server: WSGIServer | None = None
        self._leader_task: asyncio.Task[None] | None = None
        self._parts: list[MeshState | StatusBook | TunnelSecrets] = []

    @property
    def is_leader(self) -> bool:
        return self.election.is_leader

    async def start(self) -> None:
        config, keys, settings = self.config, self.config.keys, self.config.settings
        ca = await CertificateAuthority.load_or_create(self.store, keys.prefix, config.ca_passphrase)
        events = EventLog(self.store, keys.events, f"controller/{settings.replica}")
        secrets = TunnelSecrets(self.store, keys)
        credentials = RemoteAccessCredentials(self.store, keys, ca)
        state = MeshState(
            self.store,
            keys,
            history=settings.history,
            status_interval_s=settings.status_interval_s,
            on_updates=self.metrics.recomputed,
            rebase_changes=settings.rebase_changes,
            rebase_tunnels=settings.rebase_tunnels,
            reload_secrets=secrets.reload,
            certificates=credentials.certificates,
        )
        status = StatusBook(
            self.store,
            keys.status,
            events,
            settings.status_interval_s,
            MeshClaims(state),
            self.metrics.acknowledged,
        )
        for part in (secrets, state, status):
            await part.start()
            self._parts.append(part)
        core = Core(
            settings,
            state,
            ca,
            BootstrapTokens(self.store, keys.prefix),
            status,
            events,
            secrets,
            self.metrics,
            AdminCertificates(self.store, keys.prefix, ca),
            LeaseAllocator(self.store, keys),
            credentials,
        )
        self.core = core
        self.metrics.ca_expiry.set(ca.certificate.not_valid_after_utc.timestamp())
        self.metrics.bind(
            lambda: len(state.index.nodes()),
            lambda: status.online_count(state.index.nodes(), time.time()),
            state.index.tunnel_count,
            status.established_tunnels,
            state.subscriber_count,
            lambda: status.unknown_tunnels,
        )
        await self._serve(core)
        if config.metrics:
            host, port = split_host_port(config.metrics)
            self._metrics_server, self.metrics_port = self.metrics.serve(host, port)
        self._leader_task = asyncio.create_task(self._lead(core), name="controller-leader")
        log.info(
            "controller %s serving mTLS on %s, bootstrap on %s%s",
            settings.replica,
            config.listen,
            config.bootstrap_listen,
            f", admin socket {config.admin_socket}" if config.admin_socket else "",
        )

    async def _serve(self, core: Core) -> None:
        config = self.config
        host, _ = split_host_port(config.listen)
        names = [*(config.server_names or []), host, "localhost", socket.gethostname()]
        creds = core.ca.server_credentials([n for n in names if n and n not in ("0.0.0.0", "::")])
        key_and_chain = [(creds.key_pem.reveal(), creds.certificate_pem)]
        root = core.ca.certificate_pem.encode()
        mtls = grpc.aio.server(options=SERVER_OPTIONS)
        add_servicer(agent_pb2_grpc.add_AgentServiceServicer_to_server, AgentApi(core, bootstrap=False), mtls)
        add_servicer(admin_pb2_grpc.add_AdminServiceServicer_to_server, AdminApi(core, local=False), mtls)
        self.mtls_port = mtls.add_secure_port(
            config.listen,
            grpc.ssl_server_credentials(key_and_chain, root_certificates=root, require_client_auth=True),
        )
        bootstrap = grpc.aio.server(options=SERVER_OPTIONS)
        add_servicer(
            agent_pb2_grpc.add_AgentServiceServicer_to_server, AgentApi(core, bootstrap=True), bootstrap
        )
        self.bootstrap_port = bootstrap.add_secure_port(
            config.bootstrap_listen, grpc.ssl_server_credentials(key_and_chain)
        )
        self._servers = [mtls, bootstrap]
        if config.admin_socket:
            path = Path(config.admin_socket)
            path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            local = grpc.aio.server(options=SERVER_OPTIONS)
            add_servicer(admin_pb2_grpc.add_AdminServiceServicer_to_server, AdminApi(core, local=True), local)
            # Created under a 0077 umask so there is no moment in which others could connect.
            old_umask = os.umask(0o077)
            try:
                local.add_insecure_port(f"unix:{path}")
                await local.start()
            finally:
                os.umask(old_umask)
            os.chmod(path, 0o600)
            self._servers.append(local)
        await mtls.start()
        await bootstrap.start()
        if config.data_dir is not None:
            config.data_dir.mkdir(parents=True, exist_ok=True)
            (config.data_dir / "ca.pem").write_text(core.ca.certificate_pem)

    async def _lead(self, core: Core) -> None:
        while True:
            try:
                await self.election.campaign()
                self.metrics.is_leader.set(1)
                while self.election.is_leader:
                    await self._leader_round(core)
                    with contextlib.suppress(TimeoutError):
                        await within(self.config.leader_period_s, self.election.wait_lost())
            except StoreError as exc:
                log.warning("leader election: %s; retrying", exc)
                await asyncio.sleep(1.0)
            finally:
                self.metrics.is_leader.set(0)

    async def _leader_round(self, core: Core) -> None:
        now = datetime.datetime.now(datetime.UTC).timestamp()
        try:
            await core.tokens.collect_garbage(now)
            await core.admins.collect_garbage(now)
            await core.status.find_lost(now)
            await core.events.prune()
            await core.state.announce_if_due()
        except StoreError as exc:
            log.warning("leader housekeeping failed: %s", exc)

    async def stop(self, *, resign: bool = True) -> None:
        """Stop serving. `resign=False` behaves like a crash towards the election: the lease is
        left to expire, so the others take over only after its TTL."""
        if self._leader_task is not None:
            self._leader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._leader_task
        with contextlib.suppress(StoreError):
            await (self.election.resign() if resign else self.election.abandon())
        for server in self._servers:
            await server.stop(grace=0.5)
        self._servers = []
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
        for part in reversed(self._parts):
            await part.stop()
        self._parts = []
