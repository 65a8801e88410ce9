"""The IKE SA: a sans-IO state machine (RFC 7296). Datagrams, addresses and `now` go in;
datagrams to send, the next timer deadline and events come out.

This object holds what the exchanges share: SPIs, keys, identities, NAT-T state, the CHILD_SAs
and the IKE SA's own lifetimes (rekey, reauthentication, DPD, expiry, restart). Message IDs,
the window, retransmission, the response cache and reassembly belong to its TaskManager
(`tasks`); each exchange lives in a task under exchanges/, its per-feature parts under features/.

Fail closed: an unexpected exception at any entry point fails this SA (IkeSaFailed with
FailureReason.INTERNAL_ERROR, every CHILD_SA reported deleted, one log line with the traceback,
stats["internal_error"]) instead of leaving it half changed; in strict mode (strict.py) it is
re-raised."""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from meshsec.agent.ike import cp, strict
from meshsec.agent.ike.address import Address
from meshsec.agent.ike.child import ChildSa as ChildSa
from meshsec.agent.ike.config import ChildConfig, IkeConfig
from meshsec.agent.ike.constants import NATT_PORT, NotifyType, ProtocolId
from meshsec.agent.ike.crypto import DhFactory, Integ, Prf, SkCipher, default_dh_factory
from meshsec.agent.ike.events import (
    AddressUpdateFailed,
    ChildSaDeleted,
    ChildSaRekeyed,
    Event,
    IkeSaDeleted,
    IkeSaFailed,
    IkeSaRekeyed,
    PeerDead,
    PortsChanged,
)
from meshsec.agent.ike.exchanges.child_create import ChildCreate
from meshsec.agent.ike.exchanges.child_rekey import ChildRekey, rekey_config
from meshsec.agent.ike.exchanges.child_replace import ChildReplace
from meshsec.agent.ike.exchanges.eap_auth import EapAuthentication
from meshsec.agent.ike.exchanges.ike_auth import IkeAuth
from meshsec.agent.ike.exchanges.ike_followup import IkeFollowupKe, PeerFollowup, drop_followup
from meshsec.agent.ike.exchanges.ike_init import IkeInit
from meshsec.agent.ike.exchanges.ike_rekey import IkeRekey
from meshsec.agent.ike.exchanges.informational import ChildDelete, IkeDelete, Liveness
from meshsec.agent.ike.exchanges.mobike import AddressListUpdate, UpdateSaAddresses
from meshsec.agent.ike.failures import FailureReason
from meshsec.agent.ike.identity import Identity
from meshsec.agent.ike.intermediate import AdditionalExchanges
from meshsec.agent.ike.keys import IkeKeys
from meshsec.agent.ike.natt import NATT_KEEPALIVE, add_non_esp_marker
from meshsec.agent.ike.parse import ParseError, parse_header
from meshsec.agent.ike.payloads import Header, NotifyPayload
from meshsec.agent.ike.proposals import Chosen
from meshsec.agent.ike.protect import SkProtection
from meshsec.agent.ike.random import Random, SystemRandom
from meshsec.agent.ike.sa_lifetime import IkeLifetime
from meshsec.agent.ike.states import EXCHANGE_RULES, IKE_TRANSITIONS, ChildState, State, check
from meshsec.agent.ike.task import Task
from meshsec.agent.ike.task_manager import TaskManager
from meshsec.agent.ike.virtual_ip import VirtualAddress
from meshsec.common.errorlog import ExceptionLog

__all__ = [
    "ChildSa",
    "ChildState",
    "IkeSa",
    "OutgoingDatagram",
    "SpiAllocator",
    "State",
    "random_spi_allocator",
]

log = logging.getLogger(__name__)
# One traceback per distinct bug and minute for all SAs: a bug any peer can trigger must not
# flood the log.
ERRORS = ExceptionLog(log)

SpiAllocator = Callable[[ProtocolId], int]
HALF_OPEN_TIMEOUT = 30.0  # seconds a responder waits for IKE_AUTH (strongSwan's default)


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
        self._state = State.CREATED
        self.spi_i = self.rnd.bytes(8) if initiator else bytes(8)
        self.spi_r = bytes(8) if initiator else self.rnd.bytes(8)
        self.stats: Counter[str] = Counter()
        self.children: dict[int, ChildSa] = {}
        self.tasks = TaskManager(self)
        self.remote_identity: Identity | None = None
        # Road warriors (features/config_payload.py): the client's virtual addresses (on the
        # gateway: what the pool assigned; on the client: what the CFG_REPLY gave us).
        self.virtual_addresses: tuple[VirtualAddress, ...] = ()
        self.peer_serial: str | None = None  # the peer's certificate (hex), once it verified
        self.peer_common_name: str | None = None  # and its subject CN
        # A certificate that verified (chain and AUTH) but is on the revocation list: the serial
        # this IKE SA was refused for, so the gateway can tell whose revoked device came back.
        self.revoked_serial: str | None = None
        self.cfg_reply: cp.Reply | None = None
        # Responder, IKE_AUTH: a feature found the IKE SA may stand but its CHILD_SA may not
        # (RFC 7296 2.21.2); this notify answers in place of the CHILD_SA.
        self.refuse_first_child: NotifyType | None = None
        self.peer_hashes: frozenset[int] | None = None  # SIGNATURE_HASH_ALGORITHMS (RFC 7427)
        # Set by the IKE_SA_INIT features; read by IKE_AUTH and CHILD_SA tasks.
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
        # RFC 9370 additional key exchanges of this SA's IKE_INTERMEDIATE exchanges, if any;
        # the responder re-keys after sealing each answer (after_response) and keeps the keys
        # before that to recognise a retransmitted fragmented request (previous_protection).
        self.additional: AdditionalExchanges | None = None
        self.after_response: Callable[[], None] | None = None
        self.previous_protection: SkProtection | None = None
        self.followup: PeerFollowup | None = None  # the peer's CREATE_CHILD_SA awaiting IKE_FOLLOWUP_KE
        self.nat_local = False  # we are behind a NAT (we send keepalives)
        self.nat_remote = False  # the peer is behind a NAT (or pretends to be, like libipsec)
        self.frag_peer = False  # both ends announced IKEV2_FRAGMENTATION_SUPPORTED (RFC 7383)
        self.mobike = False  # both ends announced MOBIKE_SUPPORTED (RFC 4555)
        self.peer_additional: tuple[str, ...] = ()  # the peer's ADDITIONAL_IP4/6_ADDRESSes
        # The gateway's EAP conversation between IKE_AUTH round trips (exchanges/eap_auth.py).
        self.eap: EapAuthentication | None = None
        # The identity the peer proved with EAP (remote_identity stays its IDi): what a gateway
        # names the client by (leases, logs). Set before the IKE_AUTH features run.
        self.eap_identity: str | None = None
        self.created_at: float | None = None
        self._close_after_response: Event | None = None
        self._out: list[OutgoingDatagram] = []
        self._events: deque[Event] = deque()
        self._last_sent = 0.0
        # Set by a container (IkeSaTable) that wants to know which SAs have output pending
        # without scanning all of them, and to learn of successor SAs made by a rekey.
        self.on_pending: Callable[[IkeSa], None] | None = None
        self.on_new_sa: Callable[[IkeSa], None] | None = None
        # IKE SA lifecycle (rekey, DPD, reauthentication): sa_lifetime.py, docs/ike.md.
        self.lifetime = IkeLifetime(self)
        self.ike_rekey_task: Task | None = None  # our IKE rekey request in flight
        self.peer_ike_rekey: tuple[IkeSa, bytes] | None = None  # answered while ours was in flight
        self.successor: IkeSa | None = None
        self.spawned = False  # made by an IKE rekey (not by IKE_SA_INIT)
        self.last_inbound = 0.0  # last authenticated message (or ESP, via traffic_seen)
        self.restarts = 0  # > 0: made by dpd_action restart
        # We set the connection up (initiated its first IKE SA); only this side reauthenticates,
        # else both peers would build a new SA each and keep two.
        self.originator = initiator
        self.reauth_of: IkeSa | None = None  # the SA this one replaces once it is complete
        self._origin = (local, remote)

    # ------------------------------------------------------------------ state

    @property
    def state(self) -> State:
        return self._state

    def move_to(self, new: State) -> None:
        """The one way to change state: refuses edges states.py does not declare."""
        check(IKE_TRANSITIONS, self._state, new, f"IKE SA {self.local_spi.hex()}")
        self._state = new

    # ------------------------------------------------------------------ public API

    @property
    def local_spi(self) -> bytes:
        return self.spi_i if self.initiator else self.spi_r

    @property
    def next_request_id(self) -> int:
        """Message ID our next request will carry (exposed for diagnostics and tests)."""
        return self.tasks.next_request_id

    @property
    def udp_encap(self) -> bool:
        return self.nat_local or self.nat_remote

    @property
    def established(self) -> bool:
        return self._state is State.ESTABLISHED

    @property
    def closed(self) -> bool:
        return self._state is State.CLOSED

    def initiate(self, now: float) -> None:
        """Starts IKE_SA_INIT and IKE_AUTH with the first child; further children follow as
        CREATE_CHILD_SA exchanges."""
        self._guard(now, self._initiate, now)

    def receive(self, datagram: bytes, local: Address, remote: Address, now: float) -> None:
        """One IKE message (without non-ESP marker). Never raises (outside strict mode): bad
        input is counted in `stats` and dropped or answered with the error notify the RFC
        prescribes."""
        self._guard(now, self._receive, bytes(datagram), local, remote, now)

    def handle_timer(self, now: float) -> None:
        self._guard(now, self._handle_timer, now)

    def create_child(self, config: ChildConfig, now: float) -> None:
        self._guard(now, self._enqueue, ChildCreate(config), now)

    def delete_child(self, spi_in: int, now: float) -> None:
        self._guard(now, self._enqueue, ChildDelete(spi_in), now)

    def rekey_child(self, spi_in: int, now: float) -> None:
        """Rekeys one CHILD_SA now (its soft lifetime does the same on its own)."""
        self._guard(now, self._rekey_child, spi_in, now)

    def replace_child(self, spi_in: int, config: ChildConfig, now: float) -> None:
        """Replaces the CHILD_SA with inbound SPI `spi_in` by a new one negotiated with `config`
        (a changed configuration, or after it failed to install), make-before-break: the new
        pair's ChildSaEstablished names it in `replaces`, ChildSaRekeyed moves outbound
        traffic, then the old pair is deleted. Refused: ChildSaFailed, the old pair stays."""
        self._guard(now, self._replace_child, spi_in, config, now)

    def child_expired(self, spi: int, hard: bool, now: float) -> None:
        """The data plane reports a byte/packet (or time) limit of the pair with inbound or
        outbound SPI `spi`: soft rekeys it, hard deletes it."""
        self._guard(now, self._child_expired, spi, hard, now)

    def rekeying_ike(self) -> bool:
        return self.ike_rekey_task is not None or self.successor is not None

    def rekey(self, now: float) -> None:
        """Rekeys the IKE SA now (its rekey_time does the same on its own)."""
        self.lifetime.rekey_at = None
        self._guard(now, self._enqueue, IkeRekey(), now)

    def resume_request(self, now: float) -> None:
        """A feature's I/O finished (e.g. a road warrior's lease arrived): answer the request it
        deferred. Nothing happens when no request waits."""
        self._guard(now, self._resume, now)

    def _resume(self, now: float) -> None:
        self.tasks.resume_deferred(now)

    def start_task(self, task: Task, now: float) -> None:
        """Queues `task` (an exchange of ours) and starts it when the window is free."""
        self._guard(now, self._enqueue, task, now)

    def roam(self, local: Address, now: float, remote: Address | None = None) -> None:
        """Our own address changed (MOBIKE, RFC 4555): move the IKE SA and its CHILD_SAs to
        `local` (and `remote`, default: the peer's current address) without a new SA. As the
        original initiator: UPDATE_SA_ADDRESSES from the new address; as the original
        responder: an address list update from it (the initiator decides, 3.4). Without MOBIKE
        negotiated nothing is sent: AddressUpdateFailed(MOBIKE_NOT_NEGOTIATED)."""
        self._guard(now, self._roam, local, remote, now)

    def check_liveness(self, now: float) -> None:
        self._guard(now, self._enqueue, Liveness(), now)

    def delete(self, now: float) -> None:
        """Deletes the IKE SA (and with it every CHILD_SA) with an INFORMATIONAL exchange."""
        self._guard(now, self._delete, now)

    def reauthenticate(self, now: float) -> None:
        """Make-before-break reauthentication: a new IKE SA (IKE_SA_INIT, IKE_AUTH with fresh
        authentication, all CHILD_SAs) towards the same peer; this SA is deleted once the new
        one has finished its setup exchanges."""
        self._guard(now, self._spawn_fresh, now, True)

    def traffic_seen(self, now: float) -> None:
        """Inbound ESP arrived for one of our CHILD_SAs (fed by the adapter from data-plane
        counters): proof of life that postpones DPD like an IKE message does."""
        self.last_inbound = max(self.last_inbound, now)
        self._pending()

    def datagrams_to_send(self) -> list[OutgoingDatagram]:
        out, self._out = self._out, []
        return out

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def next_timer(self) -> float | None:
        if self._state is State.CLOSED:
            return None
        deadlines: list[float] = []
        active = self.tasks.deadline()
        if active is not None:
            deadlines.append(active)
        if self._state is State.ESTABLISHED and self.nat_local and self.config.natt_keepalive > 0:
            deadlines.append(self._last_sent + self.config.natt_keepalive)
        if self._half_open() and self.created_at is not None:
            deadlines.append(self.created_at + HALF_OPEN_TIMEOUT)
        if self.followup is not None:
            deadlines.append(self.followup.deadline)
        if self._state is State.ESTABLISHED:
            deadlines += self.lifetime.deadlines()
            for c in self.children.values():
                if c.rekey_at is not None and c.state is ChildState.INSTALLED:
                    deadlines.append(c.rekey_at)
                if c.expire_at is not None and c.state is not ChildState.DELETING:
                    deadlines.append(c.expire_at)
        return min(deadlines) if deadlines else None

    # ------------------------------------------------------------------ for tasks and features

    def sibling(
        self, *, initiator: bool, local: Address | None = None, remote: Address | None = None
    ) -> IkeSa:
        """A new IKE SA with this one's configuration and plumbing (a rekey's successor, a
        reauthentication or restart), not yet known to the container."""
        new = IkeSa(
            self.config, local or self.local, remote or self.remote, initiator=initiator, rnd=self.rnd,
            dh_factory=self.dh_factory, allocate_spi=self.allocate_spi, candidates=self.candidates,
        )  # fmt: skip
        new.on_pending = self.on_pending
        new.on_new_sa = self.on_new_sa
        return new

    def hand_over(self, new: IkeSa, now: float) -> None:
        """Moves CHILD_SAs and queued requests to the successor SA (RFC 7296 2.8)."""
        if self.successor is not None:
            return
        self.successor = new
        new.children.update(self.children)
        self.children.clear()
        new.virtual_addresses, new.cfg_reply = self.virtual_addresses, self.cfg_reply
        new.peer_serial, new.peer_common_name = self.peer_serial, self.peer_common_name
        new.tasks.adopt(self.tasks.take_over())
        self.lifetime.replaced(now)
        self.emit(IkeSaRekeyed(new.spi_i, new.spi_r, new.local_spi))
        new.kick(now)

    def child_exchange_in_flight(self) -> bool:
        """Our CREATE_CHILD_SA (not an IKE rekey) is under way, with its IKE_FOLLOWUP_KE
        exchanges if any, or a CHILD_SA is mid-rekey."""
        if isinstance(self.tasks.active, ChildCreate):
            return True
        ours = (self.tasks.active, *self.tasks.pending())
        if any(isinstance(t, IkeFollowupKe) and isinstance(t.rekey, ChildCreate) for t in ours):
            return True
        return any(c.state is ChildState.REKEYING for c in self.children.values())

    def emit(self, event: Event) -> None:
        self._events.append(event)
        self._pending()

    def queue(self, task: Task) -> None:
        self.tasks.queue(task)

    def kick(self, now: float) -> None:
        """Starts the next queued request if nothing else is in flight."""
        if self.tasks.processing:
            return
        if self.reauth_of is not None and self._state is State.ESTABLISHED and not self.tasks.busy:
            self._setup_done(now)
        self.tasks.kick(now)

    def fail(self, reason: str, code: FailureReason) -> None:
        if self._state is State.CLOSED:
            return
        log.info("IKE SA %s failed: %s", self.local_spi.hex(), reason)
        self._close(IkeSaFailed(reason, code))

    def notify_and_fail(self, ntype: NotifyType, reason: str, now: float) -> None:
        """An error found in the peer's answer: one INFORMATIONAL request carrying the notify
        (not retransmitted: the SA is gone either way), then the SA fails (RFC 7296 2.21.2)."""
        if self.protection is not None and self._state is not State.CLOSED:
            self.tasks.send_one_shot([NotifyPayload(ntype)], now)
        self.fail(reason, FailureReason.from_notify(ntype))

    def close_deleted(self, by_peer: bool) -> None:
        self._close(IkeSaDeleted(by_peer))

    def close_after_response(self, event: Event) -> None:
        self._close_after_response = event

    @property
    def closing_after_response(self) -> bool:
        return self._close_after_response is not None

    def close_pending(self) -> None:
        """The response that ends this SA went out (see close_after_response)."""
        event, self._close_after_response = self._close_after_response, None
        if event is not None:
            self._close(event)

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

    # ------------------------------------------------------------------ for the task manager

    def send_datagram(
        self, data: bytes, now: float, keepalive: bool = False, path: tuple[Address, Address] | None = None
    ) -> None:
        """`path`: (local, remote) for an answer, which goes back where its request came from."""
        local, remote = path or (self.local, self.remote)
        self._out.append(OutgoingDatagram(data, local, remote, keepalive))
        self._last_sent = now
        self._pending()

    def check_spis(self, header: Header, is_init: bool) -> bool:
        if self.spi_i != bytes(8) and header.spi_i != self.spi_i:
            return False
        if is_init:
            # Requests carry a zero SPIr; responses to IKE_SA_INIT teach it to the initiator.
            return True
        return header.spi_r == self.spi_r

    def update_addresses(self, local: Address, remote: Address) -> None:
        """Authenticated traffic from a new address/port (NAT mapping or float to 4500). Not
        while our MOBIKE update is under way: that task owns the path (a late packet on the old
        one must not move the SA back)."""
        if isinstance(self.tasks.active, UpdateSaAddresses | AddressListUpdate):
            return
        if local != self.local or remote != self.remote:
            self.local, self.remote = local, remote
            self.stats["address_updates"] += 1

    def request_timed_out(self, task: Task, now: float) -> None:
        """The peer stayed silent for the whole retransmit schedule of `task`: dead (RFC 7296 2.4)."""
        dead = task.timeout_means_dead and (self._state is State.ESTABLISHED or self.restarts > 0)
        if dead:
            self.emit(PeerDead(self.config.dpd_action))
        task.on_timeout(self)
        if self.closed and dead and self.config.dpd_action == "restart":
            self._spawn_fresh(now, False)

    # ------------------------------------------------------------------ internals

    def _pending(self) -> None:
        if self.on_pending is not None:
            self.on_pending(self)

    def _guard(self, now: float, fn: Callable[..., None], *args: object) -> None:
        try:
            fn(*args)
        except Exception as exc:
            if strict.enabled:
                raise
            self.stats["internal_error"] += 1
            ERRORS.report(f"IKE SA {self.local_spi.hex()} failed closed", now)
            self._fail_closed(exc)

    def _fail_closed(self, exc: Exception) -> None:
        """A bug of ours: this SA ends now, cleanly (every CHILD_SA reported deleted so the data
        plane drops it, IkeSaFailed INTERNAL_ERROR), rather than half changed."""
        if self._state is State.CLOSED:
            return
        self._close_after_response = None
        children = list(self.children.values())
        self.children.clear()
        for child in children:
            self.emit(ChildSaDeleted(child.name, child.spi_in, child.spi_out, child.protocol, False))
        self._state = State.CLOSED  # every state may close (IKE_TRANSITIONS); no check can fail here
        self.tasks.stop()
        self.emit(IkeSaFailed(f"internal error: {type(exc).__name__}", FailureReason.INTERNAL_ERROR))

    def _half_open(self) -> bool:
        """A responder SA that has answered IKE_SA_INIT but not yet authenticated its peer."""
        return not self.initiator and self.remote_identity is None and self.created_at is not None

    def _initiate(self, now: float) -> None:
        if not self.initiator or self._state is not State.CREATED:
            self.stats["initiate_ignored"] += 1
            return
        self.move_to(State.CONNECTING)
        self.created_at = now
        children = self.config.children
        # Requests queued before initiate() (liveness, extra children) run once established.
        first: list[Task] = [IkeInit(), IkeAuth(children[0] if children else None)]
        first += [ChildCreate(child) for child in children[1:]]
        self.tasks.queue_first(first)
        self.kick(now)

    def _enqueue(self, task: Task, now: float) -> None:
        if self._state in (State.CLOSED, State.DELETING):
            self.stats["task_on_closed_sa"] += 1
            return
        self.tasks.queue(task)
        self.kick(now)

    def _roam(self, local: Address, remote: Address | None, now: float) -> None:
        if self._state is not State.ESTABLISHED:
            self.stats["roam_not_established"] += 1
            return
        if not self.mobike:
            # RFC 4555 3.2: no MOBIKE_SUPPORTED from both, no UPDATE_SA_ADDRESSES; the caller
            # may reauthenticate from the new address instead.
            self.stats["address_update_without_mobike"] += 1
            self.emit(AddressUpdateFailed("the peer did not announce MOBIKE_SUPPORTED",
                                          FailureReason.MOBIKE_NOT_NEGOTIATED))  # fmt: skip
            return
        queued = [t for t in self.tasks.pending() if isinstance(t, UpdateSaAddresses | AddressListUpdate)]
        if queued:
            queued[0].retarget(local, remote)  # one update to the newest address is enough
            return
        active = self.tasks.active
        if isinstance(active, UpdateSaAddresses | AddressListUpdate):
            # Its retransmissions go along the newest path; a second update follows with
            # NAT detection for it (RFC 4555 3.5: the latest addresses win).
            self.local, self.remote = local, remote or self.remote
        task = UpdateSaAddresses(local, remote) if self.originator else AddressListUpdate(local)
        self.tasks.queue_first([task])
        self.kick(now)

    def _delete(self, now: float) -> None:
        if self._state is State.CLOSED:
            return
        if self._state is not State.ESTABLISHED:
            # Nothing authenticated to tear down yet; just forget the half-made SA.
            self.close_deleted(by_peer=False)
            return
        self.tasks.clear()
        self.move_to(State.DELETING)
        self.tasks.queue(IkeDelete())
        if self.tasks.active is None:
            self.kick(now)

    def _close(self, event: Event) -> None:
        if self._state is State.CLOSED:
            return
        for child in list(self.children.values()):
            self.remove_child(child, by_peer=isinstance(event, IkeSaDeleted) and event.by_peer)
        self.move_to(State.CLOSED)
        self.tasks.stop()
        self.emit(event)

    def _receive(self, datagram: bytes, local: Address, remote: Address, now: float) -> None:
        if self._state is State.CLOSED:
            self.stats["dropped_closed"] += 1
            return
        try:
            header = parse_header(datagram)
        except ParseError:
            self.stats["dropped_malformed_header"] += 1
            return
        if header.exchange not in EXCHANGE_RULES:
            self.stats["dropped_unknown_exchange"] += 1
            return
        if header.is_initiator == self.initiator:
            self.stats["dropped_wrong_role"] += 1
            return
        self.tasks.receive(datagram, header, local, remote, now)

    def _handle_timer(self, now: float) -> None:
        if self._state is State.CLOSED:
            return
        if self._half_open() and now >= self.created_at + HALF_OPEN_TIMEOUT:  # type: ignore[operator]
            self.fail("half-open IKE SA timed out waiting for IKE_AUTH", FailureReason.HALF_OPEN_TIMEOUT)
            return
        self.tasks.on_timer(now)
        if self.followup is not None and self.followup.expired(now):
            self.stats["followup_abandoned"] += 1
            drop_followup(self)  # RFC 9370 2.2.4: the peer never sent the IKE_FOLLOWUP_KE due
        if self._state is State.ESTABLISHED:
            self.lifetime.on_timer(now)
        if self._state is State.ESTABLISHED:
            self._child_timers(now)
        if (
            self._state is State.ESTABLISHED
            and self.nat_local
            and self.config.natt_keepalive > 0
            and now >= self._last_sent + self.config.natt_keepalive
        ):
            self.send_datagram(NATT_KEEPALIVE, now, keepalive=True)

    def _spawn_fresh(self, now: float, reauth: bool) -> None:
        """A fresh IKE SA with the same config towards the peer's original address: a
        reauthentication (`reauth`), or dpd_action restart (it keeps restarting while the peer
        stays away)."""
        if self.on_new_sa is None or (reauth and self._state is State.CLOSED):
            return
        local, remote = self._origin
        new = self.sibling(initiator=True, local=local, remote=remote)
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

    def _child_timers(self, now: float) -> None:
        for c in list(self.children.values()):
            if c.expire_at is not None and now >= c.expire_at and c.state is not ChildState.DELETING:
                log.info("CHILD_SA %s %08x: hard lifetime reached, deleting", c.name, c.spi_in)
                self._delete_child_now(c, now)
            elif c.rekey_at is not None and now >= c.rekey_at and c.state is ChildState.INSTALLED:
                self._rekey_child(c.spi_in, now)

    def _rekey_child(self, spi_in: int, now: float) -> None:
        c = self.children.get(spi_in)
        if c is None or c.state is not ChildState.INSTALLED or c.config is None:
            self.stats["rekey_not_possible"] += 1
            return
        c.rekey_at = None  # the task owns the retry schedule from here
        self._enqueue(ChildRekey(spi_in, rekey_config(c)), now)

    def _replace_child(self, spi_in: int, config: ChildConfig, now: float) -> None:
        c = self.children.get(spi_in)
        if c is None or c.state is not ChildState.INSTALLED:
            self.stats["replace_not_possible"] += 1
            return
        self._enqueue(ChildReplace(spi_in, config), now)

    def _delete_child_now(self, c: ChildSa, now: float) -> None:
        c.move_to(ChildState.DELETING)
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
