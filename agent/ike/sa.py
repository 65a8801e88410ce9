"""The IKE SA: a sans-IO state machine (RFC 7296). Datagrams, addresses and `now` go in;
datagrams to send, the next timer deadline and events come out. This object owns what is
common to all exchanges: SPIs, message IDs, the request window of one, retransmission with
exponential back-off, the cached response for duplicate requests, NAT-T ports and keepalives.
Exchange-specific logic lives in the task units under exchanges/."""

from __future__ import annotations

import logging
import struct
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum

from meshsec.agent.ike.address import Address
from meshsec.agent.ike.build import build_message
from meshsec.agent.ike.config import ChildConfig, IkeConfig
from meshsec.agent.ike.constants import (
    IKE_VERSION,
    NATT_PORT,
    ExchangeType,
    HeaderFlag,
    NotifyType,
    PayloadType,
    ProtocolId,
)
from meshsec.agent.ike.crypto import CryptoError, DhFactory, Integ, Prf, SkCipher, default_dh_factory
from meshsec.agent.ike.events import (
    ChildSaDeleted,
    ChildSaRekeyed,
    Event,
    IkeSaDeleted,
    IkeSaFailed,
    IkeSaRekeyed,
    PeerDead,
    PortsChanged,
)
from meshsec.agent.ike.identity import Identity
from meshsec.agent.ike.keys import DirectionKeys, IkeKeys
from meshsec.agent.ike.lifetime import jittered
from meshsec.agent.ike.natt import NATT_KEEPALIVE, add_non_esp_marker
from meshsec.agent.ike.parse import ParseError, parse_chain, parse_header
from meshsec.agent.ike.payloads import (
    EncryptedPayload,
    Header,
    Message,
    NotifyPayload,
    Payload,
)
from meshsec.agent.ike.proposals import Chosen
from meshsec.agent.ike.protect import SkProtection
from meshsec.agent.ike.random import Random, SystemRandom
from meshsec.agent.ike.task import Outcome, Task
from meshsec.agent.ike.ts import Ts

log = logging.getLogger(__name__)

SpiAllocator = Callable[[ProtocolId], int]
HALF_OPEN_TIMEOUT = 30.0  # seconds a responder waits for IKE_AUTH (strongSwan's default)
REKEYED_GRACE = 30.0  # seconds a replaced IKE SA waits for the peer's DELETE before deleting itself


class State(Enum):
    CREATED = "created"
    CONNECTING = "connecting"  # IKE_SA_INIT in progress
    AUTHENTICATING = "authenticating"  # keys derived, IKE_AUTH in progress
    ESTABLISHED = "established"
    DELETING = "deleting"
    CLOSED = "closed"  # terminal: deleted or failed


@dataclass(frozen=True, slots=True)
class OutgoingDatagram:
    """One UDP payload to send. `data` is the IKE message without the non-ESP marker;
    `wire()` adds it when the datagram goes out on the NAT-T port."""

    data: bytes
    local: Address
    remote: Address
    keepalive: bool = False

    @property
    def encapsulated(self) -> bool:
        return self.local.port == NATT_PORT or self.remote.port == NATT_PORT

    def wire(self) -> bytes:
        if self.keepalive or not self.encapsulated:
            return self.data
        return add_non_esp_marker(self.data)


class ChildState(Enum):
    INSTALLED = "installed"
    REKEYING = "rekeying"  # our CREATE_CHILD_SA with REKEY_SA is queued or in flight
    REKEYED = "rekeyed"  # a successor exists; this pair only waits for its DELETE
    DELETING = "deleting"  # our DELETE is queued or in flight


@dataclass(slots=True)
class ChildSa:
    name: str
    config: ChildConfig | None
    protocol: int
    spi_in: int
    spi_out: int
    mode: str
    ts_local: tuple[Ts, ...]
    ts_remote: tuple[Ts, ...]
    keys_in: DirectionKeys
    keys_out: DirectionKeys
    chosen: Chosen
    state: ChildState = ChildState.INSTALLED
    rekey_at: float | None = None  # soft lifetime (jittered)
    expire_at: float | None = None  # hard lifetime
    replaced_by: int | None = None  # spi_in of the successor
    # The successor's outbound SA is not in use yet (we answered the rekey; the initiator's
    # DELETE of this pair tells us it has its new inbound SA).
    outbound_pending: bool = False
    # While we answered the peer's rekey of this CHILD_SA and ours was in flight (RFC 7296
    # 2.8.1): (the peer's new CHILD_SA, the lower nonce of that exchange).
    peer_rekey: tuple[int, bytes] | None = None
    rekey_attempts: int = 0


@dataclass(slots=True)
class _Active:
    task: Task
    message_id: int
    packets: list[bytes]  # more than one when sent as RFC 7383 fragments
    attempt: int
    deadline: float


@dataclass(slots=True)
class _Fragments:
    total: int
    first: int = 0
    parts: dict[int, bytes] = field(default_factory=dict)


MAX_FRAGMENTS = 64  # a peer claiming more is not reassembled (memory bound)


def random_spi_allocator(rnd: Random) -> SpiAllocator:
    """Fallback when no data plane allocates SPIs: random, avoiding the reserved 0..255."""

    def allocate(protocol: ProtocolId) -> int:
        while True:
            spi = int.from_bytes(rnd.bytes(4), "big")
            if spi > 255:
                return spi

    return allocate


class IkeSa:
    def __init__(
        self,
        config: IkeConfig,
        local: Address,
        remote: Address,
        *,
        initiator: bool,
        rnd: Random | None = None,
        dh_factory: DhFactory = default_dh_factory,
        allocate_spi: SpiAllocator | None = None,
        candidates: Sequence[IkeConfig] = (),
    ) -> None:
        self.config = config
        self.candidates: tuple[IkeConfig, ...] = tuple(candidates) or (config,)
        self.local = local
        self.remote = remote
        self.initiator = initiator
        self.rnd: Random = rnd or SystemRandom()
        self.dh_factory = dh_factory
        self.allocate_spi: SpiAllocator = allocate_spi or random_spi_allocator(self.rnd)
        self.state = State.CREATED
        self.spi_i = self.rnd.bytes(8) if initiator else bytes(8)
        self.spi_r = bytes(8) if initiator else self.rnd.bytes(8)
        self.stats: Counter[str] = Counter()
        self.children: dict[int, ChildSa] = {}
        self.remote_identity: Identity | None = None
        self.peer_hashes: frozenset[int] | None = None  # SIGNATURE_HASH_ALGORITHMS (RFC 7427)
        # Set by the IKE_SA_INIT unit; read by IKE_AUTH and CHILD_SA units.
        self.nonce_i = b""
        self.nonce_r = b""
        self.init_request = b""
        self.init_response = b""
        self.chosen: Chosen | None = None
        self.prf: Prf | None = None
        self.cipher: SkCipher | None = None
        self.integ: Integ | None = None
        self.keys: IkeKeys | None = None
        self.protection: SkProtection | None = None
        self.nat_local = False  # we are behind a NAT (we send keepalives)
        self.nat_remote = False  # the peer is behind a NAT (or pretends to be, like libipsec)
        self.created_at: float | None = None
        self._queue: deque[Task] = deque()
        self._active: _Active | None = None
        self._my_mid = 0
        self._peer_mid = 0
        self._cached_request = b""
        self._cached_response: list[bytes] | None = None
        self.frag_peer = False  # both ends announced IKEV2_FRAGMENTATION_SUPPORTED (RFC 7383)
        self._fragments: dict[tuple[bool, int], _Fragments] = {}
        self._reassembled: tuple[Message | None, NotifyPayload | None] | None = None
        self._close_after_response: Event | None = None
        self._out: list[OutgoingDatagram] = []
        self._events: deque[Event] = deque()
        self._last_sent = 0.0
        # Set by a container (IkeSaTable) that wants to know which SAs have output pending
        # without scanning all of them, and to learn of successor SAs made by a rekey.
        self.on_pending: Callable[[IkeSa], None] | None = None
        self.on_new_sa: Callable[[IkeSa], None] | None = None
        # IKE SA lifecycle (rekey, DPD): see exchanges/ike_rekey.py and docs/ike.md.
        self.ike_rekey_at: float | None = None
        self.ike_expire_at: float | None = None
        self.ike_rekey_attempts = 0
        self.ike_rekey_task: Task | None = None  # our IKE rekey request in flight
        self.peer_ike_rekey: tuple[IkeSa, bytes] | None = None  # answered while ours was in flight
        self.successor: IkeSa | None = None
        self.spawned = False  # made by an IKE rekey (not by IKE_SA_INIT)
        self.last_inbound = 0.0  # last authenticated message (or ESP, via traffic_seen)
        self.restarts = 0  # > 0: made by dpd_action restart
        self.reauth_at: float | None = None
        # We set the connection up (initiated its first IKE SA); only this side reauthenticates,
        # else both peers would build a new SA each and keep two.
        self.originator = initiator
        self.reauth_of: IkeSa | None = None  # the SA this one replaces once it is complete
        self._origin = (local, remote)
        self._processing = False

    # ------------------------------------------------------------------ public API

    @property
    def local_spi(self) -> bytes:
        return self.spi_i if self.initiator else self.spi_r

    @property
    def next_request_id(self) -> int:
        """Message ID our next request will carry (exposed for diagnostics and tests)."""
        return self._my_mid

    @property
    def udp_encap(self) -> bool:
        return self.nat_local or self.nat_remote

    @property
    def established(self) -> bool:
        return self.state is State.ESTABLISHED

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    def initiate(self, now: float) -> None:
        """Starts IKE_SA_INIT and IKE_AUTH with the first child; further children follow as
        CREATE_CHILD_SA exchanges."""
        self._guard(self._initiate, now)

    def receive(self, datagram: bytes, local: Address, remote: Address, now: float) -> None:
        """One IKE message (without non-ESP marker). Never raises: bad input is counted in
        `stats` and dropped or answered with the error notify the RFC prescribes."""
        self._guard(self._receive, bytes(datagram), local, remote, now)

    def handle_timer(self, now: float) -> None:
        self._guard(self._handle_timer, now)

    def create_child(self, config: ChildConfig, now: float) -> None:
        from meshsec.agent.ike.exchanges.child_create import ChildCreate

        self._guard(self._enqueue, ChildCreate(config), now)

    def delete_child(self, spi_in: int, now: float) -> None:
        from meshsec.agent.ike.exchanges.informational import ChildDelete

        self._guard(self._enqueue, ChildDelete(spi_in), now)

    def rekey_child(self, spi_in: int, now: float) -> None:
        """Rekeys one CHILD_SA now (its soft lifetime does the same on its own)."""
        self._guard(self._rekey_child, spi_in, now)

    def child_expired(self, spi: int, hard: bool, now: float) -> None:
        """The data plane reports a byte/packet (or time) limit of the pair with inbound or
        outbound SPI `spi`: soft rekeys it, hard deletes it."""
        self._guard(self._child_expired, spi, hard, now)

    def rekeying_ike(self) -> bool:
        return self.ike_rekey_task is not None or self.successor is not None

    def rekey(self, now: float) -> None:
        """Rekeys the IKE SA now (its rekey_time does the same on its own)."""
        from meshsec.agent.ike.exchanges.ike_rekey import IkeRekey

        self.ike_rekey_at = None
        self._guard(self._enqueue, IkeRekey(), now)

    def start_lifetime(self, now: float) -> None:
        """Arms the IKE SA's rekey (jittered) and hard-expiry timers; called when established."""
        cfg = self.config
        self.last_inbound = max(self.last_inbound, now)
        if cfg.reauth_time > 0 and self.originator:
            self.reauth_at = now + jittered(cfg.reauth_time, cfg.reauth_time / 10, self.rnd)
        if cfg.rekey_time <= 0:
            return
        spread = cfg.rand_time if cfg.rand_time is not None else cfg.rekey_time / 10
        self.ike_rekey_at = now + jittered(cfg.rekey_time, spread, self.rnd)
        over = cfg.over_time if cfg.over_time is not None else max(1, cfg.rekey_time // 10)
        self.ike_expire_at = now + cfg.rekey_time + over

    def hand_over(self, new: IkeSa, now: float) -> None:
        """Moves CHILD_SAs and queued requests to the successor SA (RFC 7296 2.8)."""
        if self.successor is not None:
            return
        from meshsec.agent.ike.exchanges.informational import IkeDelete

        self.successor = new
        new.children.update(self.children)
        self.children.clear()
        moved = [t for t in self._queue if not isinstance(t, IkeDelete) and t.name != "ike_rekey"]
        self._queue.clear()
        new._queue.extend(moved)
        self.ike_rekey_at = None
        self.reauth_at = None
        # A peer that never deletes its old SA must not keep it alive for ever.
        self.ike_expire_at = now + REKEYED_GRACE
        self.emit(IkeSaRekeyed(new.spi_i, new.spi_r, new.local_spi))
        new._kick(now)

    def child_exchange_in_flight(self) -> bool:
        """Our CREATE_CHILD_SA (not an IKE rekey) is under way, or a CHILD_SA is mid-rekey."""
        a = self._active
        if a is not None and a.task.exchange is ExchangeType.CREATE_CHILD_SA and a.task.name != "ike_rekey":
            return True
        return any(c.state is ChildState.REKEYING for c in self.children.values())

    def check_liveness(self, now: float) -> None:
        from meshsec.agent.ike.exchanges.informational import Liveness

        self._guard(self._enqueue, Liveness(), now)

    def delete(self, now: float) -> None:
        """Deletes the IKE SA (and with it every CHILD_SA) with an INFORMATIONAL exchange."""
        self._guard(self._delete, now)

    def datagrams_to_send(self) -> list[OutgoingDatagram]:
        out, self._out = self._out, []
        return out

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def next_timer(self) -> float | None:
        if self.state is State.CLOSED:
            return None
        deadlines: list[float] = []
        if self._active is not None:
            deadlines.append(self._active.deadline)
        if self.state is State.ESTABLISHED and self.nat_local and self.config.natt_keepalive > 0:
            deadlines.append(self._last_sent + self.config.natt_keepalive)
        if self._half_open() and self.created_at is not None:
            deadlines.append(self.created_at + HALF_OPEN_TIMEOUT)
        if self.state is State.ESTABLISHED:
            for at in (self.ike_rekey_at, self.ike_expire_at, self._dpd_due(), self.reauth_at):
                if at is not None:
                    deadlines.append(at)
            for c in self.children.values():
                if c.rekey_at is not None and c.state is ChildState.INSTALLED:
                    deadlines.append(c.rekey_at)
                if c.expire_at is not None and c.state is not ChildState.DELETING:
                    deadlines.append(c.expire_at)
        return min(deadlines) if deadlines else None

    # ------------------------------------------------------------------ helpers for task units

    def emit(self, event: Event) -> None:
        self._events.append(event)
        if self.on_pending is not None:
            self.on_pending(self)

    def queue(self, task: Task) -> None:
        self._queue.append(task)

    def fail(self, reason: str) -> None:
        if self.state is State.CLOSED:
            return
        log.info("IKE SA %s failed: %s", self.local_spi.hex(), reason)
        self._close(IkeSaFailed(reason))

    def notify_and_fail(self, ntype: NotifyType, reason: str, now: float) -> None:
        """An error found in the peer's answer: one INFORMATIONAL request carrying the notify
        (not retransmitted: the SA is gone either way), then the SA fails (RFC 7296 2.21.2)."""
        if self.protection is not None and self.state is not State.CLOSED:
            flags = HeaderFlag.INITIATOR if self.initiator else 0
            mid = self._my_mid + (1 if self._processing else 0)
            header = Header(self.spi_i, self.spi_r, 0, ExchangeType.INFORMATIONAL, flags, mid, 0, IKE_VERSION)
            self._emit_datagram(self._encode(header, [NotifyPayload(ntype)]), now)
        self.fail(reason)

    def close_deleted(self, by_peer: bool) -> None:
        self._close(IkeSaDeleted(by_peer))

    def close_after_response(self, event: Event) -> None:
        self._close_after_response = event

    def install_protection(self) -> None:
        assert self.cipher is not None and self.keys is not None
        self.protection = SkProtection(self.cipher, self.integ, self.keys, self.initiator)

    def float_ports(self) -> None:
        """NAT detected: move IKE to UDP 4500 (RFC 7296 2.23); the initiator switches first."""
        if self.local.port == NATT_PORT and self.remote.port == NATT_PORT:
            return
        self.local = self.local.with_port(NATT_PORT)
        self.remote = self.remote.with_port(NATT_PORT)
        self.emit(PortsChanged(self.local.port, self.remote.port))

    def find_child(self, spi_in: int) -> tuple[IkeSa, ChildSa] | None:
        """The CHILD_SA with inbound SPI `spi_in` here or, after an IKE rekey, in a successor."""
        sa: IkeSa | None = self
        while sa is not None:
            child = sa.children.get(spi_in)
            if child is not None:
                return sa, child
            sa = sa.successor
        return None

    def find_child_by_out(self, protocol: int, spi_out: int) -> ChildSa | None:
        return next(
            (c for c in self.children.values() if c.protocol == protocol and c.spi_out == spi_out), None
        )

    def remove_child(self, child: ChildSa, by_peer: bool) -> None:
        if self.children.pop(child.spi_in, None) is None:
            return
        successor = self.children.get(child.replaced_by) if child.replaced_by is not None else None
        if successor is not None and successor.outbound_pending:
            # The rekey initiator deleted the old pair (or it expired): it has its new inbound
            # SA, so our outbound traffic may move over (make-before-break).
            successor.outbound_pending = False
            self.emit(ChildSaRekeyed(child.name, child.spi_in, successor.spi_in, child.protocol))
        self.emit(ChildSaDeleted(child.name, child.spi_in, child.spi_out, child.protocol, by_peer))

    # ------------------------------------------------------------------ internals

    def _guard(self, fn: Callable[..., None], *args: object) -> None:
        try:
            fn(*args)
        except Exception:  # the engine's contract: nothing escapes its public entry points
            self.stats["internal_error"] += 1
            log.exception("IKE SA %s: internal error", self.local_spi.hex())

    def _half_open(self) -> bool:
        """A responder SA that has answered IKE_SA_INIT but not yet authenticated its peer."""
        return not self.initiator and self.remote_identity is None and self.created_at is not None

    def _initiate(self, now: float) -> None:
        from meshsec.agent.ike.exchanges.child_create import ChildCreate
        from meshsec.agent.ike.exchanges.ike_auth import IkeAuth
        from meshsec.agent.ike.exchanges.ike_init import IkeInit

        if not self.initiator or self.state is not State.CREATED:
            self.stats["initiate_ignored"] += 1
            return
        self.state = State.CONNECTING
        self.created_at = now
        children = self.config.children
        # Requests queued before initiate() (liveness, extra children) run once established.
        first: list[Task] = [IkeInit(), IkeAuth(children[0] if children else None)]
        first += [ChildCreate(child) for child in children[1:]]
        self._queue.extendleft(reversed(first))
        self._kick(now)

    def _enqueue(self, task: Task, now: float) -> None:
        if self.state in (State.CLOSED, State.DELETING):
            self.stats["task_on_closed_sa"] += 1
            return
        self.queue(task)
        self._kick(now)

    def _delete(self, now: float) -> None:
        from meshsec.agent.ike.exchanges.informational import IkeDelete

        if self.state is State.CLOSED:
            return
        if self.state is not State.ESTABLISHED:
            # Nothing authenticated to tear down yet; just forget the half-made SA.
            self.close_deleted(by_peer=False)
            return
        self._queue.clear()
        self.state = State.DELETING
        self.queue(IkeDelete())
        if self._active is None:
            self._kick(now)

    def _close(self, event: Event) -> None:
        for child in list(self.children.values()):
            self.remove_child(child, by_peer=isinstance(event, IkeSaDeleted) and event.by_peer)
        self.state = State.CLOSED
        self._queue.clear()
        self._active = None
        self.emit(event)

    def _kick(self, now: float) -> None:
        if self._processing:
            return
        if (
            self.reauth_of is not None
            and self.state is State.ESTABLISHED
            and self._active is None
            and not self._queue
        ):
            self._setup_done(now)
        while self._active is None and self._queue and self.state is not State.CLOSED:
            task = self._queue[0]
            needs_keys = task.exchange is not ExchangeType.IKE_SA_INIT
            if needs_keys and self.protection is None:
                return
            if task.exchange not in (ExchangeType.IKE_SA_INIT, ExchangeType.IKE_AUTH) and self.state not in (
                State.ESTABLISHED,
                State.DELETING,
            ):
                return
            self._queue.popleft()
            self._send_request(task, now)

    def _send_request(self, task: Task, now: float) -> None:
        payloads = task.build(self, now)
        if payloads is None or self.state is State.CLOSED:
            return
        flags = HeaderFlag.INITIATOR if self.initiator else 0
        header = Header(self.spi_i, self.spi_r, 0, task.exchange, flags, self._my_mid, 0, IKE_VERSION)
        packets = self._encode_all(header, payloads)
        if task.exchange is ExchangeType.IKE_SA_INIT:
            self.init_request = packets[0]
        self._active = _Active(task, self._my_mid, packets, 0, now + self.config.retransmit.delay(0))
        for data in packets:
            self._emit_datagram(data, now)

    def _encode_all(self, header: Header, payloads: list[Payload]) -> list[bytes]:
        """One datagram, or RFC 7383 fragments when it would exceed fragment_size and both
        ends support them (never for IKE_SA_INIT)."""
        data = self._encode(header, payloads)
        if not self.frag_peer or len(data) <= self.config.fragment_size or self.protection is None:
            return [data]
        self.stats["messages_fragmented"] += 1
        return self.protection.seal_fragments(header, payloads, self.rnd, self.config.fragment_size)

    def _encode(self, header: Header, payloads: list[Payload]) -> bytes:
        if header.exchange == ExchangeType.IKE_SA_INIT:
            return build_message(header, payloads)
        assert self.protection is not None
        return self.protection.seal(header, payloads, self.rnd)

    def _emit_datagram(self, data: bytes, now: float, keepalive: bool = False) -> None:
        self._out.append(OutgoingDatagram(data, self.local, self.remote, keepalive))
        self._last_sent = now
        if self.on_pending is not None:
            self.on_pending(self)

    def _handle_timer(self, now: float) -> None:
        if self.state is State.CLOSED:
            return
        if self._half_open() and now >= self.created_at + HALF_OPEN_TIMEOUT:  # type: ignore[operator]
            self.fail("half-open IKE SA timed out waiting for IKE_AUTH")
            return
        a = self._active
        if a is not None and now >= a.deadline:
            rt = self.config.retransmit
            if a.attempt >= rt.tries:
                self._active = None
                self.stats["retransmit_limit"] += 1
                # The peer stayed silent for the whole retransmit schedule: dead (RFC 7296 2.4).
                dead = a.task.name != "ike_delete" and (self.state is State.ESTABLISHED or self.restarts > 0)
                if dead:
                    self.emit(PeerDead(self.config.dpd_action))
                a.task.on_timeout(self)
                if not self.closed:
                    self._my_mid += 1
                    self._kick(now)
                elif dead and self.config.dpd_action == "restart":
                    self._restart(now)
            else:
                a.attempt += 1
                a.deadline = now + rt.delay(a.attempt)
                self.stats["retransmits"] += 1
                for data in a.packets:
                    self._emit_datagram(data, now)
        if self.state is State.ESTABLISHED:
            self._ike_timers(now)
            self._dpd_timer(now)
        if self.state is State.ESTABLISHED:
            self._child_timers(now)
        if (
            self.state is State.ESTABLISHED
            and self.nat_local
            and self.config.natt_keepalive > 0
            and now >= self._last_sent + self.config.natt_keepalive
        ):
            self._emit_datagram(NATT_KEEPALIVE, now, keepalive=True)

    def _ike_timers(self, now: float) -> None:
        if self.ike_expire_at is not None and now >= self.ike_expire_at:
            self.ike_expire_at = None
            log.info("IKE SA %s: lifetime over (rekey never succeeded, or replaced); deleting",
                     self.local_spi.hex())  # fmt: skip
            self._delete(now)
            return
        if self.ike_rekey_at is not None and now >= self.ike_rekey_at and self.successor is None:
            self.rekey(now)
        if self.reauth_at is not None and now >= self.reauth_at and self.successor is None:
            self.reauth_at = None
            self.reauthenticate(now)

    def _dpd_due(self) -> float | None:
        if self.config.dpd_delay <= 0 or self.state is not State.ESTABLISHED or self.successor is not None:
            return None
        if self._active is not None or self._queue:
            return None  # a request is under way: its retransmissions test liveness already
        return self.last_inbound + self.config.dpd_delay

    def _dpd_timer(self, now: float) -> None:
        from meshsec.agent.ike.exchanges.informational import Liveness

        due = self._dpd_due()
        if due is not None and now >= due:
            self.stats["dpd_probes"] += 1
            self._enqueue(Liveness(dpd=True), now)

    def _restart(self, now: float) -> None:
        """dpd_action restart: a fresh IKE SA (and its CHILD_SAs) with the same config towards
        the peer's original address; it keeps restarting while the peer stays away."""
        self._spawn_fresh(now, False)

    def reauthenticate(self, now: float) -> None:
        """Make-before-break reauthentication: a new IKE SA (IKE_SA_INIT, IKE_AUTH with fresh
        authentication, all CHILD_SAs) towards the same peer; this SA is deleted once the new
        one has finished its setup exchanges."""
        self._guard(self._spawn_fresh, now, True)

    def _spawn_fresh(self, now: float, reauth: bool) -> None:
        if self.on_new_sa is None or (reauth and self.state is State.CLOSED):
            return
        local, remote = self._origin
        new = IkeSa(
            self.config, local, remote, initiator=True, rnd=self.rnd, dh_factory=self.dh_factory,
            allocate_spi=self.allocate_spi, candidates=self.candidates,
        )  # fmt: skip
        new.on_pending = self.on_pending
        if reauth:
            new.reauth_of = self
            self.stats["reauthenticated"] += 1
            log.info("IKE SA %s: reauthenticating connection %s", self.local_spi.hex(), self.config.name)
        else:
            new.restarts = self.restarts + 1
            self.stats["restarted"] += 1
            log.info("IKE SA %s: restarting connection %s (attempt %d)", self.local_spi.hex(),
                     self.config.name, new.restarts)  # fmt: skip
        self.on_new_sa(new)
        new.initiate(now)

    def _setup_done(self, now: float) -> None:
        """A reauthenticating SA finished IKE_AUTH and its CREATE_CHILD_SAs: the old SA goes."""
        old, self.reauth_of = self.reauth_of, None
        if old is not None and not old.closed:
            log.info("IKE SA %s: reauthenticated as %s; deleting the old SA", old.local_spi.hex(),
                     self.local_spi.hex())  # fmt: skip
            old.delete(now)

    def traffic_seen(self, now: float) -> None:
        """Inbound ESP arrived for one of our CHILD_SAs (fed by the adapter from data-plane
        counters): proof of life that postpones DPD like an IKE message does."""
        self.last_inbound = max(self.last_inbound, now)
        if self.on_pending is not None:
            self.on_pending(self)

    def _child_timers(self, now: float) -> None:
        for c in list(self.children.values()):
            if c.expire_at is not None and now >= c.expire_at and c.state is not ChildState.DELETING:
                log.info("CHILD_SA %s %08x: hard lifetime reached, deleting", c.name, c.spi_in)
                self._delete_child_now(c, now)
            elif c.rekey_at is not None and now >= c.rekey_at and c.state is ChildState.INSTALLED:
                self._rekey_child(c.spi_in, now)

    def _rekey_child(self, spi_in: int, now: float) -> None:
        from meshsec.agent.ike.exchanges.child_rekey import ChildRekey, rekey_config

        c = self.children.get(spi_in)
        if c is None or c.state is not ChildState.INSTALLED or c.config is None:
            self.stats["rekey_not_possible"] += 1
            return
        c.rekey_at = None  # the task owns the retry schedule from here
        self._enqueue(ChildRekey(spi_in, rekey_config(c)), now)

    def _delete_child_now(self, c: ChildSa, now: float) -> None:
        from meshsec.agent.ike.exchanges.informational import ChildDelete

        c.state = ChildState.DELETING
        self._enqueue(ChildDelete(c.spi_in), now)

    def _child_expired(self, spi: int, hard: bool, now: float) -> None:
        c = self.children.get(spi) or next((x for x in self.children.values() if x.spi_out == spi), None)
        if c is None:
            self.stats["expire_unknown_child"] += 1
            return
        if hard and c.state is not ChildState.DELETING:
            self._delete_child_now(c, now)
        elif not hard and c.state is ChildState.INSTALLED:
            self._rekey_child(c.spi_in, now)

    def _receive(self, datagram: bytes, local: Address, remote: Address, now: float) -> None:
        if self.state is State.CLOSED:
            self.stats["dropped_closed"] += 1
            return
        try:
            header = parse_header(datagram)
        except ParseError:
            self.stats["dropped_malformed_header"] += 1
            return
        if header.exchange not in ExchangeType._value2member_map_:
            self.stats["dropped_unknown_exchange"] += 1
            return
        if header.is_initiator == self.initiator:
            self.stats["dropped_wrong_role"] += 1
            return
        fragment = header.next_payload == PayloadType.SKF and header.exchange != ExchangeType.IKE_SA_INIT
        if fragment and not self._reassemble(datagram, header, now):
            return
        try:
            if header.is_response:
                self._on_response(datagram, header, local, remote, now)
            else:
                self._on_request(datagram, header, local, remote, now)
        finally:
            self._reassembled = None  # unused if the message was dropped for another reason
            if self._fragments:
                self._drop_stale_fragments()

    def _check_spis(self, header: Header, is_init: bool) -> bool:
        if self.spi_i != bytes(8) and header.spi_i != self.spi_i:
            return False
        if is_init:
            # Requests carry a zero SPIr; responses to IKE_SA_INIT teach it to the initiator.
            return True
        return header.spi_r == self.spi_r

    def _on_request(
        self, datagram: bytes, header: Header, local: Address, remote: Address, now: float
    ) -> None:
        is_init = header.exchange == ExchangeType.IKE_SA_INIT
        if not self._check_spis(header, is_init) or (
            is_init and (header.spi_r != bytes(8) or self.initiator)
        ):
            self.stats["dropped_bad_spi"] += 1
            return
        mid = header.message_id
        if self._cached_response is not None and mid == self._peer_mid - 1:
            if datagram == self._cached_request:
                self.stats["duplicate_request_answered"] += 1
                for data in self._cached_response:
                    self._emit_datagram(data, now)
            else:
                self.stats["dropped_old_request"] += 1
            return
        if mid != self._peer_mid:
            self.stats["dropped_bad_message_id"] += 1
            return
        if is_init and self.state is not State.CREATED:
            self.stats["dropped_unexpected_init"] += 1
            return
        if header.exchange == ExchangeType.IKE_AUTH and self.initiator:
            self.stats["dropped_unexpected_request"] += 1
            return
        if header.exchange in (
            ExchangeType.CREATE_CHILD_SA,
            ExchangeType.INFORMATIONAL,
        ) and self.state not in (
            State.ESTABLISHED,
            State.DELETING,
        ):
            # Nothing but IKE_AUTH may follow IKE_SA_INIT (RFC 7296 1.2).
            self.stats["dropped_unexpected_request"] += 1
            return
        msg, error = self._decode(datagram, header)
        if msg is None and error is None:
            return
        if is_init and self.created_at is None:
            self.created_at = now
            self.spi_i = header.spi_i
        if msg is not None:
            self.last_inbound = now
        handler = _RESPONDERS.get(ExchangeType(header.exchange))
        payloads: list[Payload]
        if error is not None:
            payloads = [error]
            if is_init:
                self.close_after_response(
                    IkeSaFailed(f"IKE_SA_INIT rejected: {NotifyType(error.notify_type).name}")
                )
        elif msg is not None and handler is not None:
            if not is_init:
                self._update_addresses(local, remote)
            else:
                self.init_request = datagram
                self.local, self.remote = local, remote
            payloads = handler(self, msg, now)
        else:
            return
        self._send_response(header, payloads, datagram, now)

    def _decode(self, datagram: bytes, header: Header) -> tuple[Message | None, NotifyPayload | None]:
        """Parses (and for encrypted exchanges verifies and decrypts) a message. Returns the
        message, or a notify to answer with, or (None, None) for a silent drop."""
        from meshsec.agent.ike.constants import IKE_HEADER_LEN

        if self._reassembled is not None:
            decoded, self._reassembled = self._reassembled, None
            return decoded
        try:
            payloads = parse_chain(header.next_payload, memoryview(datagram)[IKE_HEADER_LEN:])
        except ParseError as exc:
            self.stats["dropped_malformed"] += 1
            if header.is_response or header.exchange != ExchangeType.IKE_SA_INIT:
                return None, None
            if exc.notify == NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD:
                return None, NotifyPayload(exc.notify, exc.data)
            return None, None
        msg = Message(header, payloads)
        if header.exchange == ExchangeType.IKE_SA_INIT:
            return msg, None
        sk = payloads[-1] if payloads else None
        if not isinstance(sk, EncryptedPayload) or self.protection is None:
            self.stats["dropped_unprotected"] += 1
            return None, None
        try:
            inner = self.protection.open(datagram, sk)
        except CryptoError:
            self.stats["dropped_integrity"] += 1
            return None, None
        except ParseError as exc:
            # Authenticated but malformed: a request gets the error notify (RFC 7296 2.21.3).
            self.stats["malformed_protected"] += 1
            if header.is_response:
                return None, None
            return None, NotifyPayload(exc.notify, exc.data)
        msg.payloads = payloads[:-1] + inner
        return msg, None

    def _send_response(self, req: Header, payloads: list[Payload], raw_request: bytes, now: float) -> None:
        header = Header(
            self.spi_i,
            self.spi_r,
            0,
            req.exchange,
            HeaderFlag.RESPONSE | (HeaderFlag.INITIATOR if self.initiator else 0),
            req.message_id,
            0,
            IKE_VERSION,
        )
        is_init = req.exchange == ExchangeType.IKE_SA_INIT
        if is_init and self._close_after_response is not None:
            # Error answers to IKE_SA_INIT carry no responder SPI: we keep no state for them.
            header = Header(
                self.spi_i, bytes(8), 0, req.exchange, HeaderFlag.RESPONSE, req.message_id, 0, IKE_VERSION
            )
        packets = self._encode_all(header, payloads)
        if is_init:
            self.init_response = packets[0]
        self._cached_request = raw_request
        self._cached_response = packets
        self._peer_mid = req.message_id + 1
        for data in packets:
            self._emit_datagram(data, now)
        if self._close_after_response is not None:
            event, self._close_after_response = self._close_after_response, None
            self._close(event)
        else:
            self._kick(now)

    def _on_response(
        self, datagram: bytes, header: Header, local: Address, remote: Address, now: float
    ) -> None:
        a = self._active
        if a is None or header.message_id != a.message_id or header.exchange != a.task.exchange:
            self.stats["dropped_unexpected_response"] += 1
            return
        is_init = header.exchange == ExchangeType.IKE_SA_INIT
        if not self._check_spis(header, is_init):
            self.stats["dropped_bad_spi"] += 1
            return
        msg, _ = self._decode(datagram, header)
        if msg is None:
            return
        if not is_init:
            self._update_addresses(local, remote)
        self.last_inbound = now
        self._active = None
        # While a task handles its response, requests it queues wait for the message ID to
        # advance (below), so they never reuse the finished exchange's ID.
        self._processing = True
        try:
            outcome = a.task.process(self, msg, datagram, now)
        finally:
            self._processing = False
        if self.state is State.CLOSED:
            return
        if outcome is Outcome.RETRY:
            self._send_request(a.task, now)
            return
        self._my_mid += 1
        if outcome is Outcome.REQUEUE:
            self._queue.appendleft(a.task)
        self._kick(now)

    def _reassemble(self, datagram: bytes, header: Header, now: float) -> bool:
        """Collects RFC 7383 fragments; True when `datagram` completed a message, which
        _decode then hands out. Each fragment is authenticated before it is kept."""
        mid, is_response = header.message_id, header.is_response
        if self.protection is None or not self._check_spis(header, False):
            self.stats["dropped_fragment"] += 1
            return False
        if not is_response and mid == self._peer_mid - 1 and self._cached_response is not None:
            # A retransmitted request: answer once per retransmission, on its first fragment.
            try:
                number, *_ = self.protection.open_fragment(datagram)
            except CryptoError:
                self.stats["dropped_integrity"] += 1
                return False
            if number == 1:
                self.stats["duplicate_request_answered"] += 1
                for data in self._cached_response:
                    self._emit_datagram(data, now)
            return False
        a = self._active
        expected = a is not None and mid == a.message_id if is_response else mid == self._peer_mid
        if not expected:
            self.stats["dropped_bad_message_id"] += 1
            return False
        try:
            number, total, first, chunk = self.protection.open_fragment(datagram)
        except CryptoError:
            self.stats["dropped_integrity"] += 1
            return False
        if total > MAX_FRAGMENTS:
            self.stats["dropped_fragment"] += 1
            return False
        key = (is_response, mid)
        buf = self._fragments.get(key)
        if buf is None or buf.total != total:
            buf = self._fragments[key] = _Fragments(total)  # a resend may be cut differently
        if number == 1:
            buf.first = first
        buf.parts[number] = chunk
        self.stats["fragments_received"] += 1
        if len(buf.parts) < total:
            return False
        del self._fragments[key]
        plaintext = b"".join(buf.parts[n] for n in range(1, total + 1))
        try:
            payloads = parse_chain(buf.first, memoryview(plaintext))
        except ParseError as exc:
            self.stats["malformed_protected"] += 1
            self._reassembled = (None, None if is_response else NotifyPayload(exc.notify, exc.data))
            return not is_response
        self._reassembled = (Message(header, payloads), None)
        return True

    def _drop_stale_fragments(self) -> None:
        """Partial messages whose ID is no longer the one expected (it was received whole, or
        our request gave up) can never complete; without this a peer could pile them up."""
        a = self._active
        for is_response, mid in list(self._fragments):
            expected = a is not None and mid == a.message_id if is_response else mid == self._peer_mid
            if not expected:
                del self._fragments[(is_response, mid)]

    def _update_addresses(self, local: Address, remote: Address) -> None:
        """Authenticated traffic from a new address/port (NAT mapping or float to 4500)."""
        if local != self.local or remote != self.remote:
            self.local, self.remote = local, remote
            self.stats["address_updates"] += 1


def notify(ntype: NotifyType, data: bytes = b"") -> NotifyPayload:
    return NotifyPayload(ntype, data)


def group_data(group: int) -> bytes:
    return struct.pack("!H", group)


ResponderFn = Callable[[IkeSa, Message, float], list[Payload]]


def _responders() -> dict[ExchangeType, ResponderFn]:
    from meshsec.agent.ike.exchanges.child_create import respond_create_child
    from meshsec.agent.ike.exchanges.ike_auth import respond_ike_auth
    from meshsec.agent.ike.exchanges.ike_init import respond_ike_init
    from meshsec.agent.ike.exchanges.informational import respond_informational

    return {
        ExchangeType.IKE_SA_INIT: respond_ike_init,
        ExchangeType.IKE_AUTH: respond_ike_auth,
        ExchangeType.CREATE_CHILD_SA: respond_create_child,
        ExchangeType.INFORMATIONAL: respond_informational,
    }


class _LazyResponders(dict[ExchangeType, ResponderFn]):
    """Exchange units import this module, so the table is filled on first use."""

    def get(self, key: ExchangeType, default: ResponderFn | None = None) -> ResponderFn | None:  # type: ignore[override]
        if not self:
            self.update(_responders())
        return super().get(key, default)


_RESPONDERS = _LazyResponders()
