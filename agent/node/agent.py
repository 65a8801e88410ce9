"""The controller-connected agent process: state dir, data plane, IKE adapter, reconciler,
controller session, status socket and metrics, and their order at start and stop.

Two kinds of stop (docs/agent.md, "Restart and leave"):
- restart (the default for SIGTERM/SIGINT, and what a crash or kill -9 amounts to): the data
  plane is left as it is (the kernel's SAs, policies and routes keep forwarding while the agent
  is away), the state dir keeps everything the next start needs, and no DELETE is sent, except
  (SIGTERM only) for tunnels whose peer is the designated initiator: the next process may not
  reach it to replace the IKE SA;
- leave (`meshsec-agent drain`, or SIGTERM with --leave-on-stop): INFORMATIONAL DELETE for
  every IKE SA, the data-plane state removed, the IKE SA state file removed.

Start: load the persisted desired state (headless start works without the controller), start
the data plane and adopt what it still holds from an earlier run of this agent (owned state only)
when a persisted desired state says what it was for, else remove it as stale; start IKE,
reconcile, then connect to the controller (enrolling first if there are no credentials). The new
IKE SAs replace the adopted CHILD_SAs make-before-break: the adopted SAs forward until the new
ones are installed, and the sweeper removes them once no live CHILD_SA accounts for them."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshsec.agent.adapters.ike import AdapterSettings, IkeAdapter
from meshsec.agent.adapters.records import SaRecord
from meshsec.agent.adapters.resume import ROAD_WARRIOR, Journal, ResumeRefused, restore
from meshsec.agent.adapters.runtime import AdapterRuntime, view_of
from meshsec.agent.adapters.traffic import Traffic, TrafficOwner
from meshsec.agent.dataplane.api import DataPlane, DataPlaneError, OwnedState, SaExpired
from meshsec.agent.host_checks import IPNetwork, TunnelNeeds, warn_about_host
from meshsec.agent.ike.certs import CredentialError
from meshsec.agent.ike.certs import Credentials as EngineCredentials
from meshsec.agent.ike.events import Event
from meshsec.agent.ike.responder import ResponderSettings
from meshsec.agent.node import credentials
from meshsec.agent.node.credentials import Credentials, EnrollmentError
from meshsec.agent.node.desired import DesiredState, DesiredStore
from meshsec.agent.node.facts import local_addresses, node_facts
from meshsec.agent.node.ike_port import SaView
from meshsec.agent.node.metrics import AgentMetrics
from meshsec.agent.node.reconciler import Reconciler
from meshsec.agent.node.remote_access import RoadWarriorGateway, is_road_warrior
from meshsec.agent.node.report import ReportBuilder, timestamp
from meshsec.agent.node.routes import SiteRoutes, routes_of
from meshsec.agent.node.session import IdentityLost, Session
from meshsec.agent.node.statedir import DATAPLANE_SOCKET, IKE_STATE, STATUS_SOCKET, StateDir
from meshsec.agent.node.sweeper import Sweeper
from meshsec.agent.node.translate import TunnelError, identity_text, node_credentials
from meshsec.agent.standalone.config import AgentSettings
from meshsec.agent.standalone.runner import make_dataplane
from meshsec.agent.standalone.status import StatusServer
from meshsec.common.secrets import Secret
from meshsec.v1 import agent_pb2, common_pb2

log = logging.getLogger(__name__)
ENROLL_RETRY_MAX = 30.0
RESTART_QUIESCE = 2.0  # seconds a restart stop waits for exchanges in flight, so their SAs resume


@dataclass(frozen=True)
class NodeAgentConfig:
    controller: str
    node: str
    state_dir: Path
    bootstrap: str | None = None
    token_file: Path | None = None
    ca_file: Path | None = None
    ca_sha256: str | None = None
    server_name: str | None = None
    dataplane: str = "auto"
    tun_name: str = "meshsec0"
    # The userspace data plane runs as its own process so that it forwards on while this agent
    # restarts: "spawn" (start it where none answers), "connect" (systemd, Kubernetes: someone
    # else starts it) or "off" (in this process: dies with the agent; tests).
    userspace_daemon: str = "spawn"
    dataplane_socket: Path | None = None  # default: <state-dir>/dataplane.sock
    ike_port: int = 500
    bind: tuple[str, ...] = ("0.0.0.0",)
    status_socket: Path | None = None
    metrics: str | None = None
    addresses: tuple[str, ...] = ()  # reported endpoints; empty: the host's global addresses
    responder_grace: float = 10.0
    leave_on_stop: bool = False  # SIGTERM/SIGINT leaves the mesh instead of restarting
    responder: ResponderSettings = field(default_factory=ResponderSettings)  # COOKIE/block limits
    extra: dict[str, str] = field(default_factory=dict)


def read_token(path: Path) -> Secret:
    """The bootstrap token: the first line of `path` (a trailing newline or blank lines are fine)."""
    lines = path.read_bytes().strip().splitlines()
    if not lines:
        raise EnrollmentError(f"bootstrap token file {path} is empty")
    return Secret(lines[0].strip())


class NodeAgent:
    def __init__(self, config: NodeAgentConfig) -> None:
        self.config = config
        self.state = StateDir(config.state_dir)
        self.desired_store = DesiredStore(self.state)
        self.metrics = AgentMetrics()
        self.started_at = time.time()
        self.desired = DesiredState()
        self.dataplane: DataPlane | None = None
        self.adapter: IkeAdapter | None = None
        self.reconciler: Reconciler | None = None
        self.reports: ReportBuilder | None = None
        self.session: Session | None = None
        self.status_server: StatusServer | None = None
        self.gateway: RoadWarriorGateway | None = None
        self._traffic: dict[TrafficOwner, Traffic] = {}  # the last report's totals (road warriors)
        self.routes: SiteRoutes | None = None  # none with the `none` data plane (IKE-only tests)
        self.metrics_port: int | None = None
        self.recovered = 0  # owned data-plane objects removed at start
        self.adopted = 0  # owned data-plane objects adopted at start (left forwarding by a restart)
        self.drain_requested = asyncio.Event()  # `meshsec-agent drain`: leave the mesh and exit
        self.dataplane_lost = asyncio.Event()  # the data-plane daemon went away: restart to recover
        self._first_reqid = 1  # above every adopted reqid, so no new CHILD_SA shares an old one's
        self._owned: OwnedState | None = None  # what adopt() found (resumed IKE SAs bind to it)
        self.resume: dict[str, object] = {}  # how the start went on from the IKE state file (status)
        # Road warriors' entries of the IKE state file, waiting for their pool's config: it needs
        # the controller channel (leases), which the controller task opens just after start.
        self._pending_rw: list[dict[str, Any]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.controller_task: asyncio.Task[None] | None = None  # ends only on a fatal enrollment error
        self._renewal_asked_for: set[str] = set()  # local IDs an early renewal was asked for
        self._host_warnings: set[str] = set()  # sysctl problems already logged (agent/host_checks.py)
        self._engine_credentials: EngineCredentials | None = None  # the node certificate for IKE

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        config = self.config
        self.state.prepare()
        self.desired = self.desired_store.load()
        dataplane = await make_dataplane(AgentSettings(
            dataplane=config.dataplane, tun_name=config.tun_name, userspace_daemon=config.userspace_daemon,
            dataplane_socket=config.dataplane_socket or self.state.file(DATAPLANE_SOCKET)))
        self.dataplane = dataplane
        await dataplane.start()
        await self._adopt_or_remove(dataplane)
        if dataplane.capabilities.backend != "none":
            self.routes = SiteRoutes()
            await self.routes.flush()  # what an earlier run of this agent left
        def on_event(record: SaRecord, ev: Event) -> None:
            if is_road_warrior(record):
                gateway.on_event(record, ev)
            else:
                reconciler.on_event(view_of(record), ev)

        adapter = IkeAdapter(
            # Tunnels name their peers; road warriors (NodeConfig.remote_access) come from anywhere.
            lambda local, remote: [*reconciler.lookup(local, remote), *gateway.lookup()],
            dataplane=dataplane,
            settings=AdapterSettings(bind=config.bind, ike_port=config.ike_port,
                                     responder=config.responder, first_reqid=self._first_reqid),
            on_event=on_event,
        )
        if adapter.installer is not None and self._owned is not None:
            # A tunnel not resumed gets new CHILD_SAs on the adopted ones' reqids (install.py).
            adapter.installer.adopted_reqids = {(sel, d): r for sel, d, r in self._owned.policy_reqids}
        gateway = self.gateway = RoadWarriorGateway(adapter)
        reconciler = Reconciler(AdapterRuntime(adapter), responder_grace=config.responder_grace,
                                metrics=self.metrics)  # fmt: skip
        if self._resumable():  # else the CHILD_SAs end with this process: nothing to resume on
            adapter.journal = Journal(self.state.save_ike_state)
        self.adapter, self.reconciler = adapter, reconciler
        self.reports = ReportBuilder(reconciler)
        await adapter.start()
        adapter.watch_local_addresses()  # MOBIKE: our SAs follow this node's address changes
        socket_path = config.status_socket or self.state.file(STATUS_SOCKET)
        self.status_server = StatusServer(socket_path, self.status, self.health,
                                          drain=self.drain_requested.set)
        await self.status_server.start()
        self._use_credentials(credentials.load(self.state))
        if config.metrics:
            self.metrics_port = self.metrics.serve(config.metrics)
        if self.desired.version:
            log.info("resuming desired state version %d (%d tunnels) from %s",
                     self.desired.version, len(self.desired.tunnels), self.state.path)  # fmt: skip
            reconciler.restarted = True
        self._applied(self.desired)
        self._resume_ike_sas(adapter, reconciler, dataplane)
        self._tasks.append(asyncio.create_task(reconciler.run(), name="reconciler"))
        if self.routes is not None:
            self._tasks.append(asyncio.create_task(self.routes.run(), name="site-routes"))
        self._tasks.append(asyncio.create_task(Sweeper(adapter, dataplane).run(), name="sweeper"))
        self._tasks.append(asyncio.create_task(self._dataplane_events(dataplane), name="dataplane-events"))
        self.controller_task = asyncio.create_task(self._controller(), name="controller")
        self._tasks.append(self.controller_task)
        log.info("meshsec agent %s up: data plane %s, IKE on %s, status on %s",
                 config.node, dataplane.capabilities.backend,
                 ", ".join(map(str, adapter.endpoints)), socket_path)  # fmt: skip

    async def _dataplane_events(self, dataplane: DataPlane) -> None:
        try:
            async for ev in dataplane.events():
                if isinstance(ev, SaExpired) and self.adapter is not None:
                    # Soft: the engine rekeys the CHILD_SA; hard: it deletes it with the peer.
                    self.adapter.child_expired(ev.sa, ev.hard)
        except DataPlaneError as exc:
            # The data-plane daemon died (and its SAs with it): this process's view of the data
            # plane is wrong now; a restart adopts what the next daemon holds and re-establishes.
            log.error("data plane lost (%s); stopping so that a restart recovers", exc)
            self.dataplane_lost.set()

    async def _adopt_or_remove(self, dataplane: DataPlane) -> None:
        """What an earlier run left: adopted while a persisted desired state says what it was for
        (a restart), removed otherwise (nothing to match it against: stale by definition)."""
        if not self.desired.version:
            owned = await dataplane.list_owned()
            self.recovered = len(owned.sas) + len(owned.policies)
            if self.recovered:
                log.info("removing %d SA(s) and %d policy(ies) left by an earlier run (no persisted "
                         "desired state to match them)", len(owned.sas), len(owned.policies))  # fmt: skip
                await dataplane.flush_owned()
            return
        owned = await dataplane.adopt()
        self._owned = owned
        self.adopted = len(owned.sas) + len(owned.policies)
        if self.adopted:
            log.info("adopted %d SA(s) and %d policy(ies) of an earlier run: they forward until new "
                     "CHILD_SAs replace them", len(owned.sas), len(owned.policies))  # fmt: skip
        self._first_reqid = owned.max_reqid + 1

    def _resume_ike_sas(self, adapter: IkeAdapter, reconciler: Reconciler, dataplane: DataPlane) -> None:
        """Goes on with the IKE SAs the state file holds (a restart): each bound to the CHILD_SAs
        the data plane kept, so the peers notice nothing. A tunnel whose SA cannot be resumed
        (file missing, corrupt, stale, of an unknown version; SA expired, tunnel changed, CHILD_SA
        gone) is replaced make-before-break by the reconciler, without INITIAL_CONTACT where this
        end is the designated initiator; one log line says why, never what the file holds."""
        started = time.monotonic()
        if not self.desired.version or not self._resumable():
            if self.state.remove_ike_state():
                why = ("no persisted desired state says what its IKE SAs were for" if not self.desired.version
                       else f"the {dataplane.capabilities.backend} data plane did not outlive the last agent")
                log.info("removed %s: %s", self.state.file(IKE_STATE), why)  # fmt: skip
            return
        loaded = self.state.load_ike_state()
        restarted = set(reconciler.plans)
        self.resume = {"resumed": 0, "fallback": 0, "problem": loaded.problem}
        if loaded.problem is not None:
            log.warning("no IKE SA resumed: %s; make-before-break: new IKE SAs replace the adopted "
                        "CHILD_SAs", loaded.problem)  # fmt: skip
            reconciler.without_initial_contact |= restarted
            return
        owned = None if dataplane.capabilities.backend == "none" else self._owned or OwnedState((), ())
        resumed_tunnels: set[str] = set()
        fallback = 0
        for entry in loaded.sas:
            tunnel = str(entry.get("tunnel"))
            if entry.get("kind") == ROAD_WARRIOR:
                self._keep_road_warrior(adapter, entry)
                continue
            plan = reconciler.plans.get(tunnel)
            try:
                if plan is None:
                    raise ResumeRefused("its tunnel is no longer desired")
                sa, bindings = restore(entry, plan.ike, adapter.now(), time.time(), owned, rnd=adapter.rnd)
            except ResumeRefused as exc:
                fallback += 1
                log.warning("%s: IKE SA not resumed (%s); make-before-break: a new IKE SA replaces it",
                            tunnel, exc)  # fmt: skip
                continue
            adapter.resume(sa, bindings, entry)
            resumed_tunnels.add(tunnel)
        reconciler.without_initial_contact |= restarted - resumed_tunnels
        adapter.persist_now()  # the file now holds what this process holds, nothing else
        self.resume.update(resumed=len(resumed_tunnels), fallback=fallback,
                           seconds=round(time.monotonic() - started, 4))  # fmt: skip
        log.info("resumed %d IKE SA(s) of %d in %s (state version %s, written %.1f s ago); %d tunnel(s) "
                 "without one get a new IKE SA make-before-break; %d road warrior(s) wait for their "
                 "pool's config", len(resumed_tunnels), len(loaded.sas) - len(self._pending_rw),
                 self.state.path, loaded.version, time.time() - (loaded.written_at or 0.0),
                 len(restarted - resumed_tunnels), len(self._pending_rw))  # fmt: skip
        self._resume_road_warriors()

    def _keep_road_warrior(self, adapter: IkeAdapter, entry: dict[str, Any]) -> None:
        try:
            if adapter.journal is not None:
                adapter.journal.keep(entry)  # persist_now must not drop it meanwhile
        except ResumeRefused as exc:
            log.warning("%s: road-warrior IKE SA not resumed (%s); the client reconnects",
                        entry.get("tunnel"), exc)  # fmt: skip
            return
        self._pending_rw.append(entry)

    def _resume_road_warriors(self) -> None:
        """Takes up the persisted road-warrior SAs once the gateway serves configs (the pools of
        the persisted NodeConfig, with the controller channel for their leases). Each one resumed
        holds its lease again; one refused is dropped with a log line, and its client reconnects
        (its DPD finds the IKE SA gone; the sweeper removes the CHILD_SAs it left)."""
        gateway, adapter = self.gateway, self.adapter
        if not self._pending_rw or gateway is None or adapter is None or gateway.leases is None \
                or self._engine_credentials is None:  # fmt: skip
            return
        pending, self._pending_rw = self._pending_rw, []
        assert self.dataplane is not None
        owned = None if self.dataplane.capabilities.backend == "none" else self._owned or OwnedState((), ())
        resumed = 0
        for entry in pending:
            name = str(entry.get("tunnel"))
            doc = entry.get("sa") if isinstance(entry.get("sa"), dict) else {}
            assert isinstance(doc, dict)
            serial = doc.get("peer_serial")
            why = gateway.refusal(name, serial if isinstance(serial, str) else None,
                                  bool(doc.get("virtual_addresses")) and doc.get("cfg_reply") is not None)
            config = gateway.config_named(name)
            try:
                if why is not None or config is None:
                    raise ResumeRefused(why or "no config")
                sa, bindings = restore(entry, config, adapter.now(), time.time(), owned, rnd=adapter.rnd)
            except ResumeRefused as exc:
                log.warning("%s: road-warrior IKE SA not resumed (%s); the client reconnects", name, exc)
                if adapter.journal is not None:
                    adapter.journal.drop(entry)
                continue
            gateway.resumed(adapter.resume(sa, bindings, entry))
            resumed += 1
        self.resume["road_warriors_resumed"] = resumed
        self.resume["road_warriors_fallback"] = len(pending) - resumed
        adapter.persist_now()

    def _resumable(self) -> bool:
        """Whether the next process can resume the IKE SAs: only on a data plane that keeps their
        CHILD_SAs while no agent runs (or with none at all, IKE only)."""
        caps = self.dataplane.capabilities if self.dataplane is not None else None
        return caps is None or caps.backend == "none" or caps.outlives_agent

    def _unreachable_after_restart(self, record: SaRecord) -> bool:
        """A restart keeps IKE SAs the next process replaces by initiating (INITIAL_CONTACT makes
        the peer drop the old one); where the peer is the designated initiator, the next process
        may not reach it, and only a DELETE makes it come back at once instead of after its DPD."""
        plan = self.reconciler.plans.get(record.name) if self.reconciler is not None else None
        return plan is not None and not plan.initiator

    async def stop(self, leave: bool = False) -> None:
        """`leave`: delete the SAs, tell the peers, remove the IKE state file (leaving the mesh);
        else a restart: peers hear nothing and the data plane keeps forwarding."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        if self.routes is not None and leave:  # a restart leaves them routing
            await self.routes.flush()
        if self.gateway is not None:
            await self.gateway.close()
        if self.adapter is not None:
            journal = self.adapter.journal
            if leave:
                if journal is not None:
                    journal.enabled = False  # the file goes; the DELETEs must not write it again
                await self.adapter.close(graceful=True)
            else:
                # Let exchanges in flight finish so every SA can be resumed, then save them all
                # with fresh deadlines; an SA that still cannot be captured is told (as before)
                # only where the next process may not reach its peer.
                if self._resumable():
                    unsaved = {r.handle for r in await self.adapter.quiesce(RESTART_QUIESCE)}
                    self.adapter.persist_now()
                else:  # the CHILD_SAs go with this process: nothing to resume them on
                    unsaved = {r.handle for r in self.adapter.active()}
                    if journal is not None:
                        journal.enabled = False
                    self.state.remove_ike_state()
                await self.adapter.close(graceful=True, only=lambda r: r.handle in unsaved
                                         and self._unreachable_after_restart(r))  # fmt: skip
                if journal is not None:
                    journal.enabled = False
        if self.dataplane is not None:
            if leave:
                with contextlib.suppress(DataPlaneError):
                    await self.dataplane.flush_owned()
            with contextlib.suppress(Exception):
                await self.dataplane.close()
        if leave:
            self.state.remove_ike_state()
        if self.adapter is not None:
            self.adapter.close_sockets()
        if self.status_server is not None:
            await self.status_server.close()
        self.metrics.close()
        log.info("meshsec agent %s stopped (%s)", self.config.node,
                 "left the mesh: SAs deleted, peers told" if leave
                 else "restart: data plane left forwarding, only peers that initiate told")  # fmt: skip

    # ------------------------------------------------------------------ controller

    async def _controller(self) -> None:
        fresh = False
        while True:
            try:
                await self._session(fresh)
                return
            except IdentityLost as exc:
                if self.config.token_file is None:
                    raise EnrollmentError(f"the controller no longer accepts this node's certificate ({exc}) "
                                          "and no --token-file is given to enroll again") from exc
                log.warning("the controller no longer accepts this node's certificate (%s); enrolling again",
                            exc)  # fmt: skip
                self.session, fresh = None, True

    async def _session(self, fresh: bool) -> None:
        """`fresh`: enroll even though the state dir holds credentials (they were refused)."""
        creds = await self._credentials(fresh)
        assert self.reconciler is not None and self.reports is not None
        if self.reconciler.credentials is None or fresh:  # just enrolled (`start` applied stored ones)
            self._use_credentials(creds)
        reconciler, reports = self.reconciler, self.reports
        self.session = Session(
            address=self.config.controller,
            node=self.config.node,
            state=self.state,
            creds=creds,
            desired=self.desired,
            desired_store=self.desired_store,
            on_applied=self._applied,
            node_status=self._node_status,
            tunnels=self._tunnel_statuses,
            changed=reconciler.changed,
            metrics=self.metrics,
            reconciled=lambda: reconciler.reconciled_version,
            server_name=self.config.server_name,
            on_renewed=self._use_credentials,
            remote_access_clients=self._client_traffic,
        )
        del reports
        self._renew_for_identity()
        assert self.gateway is not None
        self.gateway.attach(self.session.channel)
        self._configure_gateway()
        await self.session.run()

    async def _credentials(self, fresh: bool = False) -> Credentials:
        creds = None if fresh else credentials.load(self.state)
        attempt = 0
        while creds is None:
            creds = await self._enroll_once(attempt)
            attempt += 1
        return creds

    async def _enroll_once(self, attempt: int) -> Credentials | None:
        config = self.config
        if config.token_file is None or config.ca_file is None or config.bootstrap is None:
            raise EnrollmentError(
                f"{self.state.path} holds no credentials; --bootstrap, --token-file and --ca-file are needed"
            )
        token = read_token(config.token_file)
        try:
            caps = self.dataplane.capabilities if self.dataplane else None
            facts = node_facts(list(config.addresses) or local_addresses(), caps)
            return await credentials.enroll(
                self.state, config.bootstrap, config.node, token, config.ca_file.read_bytes(), facts,
                pin=config.ca_sha256, server_name=config.server_name,
            )  # fmt: skip
        except EnrollmentError:
            raise
        except Exception as exc:  # the controller is not there yet: retry
            delay = min(ENROLL_RETRY_MAX, 0.5 * 2**attempt)
            log.warning("enrollment via %s failed (%s); retrying in %.1f s", config.bootstrap, exc, delay)
            await asyncio.sleep(delay)
            return None

    def _applied(self, desired: DesiredState) -> None:
        assert self.reconciler is not None and self.reports is not None
        self.reports.peer_names = {tid: t.peer_name for tid, t in desired.tunnels.items()}
        self.reconciler.set_desired(desired.tunnels, desired.version)
        if self.routes is not None:
            self.routes.want(routes_of(desired.node))
        self.metrics.desired_version.set(desired.version)
        self._renew_for_identity()
        self._configure_gateway()
        warn_about_host((_host_needs(t) for t in desired.tunnels.values()), self._host_warnings)

    def _configure_gateway(self) -> None:
        node = self.desired.node
        if node is None or self.gateway is None:
            return
        pushed = node.revocation if node.HasField("revocation") else None
        self.gateway.follow_revocation(node.remote_access, pushed)
        try:
            local_id = identity_text(node.local_id, "node.local_id")
        except TunnelError as exc:
            log.error("remote access: %s", exc)
            return
        self.gateway.configure(node.remote_access, local_id, self._engine_credentials)
        self._resume_road_warriors()

    def _use_credentials(self, creds: Credentials | None) -> None:
        """The node certificate for certificate-auth tunnels (at start, enrollment, renewal)."""
        if creds is None or self.reconciler is None:
            return
        try:
            engine = node_credentials(creds.certificate_pem, creds.key_pem, creds.ca_pem)
        except CredentialError as exc:
            log.error("node credentials in %s unusable for IKE: %s", self.state.path, exc)
            return
        log.info("IKE certificate auth uses node certificate serial %x (valid until %s)",
                 engine.chain[0].serial_number, engine.chain[0].not_valid_after_utc.isoformat())  # fmt: skip
        self.metrics.certificate_expiry.set(engine.chain[0].not_valid_after_utc.timestamp())
        self.reconciler.set_credentials(engine)
        self._engine_credentials = engine
        self._configure_gateway()
        self._renew_for_identity()

    def _renew_for_identity(self) -> None:
        """The controller names a Node's current IKE ID in the certificates it issues; when the
        ID changed after enrollment (a Node applied after the agent enrolled), ask once for a
        certificate that names it."""
        if self.reconciler is None or self.session is None:
            return
        missing = self.reconciler.missing_ids
        if missing and not missing <= self._renewal_asked_for:
            self._renewal_asked_for |= missing
            log.info("node certificate lacks local ID(s) %s; renewing it early", ", ".join(sorted(missing)))
            self.session.renew_now.set()

    # ------------------------------------------------------------------ status

    def backend(self) -> agent_pb2.DataplaneBackend:
        if self.dataplane is None:
            return agent_pb2.DATAPLANE_BACKEND_UNSPECIFIED
        backend = self.dataplane.capabilities.backend
        if backend == "kernel":
            return agent_pb2.DATAPLANE_BACKEND_KERNEL_XFRM
        if backend == "userspace":
            return agent_pb2.DATAPLANE_BACKEND_USERSPACE
        return agent_pb2.DATAPLANE_BACKEND_UNSPECIFIED  # `none`: IKE without a data plane

    def _node_status(self) -> agent_pb2.NodeStatus:
        caps = self.dataplane.capabilities if self.dataplane else None
        status = agent_pb2.NodeStatus(
            dataplane_backend=self.backend(),
            facts=node_facts(list(self.config.addresses) or local_addresses(), caps),
        )
        started = timestamp(self.started_at)
        assert started is not None
        status.started_at.CopyFrom(started)
        if caps is not None:
            status.dataplane_path_mtu = caps.path_mtu
        if self.session is not None:
            status.certificate_not_after.FromDatetime(self.session.creds.certificate.not_valid_after_utc)
        return status

    async def _tunnel_statuses(self) -> list[agent_pb2.TunnelStatus]:
        assert self.reports is not None
        tunnels = await self.reports.tunnels()
        installer = self.adapter.installer if self.adapter is not None else None
        traffic = None
        if installer is not None:
            installer.traffic.retain({t.tunnel_id for t in tunnels})
            traffic = await installer.traffic_totals()
        self.metrics.observe(tunnels, traffic)
        self._traffic = traffic or {}
        return tunnels

    def _client_traffic(self) -> list[agent_pb2.RemoteAccessClientTraffic]:
        """Road warriors' traffic from the totals `_tunnel_statuses` just read for this report."""
        return self.gateway.client_traffic(self._traffic) if self.gateway is not None else []

    def health(self) -> dict[str, object]:
        """Ready: enrolled, a desired state received (now or persisted from an earlier run) and
        the data plane running with that state applied. A controller that is away does not make
        the agent unready: its tunnels keep working on the last state."""
        session, reconciler = self.session, self.reconciler
        desired, applied = self.desired.version, reconciler.reconciled_version if reconciler else 0
        connected = bool(session and session.connected)
        doc: dict[str, object] = {
            "enrolled": session is not None,
            "controller_connected": connected,
            "desired_version": desired,
            "reconciled_version": applied,
            "dataplane": self.dataplane.capabilities.backend if self.dataplane else None,
        }
        if session is None:
            reason = "not enrolled yet"
        elif not desired:
            reason = "no desired state from the controller yet" + (
                "" if connected else f" (controller: {session.last_error or 'connecting'})"
            )
        elif self.dataplane is None or reconciler is None:
            reason = "data plane not started"
        elif applied < desired:
            reason = f"applying desired state {desired} (applied {applied})"
        else:
            doc["ready"] = True
            away = "connected" if connected else "away"
            doc["reason"] = f"desired state {desired} applied; controller {away}"
            return doc
        doc["ready"] = False
        doc["reason"] = reason
        return doc

    async def status(self) -> dict[str, object]:
        """The status socket's document: the adapter's SA tables plus the controller view."""
        assert self.adapter is not None and self.reconciler is not None
        doc = await self.adapter.status()
        session = self.session
        tunnels = await self._tunnel_statuses()
        doc["node"] = self.config.node
        doc["controller"] = {
            "address": self.config.controller,
            "connected": bool(session and session.connected),
            "last_error": session.last_error if session else None,
            "desired_version": self.desired.version,
            "reconciled_version": self.reconciler.reconciled_version,
            "reports_acknowledged": session.last_ack_seq if session else 0,
        }
        groups = self.reconciler.sas_by_tunnel()
        doc["tunnels"] = [
            {
                "tunnel_id": t.tunnel_id,
                "peer": t.peer_name,
                "state": common_pb2.TunnelState.Name(t.state).removeprefix("TUNNEL_STATE_"),
                "child_sas": [{"name": c.name, "spi_in": f"{c.spi_in:08x}", "spi_out": f"{c.spi_out:08x}",
                               "bytes_in": c.bytes_in, "bytes_out": c.bytes_out} for c in t.child_sas],
                "last_error": t.last_error.message or None,
                "auth": self._auth_doc(t.tunnel_id, groups.get(t.tunnel_id, [])),
            }
            for t in tunnels
        ]  # fmt: skip
        doc["recovered_at_start"] = self.recovered
        doc["site_routes"] = self.routes.describe() if self.routes is not None else []
        doc["reconciler"] = {"stats": dict(self.reconciler.stats), "queued": len(self.reconciler.queue)}
        doc["adopted_at_start"] = self.adopted
        doc["resumed_at_start"] = self.resume
        return doc

    def _auth_doc(self, tid: str, sas: list[SaView]) -> dict[str, object] | None:
        """How the tunnel's established IKE SA (among its `sas`) authenticated, else how its
        next one will: the config the engine ran IKE_AUTH with, which accepts nothing but that
        method from the peer."""
        assert self.reconciler is not None
        live = [s for s in sas if s.is_established]
        planned = self.reconciler.plans.get(tid)
        config = live[0].config if live else planned.ike if planned is not None else None
        if config is None:
            return None
        if config.credentials is None:
            return {"method": "psk", "established": bool(live)}
        leaf = config.credentials.chain[0]
        return {
            "method": "certificate",
            "established": bool(live),
            "certificate_serial": f"{leaf.serial_number:x}",
            "certificate_subject": leaf.subject.rfc4514_string(),
            "trusted_cas": [c.subject.rfc4514_string() for c in config.credentials.trusted],
        }


def _host_needs(tunnel: agent_pb2.DesiredTunnel) -> TunnelNeeds:
    def nets(cidrs: Iterable[str]) -> tuple[IPNetwork, ...]:
        found = []
        for cidr in cidrs:
            with contextlib.suppress(ValueError):  # translate.plan reports bad selectors
                found.append(ipaddress.ip_network(cidr, strict=False))
        return tuple(found)

    children = tunnel.children
    peer = tunnel.remote_endpoints[0].address if tunnel.remote_endpoints else None
    return TunnelNeeds(nets(ts.cidr for c in children for ts in c.local_ts),
                       nets(ts.cidr for c in children for ts in c.remote_ts),
                       tunnel.local_endpoint.address or None, peer)


async def run(config: NodeAgentConfig, stop: asyncio.Event | None = None) -> None:
    """Until `stop` (SIGTERM/SIGINT: a restart unless `config.leave_on_stop`), a drain request
    (leave) or a fatal controller error (a restart: the tunnels keep working meanwhile)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    agent = NodeAgent(config)
    leave = False
    try:
        await agent.start()
        controller = agent.controller_task
        assert controller is not None
        waits = [asyncio.create_task(stop.wait()), asyncio.create_task(agent.drain_requested.wait()),
                 asyncio.create_task(agent.dataplane_lost.wait())]
        await asyncio.wait([controller, *waits], return_when=asyncio.FIRST_COMPLETED)
        for w in waits:
            w.cancel()
        leave = agent.drain_requested.is_set() or (stop.is_set() and config.leave_on_stop)
        if controller.done() and not controller.cancelled() and controller.exception() is not None:
            raise controller.exception()  # type: ignore[misc]
        if agent.dataplane_lost.is_set():
            raise DataPlaneError("the data-plane daemon went away")
    finally:
        await agent.stop(leave=leave)
