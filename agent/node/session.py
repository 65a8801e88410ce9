"""The agent's connection to the controller: the desired-state watch (snapshot, then deltas,
resumed from the last applied version after any reconnect), status reports (periodic and on
change) and certificate renewal, over one mTLS channel. Any failure closes the channel and
reconnects after an exponential back-off with jitter; tunnels are not touched meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import random
import uuid
from collections.abc import Awaitable, Callable

import grpc

from meshsec.agent.node import credentials
from meshsec.agent.node.credentials import Credentials
from meshsec.agent.node.desired import DesiredState, DesiredStore, VersionGap
from meshsec.agent.node.metrics import AgentMetrics
from meshsec.agent.node.statedir import StateDir
from meshsec.common.deadline import set_within
from meshsec.v1 import agent_pb2, agent_pb2_grpc

log = logging.getLogger(__name__)

BACKOFF_MIN = 0.5
BACKOFF_MAX = 15.0
DEFAULT_INTERVAL = 30.0
DEBOUNCE = 0.3
CALL_TIMEOUT = 10.0

Applied = Callable[[DesiredState], None]
NodeStatusFn = Callable[[], agent_pb2.NodeStatus]
TunnelsFn = Callable[[], Awaitable[list[agent_pb2.TunnelStatus]]]
ClientsFn = Callable[[], list[agent_pb2.RemoteAccessClientTraffic]]


class StreamEnded(Exception):
    """The connection has to be re-established (stream closed by the server, new certificate)."""


class IdentityLost(Exception):
    """The controller no longer accepts this agent's certificate: its Node was deleted and
    declared again (a Kubernetes Node re-created under its name), or re-enrolled elsewhere.
    Reconnecting cannot help; only a new enrollment can."""


def identity_lost(exc: grpc.aio.AioRpcError) -> bool:
    # PERMISSION_DENIED also answers a certificate for another node name (a configuration
    # error, which a new enrollment would not fix); the controller's refusals of a certificate
    # its Node stopped accepting all say to enroll (controller/api/agent.py).
    return exc.code() == grpc.StatusCode.PERMISSION_DENIED and "enroll" in (exc.details() or "")


class Session:
    def __init__(
        self,
        *,
        address: str,
        node: str,
        state: StateDir,
        creds: Credentials,
        desired: DesiredState,
        desired_store: DesiredStore,
        on_applied: Applied,
        node_status: NodeStatusFn,
        tunnels: TunnelsFn,
        changed: asyncio.Event,
        metrics: AgentMetrics,
        reconciled: Callable[[], int],
        server_name: str | None = None,
        rng: random.Random | None = None,
        on_renewed: Callable[[Credentials], None] | None = None,
        remote_access_clients: ClientsFn | None = None,
    ) -> None:
        self.address = address
        self.node = node
        self.state = state
        self.creds = creds
        self.desired = desired
        self.desired_store = desired_store
        self.on_applied = on_applied
        self.node_status = node_status
        self.tunnels = tunnels
        self.changed = changed
        self.metrics = metrics
        self.reconciled = reconciled
        self.server_name = server_name
        self.on_renewed = on_renewed
        self.remote_access_clients = remote_access_clients  # read after `tunnels` (same counters)
        self.renew_now = asyncio.Event()  # renew before renew_at (e.g. the IKE ID changed)
        self.rng = rng or random.Random()
        self.instance_id = uuid.uuid4().hex
        self.seq = 0
        self.connected = False
        self.received_version = desired.version
        self.interval = DEFAULT_INTERVAL
        self.last_error: str | None = None
        self.last_ack_seq = 0

    def channel(self) -> grpc.aio.Channel:
        options: list[tuple[str, str | int]] = [
            ("grpc.keepalive_time_ms", 10_000),
            ("grpc.keepalive_timeout_ms", 5_000),
            ("grpc.enable_http_proxy", 0),  # the controller is dialled directly, never via a proxy
            # Bandwidth probing makes every delta cost the controller a PING to answer: at 10k
            # agents that doubled its socket work per join (docs/benchmarks.md, Controller).
            ("grpc.http2.bdp_probe", 0),
        ]
        if self.server_name:
            options.append(("grpc.ssl_target_name_override", self.server_name))
        return grpc.aio.secure_channel(self.address, self.creds.channel_credentials(), options=options)

    async def run(self) -> None:
        attempt = 0
        while True:
            self.metrics.reconnects.inc()
            started = asyncio.get_running_loop().time()
            try:
                async with self.channel() as channel:
                    await self._connected(channel)
            except (grpc.aio.AioRpcError, VersionGap, StreamEnded, OSError) as exc:
                if isinstance(exc, grpc.aio.AioRpcError) and identity_lost(exc):
                    self.last_error = _describe(exc)
                    raise IdentityLost(self.last_error) from exc
                self.last_error = _describe(exc)
                log.warning("controller %s: %s; reconnecting", self.address, self.last_error)
            finally:
                self.connected = False
                self.metrics.connected.set(0)
            if asyncio.get_running_loop().time() - started > BACKOFF_MAX:
                attempt = 0  # the connection was good for a while: start the back-off over
            delay = min(BACKOFF_MAX, BACKOFF_MIN * 2**attempt) * (0.5 + self.rng.random())
            attempt = min(attempt + 1, 10)
            await asyncio.sleep(delay)

    async def _connected(self, channel: grpc.aio.Channel) -> None:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        tasks = [
            asyncio.create_task(self._watch(stub), name="watch"),
            asyncio.create_task(self._report_loop(stub), name="report"),
            asyncio.create_task(self._renew_loop(channel), name="renew"),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _watch(self, stub: agent_pb2_grpc.AgentServiceAsyncStub) -> None:
        request = agent_pb2.WatchRequest(node_name=self.node, resume_from_version=self.desired.version)
        parts: list[agent_pb2.DesiredStateUpdate] = []
        async for message in stub.WatchDesiredState(request):
            if not self.connected:
                self.connected, self.last_error = True, None
                self.metrics.connected.set(1)
                log.info("controller %s: watching from version %d", self.address, self.desired.version)
            parts.append(message)
            if message.more:
                continue
            update, parts = parts, []
            if update[0].kind == agent_pb2.UPDATE_KIND_DELTA and update[0].version == self.desired.version:
                continue  # "you are in sync"
            self.desired.apply(update)
            self.metrics.updates.labels(agent_pb2.UpdateKind.Name(update[0].kind)).inc()
            self.metrics.desired_version.set(self.desired.version)
            self.desired_store.save(self.desired)
            self.received_version = self.desired.version
            self.on_applied(self.desired)
            self.changed.set()
        raise StreamEnded("the controller ended the watch stream")

    async def _report_loop(self, stub: agent_pb2_grpc.AgentServiceAsyncStub) -> None:
        while True:
            await self.report(stub)
            self.changed.clear()
            if await set_within(self.changed, self.interval):
                await asyncio.sleep(DEBOUNCE)

    async def report(self, stub: agent_pb2_grpc.AgentServiceAsyncStub) -> None:
        self.seq += 1
        tunnels = await self.tunnels()
        report = agent_pb2.StatusReport(
            node_name=self.node,
            agent_instance_id=self.instance_id,
            seq=self.seq,
            full=True,
            node=self.node_status(),
            tunnels=tunnels,
            received_version=self.received_version,
            reconciled_version=self.reconciled(),
        )
        if self.remote_access_clients is not None:
            report.remote_access_clients.extend(self.remote_access_clients())
        report.sent_at.GetCurrentTime()
        try:
            ack = await stub.ReportStatus(report, timeout=CALL_TIMEOUT)
        except grpc.aio.AioRpcError:
            self.metrics.reports.labels("error").inc()
            raise
        self.metrics.reports.labels("ok").inc()
        self.last_ack_seq = ack.seq
        interval = ack.next_report_seconds or self.desired_interval()
        self.interval = float(interval or DEFAULT_INTERVAL)

    def desired_interval(self) -> int:
        node = self.desired.node
        return node.status_interval_seconds if node is not None else 0

    async def _renew_loop(self, channel: grpc.aio.Channel) -> None:
        while True:
            wait = (self.creds.renew_at() - datetime.datetime.now(datetime.UTC)).total_seconds()
            if wait > 0 and not self.renew_now.is_set():
                await set_within(self.renew_now, min(wait, 3600.0))
                continue
            self.renew_now.clear()
            self.creds = await credentials.renew(self.state, channel, self.node)
            if self.on_renewed is not None:
                self.on_renewed(self.creds)
            # The channel keeps the old certificate; reconnect so the new one is used.
            raise StreamEnded("certificate renewed; reconnecting with it")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return f"{type(exc).__name__}: {exc}"
