"""The responder front door and an SA table, both sans-IO.

`Responder` answers an IKE_SA_INIT that belongs to no SA: it demands a COOKIE (RFC 7296 2.6)
while too many SAs are half-open, statelessly, and only then creates an IkeSa. `IkeSaTable`
routes every datagram to its SA by our SPI, so an adapter needs a single object."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from meshsec.agent.ike.address import Address
from meshsec.agent.ike.build import build_message
from meshsec.agent.ike.config import IkeConfig
from meshsec.agent.ike.constants import IKE_HEADER_LEN, ExchangeType, HeaderFlag, NotifyType
from meshsec.agent.ike.crypto import DhFactory, default_dh_factory
from meshsec.agent.ike.events import Event
from meshsec.agent.ike.parse import ParseError, parse_chain, parse_header
from meshsec.agent.ike.payloads import Header, NoncePayload, NotifyPayload, Payload
from meshsec.agent.ike.random import Random, SystemRandom
from meshsec.agent.ike.sa import IkeSa, OutgoingDatagram, SpiAllocator, State

ConfigLookup = Callable[[Address, Address], Sequence[IkeConfig]]
COOKIE_SECRET_LIFETIME = 120.0


class CookieJar:
    """COOKIE = <version> | SHA-256(Ni | IPi | SPIi | secret) (RFC 7296 2.6); the previous
    secret stays valid for one period so cookies issued just before a rotation still work."""

    def __init__(self, rnd: Random) -> None:
        self._rnd = rnd
        self._version = 0
        self._secrets = {0: rnd.bytes(32)}
        self._rotated_at: float | None = None

    def _digest(self, version: int, nonce: bytes, ip: bytes, spi_i: bytes) -> bytes:
        return bytes((version,)) + hashlib.sha256(nonce + ip + spi_i + self._secrets[version]).digest()

    def maybe_rotate(self, now: float) -> None:
        if self._rotated_at is None:
            self._rotated_at = now
        elif now - self._rotated_at >= COOKIE_SECRET_LIFETIME:
            self._version = (self._version + 1) % 256
            self._secrets = {v: s for v, s in self._secrets.items() if v == (self._version - 1) % 256}
            self._secrets[self._version] = self._rnd.bytes(32)
            self._rotated_at = now

    def make(self, nonce: bytes, ip: bytes, spi_i: bytes) -> bytes:
        return self._digest(self._version, nonce, ip, spi_i)

    def verify(self, cookie: bytes, nonce: bytes, ip: bytes, spi_i: bytes) -> bool:
        if len(cookie) != 33 or cookie[0] not in self._secrets:
            return False
        return hmac.compare_digest(cookie, self._digest(cookie[0], nonce, ip, spi_i))


@dataclass(frozen=True, slots=True)
class ResponderSettings:
    cookie_threshold: int = 10  # half-open SAs before COOKIEs are demanded (strongSwan: 10)
    block_threshold: int = 1000  # half-open SAs beyond which new IKE_SA_INITs are dropped


class Responder:
    def __init__(
        self,
        lookup: ConfigLookup,
        *,
        rnd: Random | None = None,
        dh_factory: DhFactory = default_dh_factory,
        allocate_spi: SpiAllocator | None = None,
        settings: ResponderSettings | None = None,
    ) -> None:
        self._lookup = lookup
        self._rnd: Random = rnd or SystemRandom()
        self._dh_factory = dh_factory
        self._allocate_spi = allocate_spi
        self.settings = settings or ResponderSettings()
        self.cookies = CookieJar(self._rnd)
        self.stats: Counter[str] = Counter()
        self._out: list[OutgoingDatagram] = []

    def datagrams_to_send(self) -> list[OutgoingDatagram]:
        out, self._out = self._out, []
        return out

    def accept(
        self, datagram: bytes, local: Address, remote: Address, now: float, half_open: int
    ) -> IkeSa | None:
        """Turns a new IKE_SA_INIT request into an IkeSa (already fed with it), or answers
        with a COOKIE / drops it. Never raises."""
        try:
            return self._accept(bytes(datagram), local, remote, now, half_open)
        except Exception:  # nothing escapes the front door either
            self.stats["internal_error"] += 1
            return None

    def _accept(
        self, datagram: bytes, local: Address, remote: Address, now: float, half_open: int
    ) -> IkeSa | None:
        try:
            header = parse_header(datagram)
        except ParseError:
            self.stats["dropped_malformed_header"] += 1
            return None
        if (
            header.exchange != ExchangeType.IKE_SA_INIT
            or header.is_response
            or not header.is_initiator
            or header.message_id != 0
            or header.spi_r != bytes(8)
            or header.spi_i == bytes(8)
        ):
            self.stats["dropped_not_initial"] += 1
            return None
        if half_open >= self.settings.block_threshold:
            self.stats["dropped_overload"] += 1
            return None
        try:
            payloads = parse_chain(header.next_payload, memoryview(datagram)[IKE_HEADER_LEN:])
        except ParseError as exc:
            # No state for garbage; only an unknown critical payload earns a (stateless) answer.
            self.stats["dropped_malformed"] += 1
            if exc.notify == NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD:
                self._reply(header, NotifyPayload(exc.notify, exc.data), local, remote)
            return None
        if half_open >= self.settings.cookie_threshold and not self._cookie_ok(payloads, header, remote, now):
            cookie = self._cookie_for(payloads, header, remote)
            self._reply(header, NotifyPayload(NotifyType.COOKIE, cookie), local, remote)
            return None
        configs = self._lookup(local, remote)
        if not configs:
            self.stats["dropped_no_config"] += 1
            return None
        sa = IkeSa(
            configs[0],
            local,
            remote,
            initiator=False,
            rnd=self._rnd,
            dh_factory=self._dh_factory,
            allocate_spi=self._allocate_spi,
            candidates=configs,
        )
        sa.receive(datagram, local, remote, now)
        return sa

    def _cookie_for(self, payloads: list[Payload], header: Header, remote: Address) -> bytes:
        nonce = next((p for p in payloads if isinstance(p, NoncePayload)), None)
        ip = ipaddress.ip_address(remote.host).packed
        return self.cookies.make(nonce.data if nonce else b"", ip, header.spi_i)

    def _cookie_ok(self, payloads: list[Payload], header: Header, remote: Address, now: float) -> bool:
        self.cookies.maybe_rotate(now)
        nonce = next((p for p in payloads if isinstance(p, NoncePayload)), None)
        first = payloads[0] if payloads else None
        if nonce is None or not isinstance(first, NotifyPayload) or first.notify_type != NotifyType.COOKIE:
            self.stats["cookie_sent"] += 1
            return False
        ip = ipaddress.ip_address(remote.host).packed
        if self.cookies.verify(first.data, nonce.data, ip, header.spi_i):
            self.stats["cookie_accepted"] += 1
            return True
        self.stats["cookie_invalid"] += 1
        self.stats["cookie_sent"] += 1
        return False

    def _reply(self, header: Header, notify: NotifyPayload, local: Address, remote: Address) -> None:
        """A stateless IKE_SA_INIT answer: zero responder SPI, nothing remembered."""
        reply = Header(header.spi_i, bytes(8), 0, ExchangeType.IKE_SA_INIT, HeaderFlag.RESPONSE, 0, 0)
        self._out.append(OutgoingDatagram(build_message(reply, [notify]), local, remote))


class IkeSaTable:
    """Every IKE SA of one agent, keyed by our SPI; half-open responder SAs also by
    (SPIi, remote) so retransmitted IKE_SA_INITs reach the SA that answered them."""

    def __init__(self, responder: Responder | None = None) -> None:
        self.responder = responder
        self.stats: Counter[str] = Counter()
        self._by_spi: dict[bytes, IkeSa] = {}
        self._by_init: dict[tuple[bytes, Address], IkeSa] = {}
        # SAs that may have datagrams / events pending, so draining never scans every SA.
        self._pending_out: dict[IkeSa, None] = {}
        self._pending_events: dict[IkeSa, None] = {}
        self._init_key: dict[IkeSa, tuple[bytes, Address]] = {}

    def add(self, sa: IkeSa) -> None:
        self._by_spi[sa.local_spi] = sa
        sa.on_pending = self._mark
        self._mark(sa)

    def _mark(self, sa: IkeSa) -> None:
        self._pending_out[sa] = None
        self._pending_events[sa] = None

    def __iter__(self) -> Iterator[IkeSa]:
        return iter(list(self._by_spi.values()))

    def __len__(self) -> int:
        return len(self._by_spi)

    def half_open(self) -> int:
        return sum(1 for sa in self._by_init.values() if sa.state not in (State.ESTABLISHED, State.CLOSED))

    def receive(self, datagram: bytes, local: Address, remote: Address, now: float) -> IkeSa | None:
        """Routes one IKE message; returns the SA that took it (new or existing), if any."""
        try:
            header = parse_header(bytes(datagram))
        except ParseError:
            self.stats["dropped_malformed_header"] += 1
            return None
        if header.is_initiator:  # sent by the original initiator: we are the responder
            if header.spi_r == bytes(8):
                key = (header.spi_i, remote)
                sa = self._by_init.get(key)
                if sa is None or sa.closed:
                    if self.responder is None:
                        self.stats["dropped_no_responder"] += 1
                        return None
                    sa = self.responder.accept(datagram, local, remote, now, self.half_open())
                    if sa is None:
                        return None
                    self._by_init[key] = sa
                    self._init_key[sa] = key
                    self.add(sa)
                    return sa
            else:
                sa = self._by_spi.get(header.spi_r)
        else:
            sa = self._by_spi.get(header.spi_i)
        if sa is None:
            self.stats["dropped_unknown_spi"] += 1
            return None
        sa.receive(datagram, local, remote, now)
        return sa

    def handle_timers(self, now: float) -> None:
        for sa in self:
            deadline = sa.next_timer()
            if deadline is not None and deadline <= now:
                sa.handle_timer(now)

    def next_timer(self) -> float | None:
        deadlines = [d for d in (sa.next_timer() for sa in self) if d is not None]
        return min(deadlines) if deadlines else None

    def datagrams_to_send(self) -> list[OutgoingDatagram]:
        out = self.responder.datagrams_to_send() if self.responder else []
        pending, self._pending_out = self._pending_out, {}
        for sa in pending:
            out += sa.datagrams_to_send()
        return out

    def events(self) -> list[tuple[IkeSa, Event]]:
        """Drains events of all SAs, then forgets closed SAs."""
        out: list[tuple[IkeSa, Event]] = []
        pending, self._pending_events = self._pending_events, {}
        for sa in pending:
            while (ev := sa.next_event()) is not None:
                out.append((sa, ev))
            self._reap(sa)
        return out

    def _reap(self, sa: IkeSa) -> None:
        if sa.closed or sa.established:
            key = self._init_key.pop(sa, None)
            if key is not None and self._by_init.get(key) is sa:
                del self._by_init[key]
        if sa.closed and self._by_spi.get(sa.local_spi) is sa:
            del self._by_spi[sa.local_spi]
