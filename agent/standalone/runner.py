"""Runs a StandaloneConfig: data plane, IKE adapter, status socket, start actions, road warriors
(remote-access connections with their pools, agent/gateway/), and a graceful shutdown (DELETE to
every peer) on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from meshsec.agent.adapters.ike import AdapterSettings, IkeAdapter, SaRecord
from meshsec.agent.adapters.recording import RecordingDataPlane
from meshsec.agent.dataplane.api import DataPlane, DataPlaneError, SaExpired
from meshsec.agent.gateway.clients import ClientConnected, ClientDisconnected, ClientEvent, ConnectedClients
from meshsec.agent.gateway.pool import LocalPool, PoolSet
from meshsec.agent.host_checks import tunnel_needs, warn_about_host
from meshsec.agent.ike.address import Address
from meshsec.agent.ike.config import IkeConfig
from meshsec.agent.ike.events import Event, InitialContactReceived
from meshsec.agent.ike.responder import ResponderSettings
from meshsec.agent.standalone.config import AgentSettings, Connection, StandaloneConfig
from meshsec.agent.standalone.remote_access import engine_config
from meshsec.agent.standalone.status import StatusServer

log = logging.getLogger(__name__)
INITIATE_RETRY_FIRST = 2.0
INITIATE_RETRY_MAX = 60.0


async def make_dataplane(settings: AgentSettings) -> DataPlane:
    """`none` records the calls and programs nothing; otherwise `select_backend` decides (and logs
    why when `auto` falls back to the userspace data plane)."""
    if settings.dataplane == "none":
        return RecordingDataPlane()
    # Imported lazily: pyroute2 and the kernel backend are not needed for `none`.
    from meshsec.agent.dataplane.kernel.selection import select_backend

    def userspace() -> DataPlane:
        if settings.userspace_daemon != "off":
            return daemon_client(settings)
        from meshsec.agent.dataplane.userspace.backend import UserspaceConfig, UserspaceDataPlane

        return UserspaceDataPlane(UserspaceConfig(tun_name=settings.tun_name))

    return await select_backend(settings.dataplane, userspace_factory=userspace)


USERSPACE_DAEMON_MODES = ("spawn", "connect", "off")


def daemon_client(settings: AgentSettings) -> DataPlane:
    """The client of the data-plane daemon on `settings.dataplane_socket`; with "spawn" it starts
    the daemon (log and pid file beside the socket) where none answers."""
    from meshsec.agent.dataplane.userspace.client import DaemonDataPlane, DaemonSpawn

    if settings.userspace_daemon not in USERSPACE_DAEMON_MODES:
        raise DataPlaneError(f"userspace daemon mode {settings.userspace_daemon!r} is not one of "
                             f"{USERSPACE_DAEMON_MODES}")  # fmt: skip
    path = settings.dataplane_socket
    if path is None:
        raise DataPlaneError("the userspace data-plane daemon needs a control socket path")
    spawn = None
    if settings.userspace_daemon == "spawn":
        spawn = DaemonSpawn(tun_name=settings.tun_name, log_file=path.with_suffix(".log"),
                            pid_file=path.with_suffix(".pid"))  # fmt: skip
    return DaemonDataPlane(path, spawn)


class Agent:
    def __init__(self, config: StandaloneConfig, dataplane: DataPlane) -> None:
        self.config = config
        self.dataplane = dataplane
        agent = config.agent
        pools = {name: LocalPool(name, p.addrs, p.dns, p.subnets) for name, p in config.pools.items()}
        self.pool_sets = {c.name: PoolSet(pools[n] for n in c.pools) for c in config.remote_access}
        # Tried after the site-to-site connections: those name their peers, these take anyone.
        self._road_warriors = [
            engine_config(c, self.pool_sets[c.name], config.eap_users) for c in config.remote_access
        ]
        self.clients = ConnectedClients(lambda conn, client: self.pool_sets[conn].release(client))
        self.adapter = IkeAdapter(
            self._lookup,
            dataplane=dataplane,
            on_event=self._on_event,
            settings=AdapterSettings(
                bind=agent.bind,
                ike_port=agent.ike_port,
                rcvbuf=agent.receive_buffer,
                responder=ResponderSettings(
                    cookie_threshold=agent.cookie_threshold,
                    block_threshold=agent.block_threshold,
                    cookie_threshold_per_address=agent.cookie_threshold_per_address,
                    block_threshold_per_address=agent.block_threshold_per_address,
                ),
            ),
        )
        self.status = StatusServer(agent.status_socket, self._status)
        self._events_task: asyncio.Task[None] | None = None
        self._retries: set[asyncio.Task[None]] = set()

    async def _status(self) -> dict[str, object]:
        doc = await self.adapter.status()
        if self.pool_sets:
            doc["leases"] = [
                {"connection": conn, "pool": pool, "client": lease.client.identity,
                 "certificate": lease.client.common_name,
                 "addresses": [str(a) for a in lease.addresses], "ike_sas": lease.holders}
                for conn, pools in self.pool_sets.items() for pool, lease in pools.leases()
            ]  # fmt: skip
        return doc

    def _on_event(self, record: SaRecord, event: Event) -> None:
        if record.sa.config.address_pool is not None:
            sa = record.sa
            peer = sa.eap_identity or (str(sa.remote_identity) if sa.remote_identity else sa.remote.host)
            seen = self.clients.observe(record.handle, record.name, peer, event)
            if seen is not None:
                _log_client(seen, record.sa.remote.host)
        if isinstance(event, InitialContactReceived):
            # The peer rebooted or lost its state: our older SAs with it are dead (RFC 7296 2.4).
            asyncio.get_running_loop().call_soon(self._drop_stale, record, event.remote_id)

    def _drop_stale(self, fresh: SaRecord, remote_id: str) -> None:
        # Compared raw: `remote_id` is the peer's ID as shown to humans (escaped).
        peer = fresh.sa.remote_identity
        for r in self.adapter.active():
            same = r.name == fresh.name and r.sa.remote_identity == peer
            if r is not fresh and same and r.established is not None:
                log.info("%s: INITIAL_CONTACT from %s: dropping older IKE SA %s", r.name, remote_id,
                         r.sa.local_spi.hex())  # fmt: skip
                self.adapter.drop(r)

    def _lookup(self, local: Address, remote: Address) -> list[IkeConfig]:
        return [*self.config.lookup(local.host, remote.host), *self._road_warriors]

    async def start(self) -> None:
        """Whatever fails here, `stop()` has run before the exception leaves."""
        try:
            await self.dataplane.start()
            await self.adapter.start()
            await self.status.start()
            self._events_task = asyncio.get_running_loop().create_task(self._follow_dataplane())
            log.info(
                "meshsec agent (standalone) up: %d connection(s), data plane %s, status on %s",
                len(self.config.connections) + len(self._road_warriors),
                self.dataplane.capabilities.backend,
                self.config.agent.status_socket,
            )
            warn_about_host(
                tunnel_needs(c.ike.children, c.local_addrs[0] if c.local_addrs else None,
                             c.remote_addrs[0] if c.remote_addrs else None)
                for c in self.config.connections
            )
            if any(c.ike.mobike for c in self.config.connections):
                self.adapter.watch_local_addresses()
            for conn in self.config.connections:
                if conn.start_action == "initiate" and not await self._initiate(conn):
                    self._retry(conn)
        except BaseException:
            await self.stop()
            raise

    async def _initiate(self, conn: Connection) -> bool:
        """One peer that cannot be reached now (no route: ENETUNREACH from the source address
        lookup, a data plane refusing an SPI) is that connection's problem, not the agent's."""
        local = Address(conn.local_addrs[0], self.config.agent.ike_port) if conn.local_addrs else None
        remote = Address(conn.remote_addrs[0], conn.remote_port)
        try:
            await self.adapter.initiate(conn.ike, remote, local)
        except (OSError, DataPlaneError) as exc:
            log.warning("%s: cannot initiate to %s: %s", conn.name, remote, exc)
            return False
        return True

    def _retry(self, conn: Connection) -> None:
        """start_action initiate: keep trying, backing off up to INITIATE_RETRY_MAX."""

        async def again() -> None:
            delay = INITIATE_RETRY_FIRST
            while True:
                log.info("%s: retrying to initiate in %.0f s", conn.name, delay)
                await asyncio.sleep(delay)
                if await self._initiate(conn):
                    return
                delay = min(INITIATE_RETRY_MAX, delay * 2)

        task = asyncio.get_running_loop().create_task(again(), name=f"initiate-{conn.name}")
        self._retries.add(task)
        task.add_done_callback(self._retries.discard)

    async def _follow_dataplane(self) -> None:
        """Lifetime expiries from the data plane; acquires are ignored (no trap policies here)."""
        async for ev in self.dataplane.events():
            if isinstance(ev, SaExpired):
                self.adapter.child_expired(ev.sa, ev.hard)

    async def stop(self) -> None:
        for task in list(self._retries):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._events_task is not None:
            self._events_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._events_task
        await self.adapter.close(graceful=True)
        with contextlib.suppress(Exception):
            await self.dataplane.close()
        self.adapter.close_sockets()
        await self.status.close()
        log.info("meshsec agent stopped")


def _log_client(seen: ClientEvent, outer: str) -> None:
    """One line per connect, disconnect and refusal: what an operator greps for."""
    if isinstance(seen, ClientConnected):
        log.info("%s: road warrior %s connected from %s, virtual address %s", seen.connection, seen.client,
                 outer, ", ".join(seen.addresses))  # fmt: skip
    elif isinstance(seen, ClientDisconnected):
        log.info("%s: road warrior %s disconnected (%s), released %s", seen.connection, seen.client, seen.why,
                 ", ".join(seen.addresses))  # fmt: skip
    else:
        log.warning("%s: road warrior %s from %s refused: %s (%s)", seen.connection, seen.peer, outer,
                    seen.reason, seen.code)  # fmt: skip


async def run(config: StandaloneConfig, stop: asyncio.Event | None = None) -> None:
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    agent = Agent(config, await make_dataplane(config.agent))
    await agent.start()  # stops the agent itself when it fails
    try:
        await stop.wait()
    finally:
        await agent.stop()
