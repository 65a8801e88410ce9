"""`UserspaceDataPlane`: the DataPlane interface over the TUN device and the packet engine."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from meshsec.agent.dataplane.api import (
    Capabilities,
    DataPlaneError,
    DataPlaneEvent,
    Direction,
    IkeReceiver,
    IPAddress,
    IpsecProtocol,
    OwnedState,
    Policy,
    PolicyAction,
    SaCounters,
    SaExpired,
    SaId,
    SecurityAssociation,
    TrafficSelector,
)
from meshsec.agent.dataplane.userspace.engine import Engine
from meshsec.agent.dataplane.userspace.esp import Drop
from meshsec.agent.dataplane.userspace.io import (
    AsyncioDriver,
    IkeHandoff,
    Readers,
    SocketOutput,
    ThreadDriver,
    make_ike_delivery,
)
from meshsec.agent.dataplane.userspace.mtu import WORST_CASE_SUITES, Suite, mss_for, tun_mtu
from meshsec.agent.dataplane.userspace.sa_state import InboundSa, OutboundSa, SaState
from meshsec.agent.dataplane.userspace.spd import Spd
from meshsec.agent.dataplane.userspace.transforms import RandomSource
from meshsec.agent.dataplane.userspace.tun import TunRoutes, open_tun

_MIN_SPI = 0x100  # SPIs 1-255 are reserved by IANA (RFC 4303 section 2.1)


DEFAULT_BYPASS_MARK = 0x6D73  # SO_MARK on the data plane's own sockets ("ms")


@dataclass(frozen=True, slots=True)
class UserspaceConfig:
    tun_name: str = "meshsec0"
    path_mtu: int = 1500
    # Algorithm combinations the agent may negotiate; the TUN MTU fits the worst of them.
    mtu_suites: tuple[Suite, ...] = WORST_CASE_SUITES
    ipv6_outer: bool = True
    udp_encap: bool = True
    route_table: int = 2730
    route_protocol: int = 211
    bypass_mark: int = DEFAULT_BYPASS_MARK
    rule_priority: int = 2730
    loop: str = "thread"  # "thread", "split" (a thread per direction) or "asyncio"
    # UDP GSO/GRO on the encapsulation socket (io.py); off only to compare, or for a host whose
    # driver mishandles UDP segmentation offload.
    udp_offload: bool = True
    random: RandomSource = field(default=os.urandom)

    def __post_init__(self) -> None:
        if self.loop not in ("thread", "split", "asyncio"):
            raise DataPlaneError(
                f"UserspaceConfig.loop must be 'thread', 'split' or 'asyncio', got {self.loop!r}")
        if not 576 <= self.path_mtu <= 65535:
            raise DataPlaneError(f"UserspaceConfig.path_mtu {self.path_mtu} is outside 576..65535")
        if not 1 <= self.route_protocol <= 255:
            raise DataPlaneError(f"UserspaceConfig.route_protocol {self.route_protocol} is outside 1..255")


class UserspaceDataPlane:
    """ESP/AH in this process. Everything it installs lives in this process, so `close` (or a
    crash) removes SAs and policies with it; only routes survive a crash, and `start` removes
    them (see tun.py)."""

    def __init__(self, config: UserspaceConfig | None = None) -> None:
        self.config = config or UserspaceConfig()
        self.mtu = tun_mtu(self.config.path_mtu, self.config.mtu_suites, self.config.ipv6_outer,
                           self.config.udp_encap)
        self._events: asyncio.Queue[DataPlaneEvent] = asyncio.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._engine: Engine | None = None
        self._output: SocketOutput | None = None
        self._readers: Readers | None = None
        self._driver: ThreadDriver | AsyncioDriver | None = None
        self._routes: TunRoutes | None = None
        self._tun_fd = -1
        self.tun_name = self.config.tun_name
        self._sas: dict[SaId, SaState] = {}
        self._reserved: dict[tuple[int, int], IPAddress] = {}  # (spi, proto) -> dst, inbound only
        self._timers: dict[SaId, list[asyncio.TimerHandle]] = {}
        self._policies: dict[tuple[TrafficSelector, Direction], Policy] = {}
        self._ike_handoffs: list[IkeHandoff] = []

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            backend="userspace", esp=True, ah=True, aead_gcm=True, udp_encapsulation=True,
            aead_chacha20poly1305=True, path_mtu=self.config.path_mtu,
            notes=(f"TUN {self.tun_name} MTU {self.mtu}", "AH: no IPv4 options / IPv6 extension headers",
                   "inbound SPIs are unique per protocol across all destinations"),
        )

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise DataPlaneError("userspace data plane is not started")
        return self._engine

    async def start(self) -> None:
        if self._engine is not None:
            return
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._tun_fd, self.tun_name = open_tun(self.config.tun_name)
        try:
            self._output = SocketOutput(self._tun_fd, self.config.bypass_mark, self.config.udp_offload)
            mss4, mss6 = mss_for(self.mtu)
            self._engine = Engine(self._output, self._emit_threadsafe, mss4, mss6)
            self._readers = Readers(self._engine, self._output)
            self._routes = TunRoutes(self.tun_name, self.config.route_table, self.config.route_protocol,
                                     self.config.bypass_mark, self.config.rule_priority)
            await self._routes.setup(self.mtu)
            if self.config.loop in ("thread", "split"):
                self._driver = ThreadDriver(self._readers, split=self.config.loop == "split")
            else:
                self._driver = AsyncioDriver(self._readers, loop)
            self._driver.start()
        except BaseException:
            await self._teardown()
            raise

    async def close(self) -> None:
        await self._teardown()

    async def _teardown(self) -> None:
        if self._driver is not None:
            self._driver.stop()
            self._driver = None
        for handles in self._timers.values():
            for h in handles:
                h.cancel()
        self._timers.clear()
        if self._routes is not None:
            await self._routes.teardown()
            self._routes = None
        if self._output is not None:
            self._output.close()
            self._output = None
        if self._tun_fd >= 0:
            os.close(self._tun_fd)  # the kernel removes the device and its routes with it
            self._tun_fd = -1
        self._engine = None
        self._sas.clear()
        self._policies.clear()
        self._reserved.clear()

    # -- SAs --

    async def allocate_spi(self, protocol: IpsecProtocol, src: IPAddress, dst: IPAddress) -> int:
        # Unique per protocol across all destinations, because inbound lookup is by SPI alone.
        for _ in range(64):
            key = (_MIN_SPI + secrets.randbelow(0xFFFFFFFF - _MIN_SPI + 1), int(protocol))
            if key not in self._reserved:
                self._reserved[key] = dst
                return key[0]
        raise DataPlaneError("could not find a free SPI in 64 attempts")

    async def add_sa(self, sa: SecurityAssociation) -> None:
        if sa.id in self._sas:
            raise DataPlaneError(f"SA {sa.id} is already installed")
        self._install(sa, self._build(sa))

    async def update_sa(self, sa: SecurityAssociation) -> None:
        """Replace an SA's parameters (e.g. new UDP ports after a NAT mapping change), keeping its
        sequence numbers, replay window and counters."""
        await self.migrate_sa(sa.id, sa)

    async def migrate_sa(self, old: SaId, sa: SecurityAssociation) -> None:
        current = self._sas.get(old)
        if current is None:
            raise DataPlaneError(f"migrate_sa: SA {old} is not installed")
        if current.sa.direction is not sa.direction:
            raise DataPlaneError(f"migrate_sa: SA {old} cannot change direction")
        if sa.id != old and sa.id in self._sas:
            raise DataPlaneError(f"migrate_sa: SA {sa.id} is already installed")
        new = self._build(sa, replacing=old)
        new.bytes, new.packets = current.bytes, current.packets
        new.replay_dropped, new.integrity_failed = current.replay_dropped, current.integrity_failed
        if isinstance(current, OutboundSa) and isinstance(new, OutboundSa):
            if current.esp is not None and new.esp is not None:
                new.esp.seq = current.esp.seq
            if current.ah is not None and new.ah is not None:
                new.ah.seq = current.ah.seq
        if isinstance(current, InboundSa) and isinstance(new, InboundSa):
            if current.esp is not None and new.esp is not None:
                new.esp.window = current.esp.window
            if current.ah is not None and new.ah is not None:
                new.ah.window = current.ah.window
        if sa.id == old:
            self._uninstall(old)
        elif isinstance(current, OutboundSa):
            # The old one stays installed but idle: the newest SA of the reqid carries traffic,
            # and two carrying it would send the same sequence numbers twice.
            current.dead = True
        self._install(sa, new)

    def _build(self, sa: SecurityAssociation, replacing: SaId | None = None) -> SaState:
        if sa.direction is Direction.FWD:
            raise DataPlaneError(f"SA {sa.id}: direction must be IN or OUT, not FWD")
        if not 0 < sa.id.spi <= 0xFFFFFFFF:
            raise DataPlaneError(f"SA {sa.id}: SPI out of range")
        try:
            if sa.direction is Direction.IN:
                key = (sa.id.spi, int(sa.id.protocol))
                current = self.engine.inbound.get(key)
                if current is not None and current.sa.id not in (sa.id, replacing):
                    raise DataPlaneError(
                        f"SA {sa.id}: inbound SPI {sa.id.spi:#x} is in use by {current.sa.id}")
                return InboundSa(sa, self._emit_threadsafe, self.config.random)
            return OutboundSa(sa, self._emit_threadsafe, self.config.random)
        except ValueError as exc:
            raise DataPlaneError(f"SA {sa.id}: {exc}") from exc

    def _install(self, sa: SecurityAssociation, state: SaState) -> None:
        engine = self.engine
        self._sas[sa.id] = state
        if isinstance(state, InboundSa):
            self._reserved[(sa.id.spi, int(sa.id.protocol))] = sa.id.dst
            engine.add_inbound(state)
        elif isinstance(state, OutboundSa):
            engine.add_outbound(state)
        loop = self._loop
        assert loop is not None
        handles = []
        if sa.lifetime.soft_seconds:
            handles.append(loop.call_later(sa.lifetime.soft_seconds, state.expire, False))
        if sa.lifetime.hard_seconds:
            handles.append(loop.call_later(sa.lifetime.hard_seconds, state.expire, True))
        self._timers[sa.id] = handles

    def _uninstall(self, sa_id: SaId) -> SaState | None:
        for h in self._timers.pop(sa_id, []):
            h.cancel()
        state = self._sas.pop(sa_id, None)
        if self._engine is not None:
            self._engine.remove(sa_id)
        return state

    async def delete_sa(self, sa_id: SaId) -> None:
        self._uninstall(sa_id)
        # Only its own reservation: after a migration the SPI belongs to the SA at the new
        # destination (and an outbound SA's SPI is the peer's, not one we reserved).
        if sa_id.dst == self._reserved.get((sa_id.spi, int(sa_id.protocol))):
            self._reserved.pop((sa_id.spi, int(sa_id.protocol)), None)

    async def counters(self, sa_id: SaId) -> SaCounters:
        st = self._sas.get(sa_id)
        if st is None:
            raise DataPlaneError(f"counters: SA {sa_id} is not installed")
        return SaCounters(st.bytes, st.packets, st.replay_dropped, st.integrity_failed, st.last_used)

    def drop_counters(self) -> dict[str, int]:
        """Packets dropped outside any one SA's counters, by reason (userspace-only extra)."""
        engine = self.engine
        drops = {d.name.lower(): engine.drops[d] + engine.drops_out[d] for d in Drop}
        drops["internal_error"] = self._readers.internal_errors if self._readers else 0
        drops["ike_backlog"] = sum(h.dropped for h in self._ike_handoffs)
        return drops

    # -- policies --

    async def ensure_policy(self, policy: Policy) -> None:
        key = (policy.selector, policy.direction)
        old = self._policies.get(key)
        self._policies[key] = policy
        try:
            self._rebuild_spd(policy.direction)
        except ValueError as exc:
            if old is None:
                del self._policies[key]
            else:
                self._policies[key] = old
            raise DataPlaneError(f"policy {policy.selector} {policy.direction.value}: {exc}") from exc
        routes = self._routes
        assert routes is not None
        had, needs = _routed(old), _routed(policy)
        if needs and not had:
            await routes.add(policy.selector.dst, policy.selector.src)
        elif had and not needs:
            await routes.remove(policy.selector.dst)

    async def delete_policy(self, selector: TrafficSelector, direction: Direction) -> None:
        old = self._policies.pop((selector, direction), None)
        if old is None:
            return
        self._rebuild_spd(direction)
        if _routed(old) and self._routes is not None:
            await self._routes.remove(selector.dst)

    def _rebuild_spd(self, changed: Direction) -> None:
        """Recompiles the one SPD (outbound, or inbound with forward) that `changed` policies
        go to: every CHILD_SA installs three policies, and compiling both SPDs for each of them
        stood out in a profile of the responder in bench/ike_handshake.py."""
        engine = self.engine
        pols = self._policies.values()
        if changed is Direction.OUT:
            engine.set_policies(Spd(p for p in pols if p.direction is Direction.OUT), engine.spd_in)
        else:
            engine.set_policies(engine.spd_out, Spd(p for p in pols if p.direction is not Direction.OUT))

    # -- ownership --

    async def list_owned(self) -> OwnedState:
        return OwnedState(sas=tuple(self._sas), policies=tuple(self._policies))

    async def adopt(self) -> OwnedState:
        # In-process, the packet path dies with the agent: a new one holds nothing to adopt. The
        # data-plane daemon (daemon.py) outlives agents; its client adopts what it holds.
        return await self.list_owned()

    def installed(self) -> tuple[list[SecurityAssociation], list[Policy]]:
        """What is installed, for the daemon's `list` (an agent adopting it)."""
        return [st.sa for st in self._sas.values()], list(self._policies.values())

    def release_reservations(self) -> int:
        """Forget SPIs reserved without an SA installed since: an agent that died between
        ALLOCSPI and the install left them, and the next agent cannot know them."""
        installed = {(sa_id.spi, int(sa_id.protocol)) for sa_id in self._sas}
        stale = [key for key in self._reserved if key not in installed]
        for key in stale:
            del self._reserved[key]
        return len(stale)

    async def flush_owned(self) -> None:
        for sa_id in list(self._sas):
            await self.delete_sa(sa_id)
        for selector, direction in list(self._policies):
            await self.delete_policy(selector, direction)
        if self._routes is not None:
            await self._routes.remove_stale()

    # -- events and the shared socket --

    def _emit_threadsafe(self, event: DataPlaneEvent) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(self._emit, event)

    def _emit(self, event: DataPlaneEvent) -> None:
        self._events.put_nowait(event)
        if isinstance(event, SaExpired) and event.hard:
            self._uninstall(event.sa)

    async def events(self) -> AsyncIterator[DataPlaneEvent]:
        while True:
            yield await self._events.get()

    async def bypass_socket(self, sock: socket.socket) -> None:
        # The routing rule (tun.py) sends packets carrying the mark past the TUN table, so IKE to
        # a peer whose address is inside a tunnel's remote selector leaves by the main table.
        mark = self.config.bypass_mark
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
        except OSError as exc:
            raise DataPlaneError(f"IKE socket {sock.getsockname()[:2]}: cannot set SO_MARK {mark:#x} "
                                 f"(the TUN routes' bypass; needs CAP_NET_ADMIN): {exc}") from exc

    def held_encap_socket(self, host: str, port: int) -> socket.socket | None:
        return None  # in-process: the socket dies with the agent

    async def attach_encap_socket(self, sock: socket.socket, ike_receiver: IkeReceiver) -> None:
        if self._output is None or self._readers is None or self._driver is None or self._loop is None:
            raise DataPlaneError("attach_encap_socket: the data plane is not started")
        if sock.type != socket.SOCK_DGRAM:
            raise DataPlaneError("attach_encap_socket: the IKE NAT-T socket must be a UDP socket")
        local = sock.getsockname()[:2]
        self._output.attach_udp(sock)
        threaded = isinstance(self._driver, ThreadDriver)
        deliver = make_ike_delivery(self._loop, ike_receiver, local, threaded=threaded)
        if isinstance(deliver, IkeHandoff):
            self._ike_handoffs.append(deliver)
        self._driver.add(sock.fileno(), self._readers.udp_reader(sock, deliver))


def _routed(policy: Policy | None) -> bool:
    """Outbound PROTECT/BLOCK policies pull their destination into the TUN; BYPASS does not."""
    if policy is None or policy.direction is not Direction.OUT:
        return False
    return policy.action is not PolicyAction.BYPASS
