"""The node agent as a remote-access gateway (docs/remote-access.md): for every pool its
NodeConfig lists (NodeConfig.remote_access), a `%any` IKE responder config that authenticates
with the node certificate, takes certificate clients of the controller CA, leases their addresses
with AllocateLease (agent/gateway/controller_leases.py) and refuses revoked certificates
(agent/gateway/revocation.py: the list comes with the NodeConfig, NodeConfig.revocation, or is
polled from a controller that does not push it; their live IKE SAs are deleted).

Road-warrior SAs are not tunnels: the reconciler never sees them (runtime.py filters them), this
module gets their events instead and turns them into lease releases and log lines; the controller
emits the RemoteAccessConnected / Disconnected / Refused events `meshctl get events` shows."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace

import grpc

from meshsec.agent.adapters.ike import IkeAdapter, SaRecord
from meshsec.agent.adapters.traffic import Traffic, TrafficOwner
from meshsec.agent.gateway.clients import ClientConnected, ClientDisconnected, ClientEvent, ConnectedClients
from meshsec.agent.gateway.controller_eap import ControllerEapUsers
from meshsec.agent.gateway.controller_leases import ControllerLeases, device_of
from meshsec.agent.gateway.revocation import RevocationFollower
from meshsec.agent.ike.certs import Credentials
from meshsec.agent.ike.config import ChildConfig, ConfigError, IkeConfig
from meshsec.agent.ike.eap.users import EapServerConfig
from meshsec.agent.ike.events import Event, IkeSaFailed
from meshsec.agent.ike.failures import FailureReason
from meshsec.agent.ike.revocation import RevocationList
from meshsec.agent.ike.ts import Ts
from meshsec.agent.ike.virtual_ip import Client
from meshsec.common.once_per import OncePer
from meshsec.v1 import agent_pb2, agent_pb2_grpc

log = logging.getLogger(__name__)
SERVED_METHODS = ("certificate", "eap-mschapv2", "eap-tls")
EAP_METHODS = {"eap-mschapv2": "mschapv2", "eap-tls": "tls"}  # RemoteAuthMethod -> engine method
DYNAMIC = (Ts.from_cidr("0.0.0.0/0"), Ts.from_cidr("::/0"))  # narrowed to each client's addresses
PREFIX = "ra-"
REPORT_EVERY_S = 60.0  # at most one refusal report per serial / identity this often (a client retrying)


def is_road_warrior(record: SaRecord) -> bool:
    return record.sa.config.address_pool is not None


def service_configs(
    service: agent_pb2.RemoteAccessService, local_id: str, creds: Credentials, pool: ControllerLeases,
    revocations: RevocationList, eap_users: ControllerEapUsers | None,
) -> list[IkeConfig]:  # fmt: skip
    """One responder config for the pool's certificate clients, one for its EAP clients (a client
    that leaves AUTH out of IKE_AUTH only ever matches a config with EAP)."""
    out = []
    if "certificate" in service.auth_methods:
        out.append(service_config(service, local_id, creds, pool, revocations))
    methods = tuple(EAP_METHODS[m] for m in EAP_METHODS if m in service.auth_methods)
    if methods and eap_users is not None:
        eap = EapServerConfig(users=eap_users.lookup, methods=methods)
        base = service_config(service, local_id, creds, pool, revocations)
        out.append(replace(base, name=f"{base.name}-eap", eap=eap))
    return out


def service_config(
    service: agent_pb2.RemoteAccessService, local_id: str, creds: Credentials, pool: ControllerLeases,
    revocations: RevocationList,
) -> IkeConfig:  # fmt: skip
    esp = ",".join(service.esp_proposals) or "aes256gcm16-ecp384"
    child = ChildConfig(
        "ra", tuple(Ts.from_cidr(t) for t in service.local_ts), DYNAMIC, esp,
        rekey_time=_rekey(service.child_lifetime_seconds, 3600),
        life_time=service.child_lifetime_seconds or 3600,
    )  # fmt: skip
    return IkeConfig(
        f"{PREFIX}{service.pool}", local_id, "%any", None, ",".join(service.ike_proposals),
        (child,), credentials=creds, address_pool=pool, revocations=revocations,
        rekey_time=_rekey(service.ike_lifetime_seconds, 14400),
        dpd_delay=30.0, send_initial_contact=False,
    )  # fmt: skip


def _rekey(lifetime_s: int, default: int) -> int:
    """Rekey at 90 % of the pool's lifetime, as the controller's tunnels do."""
    return (lifetime_s or default) * 9 // 10


class RoadWarriorGateway:
    def __init__(self, adapter: IkeAdapter) -> None:
        self.adapter = adapter
        self.revocations = RevocationList()
        self.configs: list[IkeConfig] = []
        self.leases: ControllerLeases | None = None
        self.eap_users: ControllerEapUsers | None = None
        self.clients = ConnectedClients(self._release)
        self.follower = RevocationFollower(self._fetch_revoked, self.revocations, self._drop_revoked)
        self._stub: agent_pb2_grpc.AgentServiceAsyncStub | None = None
        self._follower: asyncio.Task[None] | None = None
        self._channel: grpc.aio.Channel | None = None
        self._services: tuple[bytes, ...] = ()
        self._reported = OncePer(REPORT_EVERY_S)  # per revoked serial / EAP identity
        self._reports: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ configuration

    def configure(self, services: Sequence[agent_pb2.RemoteAccessService], local_id: str,
                  creds: Credentials | None) -> None:  # fmt: skip
        """A new NodeConfig (or node certificate): the responder configs for its pools."""
        if self.leases is None:
            self.configs = []
            return
        served = [s for s in services if set(s.auth_methods) & set(SERVED_METHODS)]
        if creds is None and served:
            log.warning("remote access: no node certificate yet; not serving pools %s",
                        ", ".join(s.pool for s in served))  # fmt: skip
            served = []
        configs = []
        for service in served:
            assert creds is not None
            try:
                configs += service_configs(service, local_id, creds, self.leases, self.revocations,
                                           self.eap_users)  # fmt: skip
            except ConfigError as exc:
                log.error("remote access: pool %s not served: %s", service.pool, exc)
        names = tuple(c.name for c in configs)
        if names != tuple(c.name for c in self.configs):
            log.info("remote access: serving %s", ", ".join(names) or "no pool")
        self.configs = configs

    def follow_revocation(self, services: Sequence[agent_pb2.RemoteAccessService],
                          pushed: agent_pb2.RemoteAccessRevocation | None) -> None:  # fmt: skip
        """A new NodeConfig's revocation list (None: this controller does not push one, so poll).
        Applied before anything else of the config, and also while no pool can be served yet."""
        self.follower.serving = bool(services)
        if pushed is None:
            self.follower.pushed = False
        else:
            self.follower.replace(pushed.serials)

    def lookup(self) -> list[IkeConfig]:
        return list(self.configs)

    def client_traffic(
        self, totals: Mapping[TrafficOwner, Traffic]
    ) -> list[agent_pb2.RemoteAccessClientTraffic]:
        """Each connected client's traffic for the status report (the controller shows it on
        the lease): `totals` are the installer's per (SA, CHILD_SA name), rekeys included."""
        per_sa: dict[str, Traffic] = {}
        for (owner, _child), traffic in totals.items():
            per_sa.setdefault(owner, Traffic()).add(traffic)
        out = []
        for handle, held in self.clients.held.items():
            record = self.adapter.by_handle.get(handle)
            user = self.leases.user_of(held.client) if self.leases is not None else None
            if record is None or not user:  # none yet: a resumed lease not confirmed
                continue
            t = per_sa.get(record.traffic_name, Traffic())
            out.append(agent_pb2.RemoteAccessClientTraffic(
                user=user, device=device_of(held.client), bytes_in=t.bytes_in, bytes_out=t.bytes_out,
                packets_in=t.packets_in, packets_out=t.packets_out,
            ))  # fmt: skip
        return out

    # ------------------------------------------------------------------ controller side

    def attach(self, channel_factory: Callable[[], grpc.aio.Channel]) -> None:
        """Once the agent has controller credentials: leases and the revocation list over a
        channel of its own (gRPC reconnects it)."""
        if self._channel is not None:
            return
        self._channel = channel_factory()
        stub = self._stub = agent_pb2_grpc.AgentServiceStub(self._channel)
        self.leases = ControllerLeases(stub, self._lease_ready)
        self.eap_users = ControllerEapUsers(stub, self._eap_user_ready)
        self._follower = asyncio.get_running_loop().create_task(self.follower.run(), name="revocations")

    async def _fetch_revoked(self) -> list[str]:
        assert self._stub is not None  # the follower runs only once attached
        request = agent_pb2.ListRevokedCertificatesRequest()
        listed = await self._stub.ListRevokedCertificates(request, timeout=5.0)
        return list(listed.serials)

    async def close(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower
        await asyncio.gather(*self._reports, return_exceptions=True)
        if self.leases is not None:
            await self.leases.settle()
        if self.eap_users is not None:
            await self.eap_users.close()
        if self._channel is not None:
            await self._channel.close(None)

    # ------------------------------------------------------------------ engine events

    def on_event(self, record: SaRecord, ev: Event) -> None:
        sa = record.sa
        peer = str(sa.remote_identity) if sa.remote_identity else sa.remote.host
        seen = self.clients.observe(record.handle, record.name, peer, ev)
        if seen is not None:
            _log(seen, sa.remote.host)
        if not isinstance(ev, IkeSaFailed) or self._stub is None:
            return
        stub, serial, outer = self._stub, sa.revoked_serial, sa.remote.host
        if serial is not None:
            # A revoked device came back: the controller records whose (a RemoteAccessRefused event).
            revoked = agent_pb2.ReportRevokedClientRequest(serial=serial, peer_address=outer)
            self._report(("serial", serial), lambda: stub.ReportRevokedClient(revoked, timeout=5.0))
            return
        claimed = sa.eap_identity or (sa.eap.claimed_identity if sa.eap is not None else None)
        if claimed and ev.code is FailureReason.AUTHENTICATION_FAILED:
            # A wrong password (or a failed EAP-TLS): an event of the user the identity names, so
            # that an admin sees why alice cannot connect (the controller ignores unknown names).
            refused = agent_pb2.ReportRefusedClientRequest(identity=claimed, reason=ev.reason[:200],
                                                           peer_address=outer)  # fmt: skip
            self._report(("eap", claimed), lambda: stub.ReportRefusedClient(refused, timeout=5.0))

    def _report(self, key: tuple[str, str], call: Callable[[], Awaitable[object]]) -> None:
        if not self._reported.allow(key, time.monotonic()):
            return

        async def report() -> None:
            try:
                await call()
            except grpc.aio.AioRpcError as exc:  # best effort: the gateway logged the refusal
                quiet = exc.code() == grpc.StatusCode.NOT_FOUND  # a name of no user: nothing to record
                level = logging.DEBUG if quiet else logging.WARNING
                log.log(level, "reporting the refusal of %s %s failed: %s", *key, exc.details())
            except OSError as exc:
                log.warning("reporting the refusal of %s %s to the controller failed: %s", *key, exc)

        task = asyncio.get_running_loop().create_task(report())
        self._reports.add(task)
        task.add_done_callback(self._reports.discard)

    # ------------------------------------------------------------------ restart

    def config_named(self, name: str) -> IkeConfig | None:
        return next((c for c in self.configs if c.name == name), None)

    def resumed(self, record: SaRecord) -> None:
        """A road warrior's IKE SA taken up after a restart (the adapter tracks it, its CHILD_SAs
        bound to the data plane's): its lease held again and the client registered, so that its
        disconnect releases the lease as if this process had connected it (`refusal` said yes)."""
        sa = record.sa
        assert self.leases is not None and sa.cfg_reply is not None  # checked by refusal()
        client = Client(sa.eap_identity or str(sa.remote_identity), sa.peer_common_name or "")
        addresses = tuple(str(a) for a in sa.virtual_addresses)
        self.leases.retake(client, sa.cfg_reply, self._lease_lost)
        seen = self.clients.hold(record.handle, record.name, client, addresses)
        log.info("%s: road warrior %s resumed from %s, virtual address %s", seen.connection, seen.client,
                 sa.remote.host, ", ".join(seen.addresses))  # fmt: skip

    def refusal(self, sa_name: str, peer_serial: str | None, has_addresses: bool) -> str | None:
        """Why a persisted road-warrior SA cannot be resumed (None: it can)."""
        if self.leases is None:
            return "no controller connection to hold its lease with"
        if self.config_named(sa_name) is None:
            return f"this gateway no longer serves {sa_name}"
        if not has_addresses:
            return "it holds no virtual address"
        if peer_serial is not None and peer_serial in self.revocations:
            return f"its certificate {peer_serial} is revoked"
        return None

    def _lease_lost(self, client: Client, why: str) -> None:
        for record in self.adapter.active():
            sa = record.sa
            if is_road_warrior(record) and Client(sa.eap_identity or str(sa.remote_identity),
                                                  sa.peer_common_name or "") == client:  # fmt: skip
                log.warning("%s: resumed road warrior %s loses its lease (%s): deleting IKE SA %s; it "
                            "reconnects", record.name, client.identity, why, sa.local_spi.hex())  # fmt: skip
                self.clients.held.pop(record.handle, None)  # nothing to release: the lease is not ours
                self.adapter.delete(record)

    def _release(self, _connection: str, client: Client) -> None:
        if self.leases is not None:
            self.leases.release(client)

    def _lease_ready(self, client: Client) -> None:
        for record in self.adapter.active():
            sa = record.sa
            who = sa.eap_identity or str(sa.remote_identity)
            if is_road_warrior(record) and sa.tasks.deferred and who == client.identity:
                self.adapter.answer_deferred(record)

    def _eap_user_ready(self, _identity: bytes) -> None:
        # The waiting SA has not proved an identity yet: resume every waiting EAP client; one
        # whose own answer is still on its way just waits again.
        for record in self.adapter.active():
            if is_road_warrior(record) and record.sa.config.eap is not None and record.sa.tasks.deferred:
                self.adapter.answer_deferred(record)

    def _drop_revoked(self, serials: frozenset[str]) -> None:
        for record in self.adapter.active():
            if is_road_warrior(record) and record.sa.peer_serial in serials:
                sa = record.sa
                log.info("%s: %s's certificate %s is revoked: deleting IKE SA %s", record.name,
                         sa.remote_identity, sa.peer_serial, sa.local_spi.hex())  # fmt: skip
                self.adapter.delete(record)


def _log(seen: ClientEvent, outer: str) -> None:
    if isinstance(seen, ClientConnected):
        log.info("%s: road warrior %s connected from %s, virtual address %s", seen.connection, seen.client,
                 outer, ", ".join(seen.addresses))  # fmt: skip
    elif isinstance(seen, ClientDisconnected):
        log.info("%s: road warrior %s disconnected (%s), released %s", seen.connection, seen.client, seen.why,
                 ", ".join(seen.addresses))  # fmt: skip
    else:
        log.warning("%s: road warrior %s from %s refused: %s (%s)", seen.connection, seen.peer, outer,
                    seen.reason, seen.code)  # fmt: skip
