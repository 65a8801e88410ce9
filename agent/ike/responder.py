"""The responder front door, sans-IO.

`Responder` answers an IKE_SA_INIT that belongs to no SA: it demands a COOKIE (RFC 7296 2.6)
while too many SAs are half-open, statelessly, and only then creates an IkeSa.

Half-open SAs are limited in total and per source address (like strongSwan's
charon.block_threshold / cookie_threshold_ip): one address that answers COOKIEs could otherwise
hold every slot and lock all other peers out."""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from meshsec.agent.ike import strict
from meshsec.agent.ike.address import Address
from meshsec.agent.ike.build import build_message
from meshsec.agent.ike.config import IkeConfig
from meshsec.agent.ike.constants import IKE_HEADER_LEN, ExchangeType, HeaderFlag, NotifyType
from meshsec.agent.ike.crypto import DhFactory, default_dh_factory
from meshsec.agent.ike.parse import ParseError, parse_chain, parse_header
from meshsec.agent.ike.payloads import Header, NoncePayload, NotifyPayload, Payload
from meshsec.agent.ike.random import Random, SystemRandom
from meshsec.agent.ike.sa import IkeSa, OutgoingDatagram, SpiAllocator
from meshsec.agent.ike.table import IkeSaTable as IkeSaTable  # re-export: it used to live here
from meshsec.common.errorlog import ExceptionLog

log = logging.getLogger(__name__)

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
    # The same per source address (strongSwan: cookie_threshold_ip 3, block_threshold 5). The
    # address limit counts only after the COOKIE check, so a spoofer cannot use it to lock out
    # the address it spoofs; it needs a peer that receives our COOKIEs.
    cookie_threshold_per_address: int = 3
    block_threshold_per_address: int = 5


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
        self.errors = ExceptionLog(log)  # fed our `now`: the engine reads no clock
        self._out: list[OutgoingDatagram] = []

    def datagrams_to_send(self) -> list[OutgoingDatagram]:
        out, self._out = self._out, []
        return out

    def accept(
        self, datagram: bytes, local: Address, remote: Address, now: float, half_open: int,
        half_open_from_remote: int = 0,
    ) -> IkeSa | None:  # fmt: skip
        """Turns a new IKE_SA_INIT request into an IkeSa (already fed with it), or answers
        with a COOKIE / drops it. `half_open` counts all half-open SAs, `half_open_from_remote`
        those from `remote`'s address. Never raises (outside strict mode, see strict.py)."""
        try:
            return self._accept(bytes(datagram), local, remote, now, half_open, half_open_from_remote)
        except Exception:  # nothing escapes the front door either: a bug costs this datagram
            if strict.enabled:
                raise
            self.stats["internal_error"] += 1
            self.errors.report(f"IKE_SA_INIT from {remote.host}", now)
            return None

    def _accept(
        self, datagram: bytes, local: Address, remote: Address, now: float, half_open: int,
        from_remote: int,
    ) -> IkeSa | None:  # fmt: skip
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
        settings = self.settings
        busy = half_open >= settings.cookie_threshold or from_remote >= settings.cookie_threshold_per_address
        if busy and not self._cookie_ok(payloads, header, remote, now):
            cookie = self._cookie_for(payloads, header, remote)
            self._reply(header, NotifyPayload(NotifyType.COOKIE, cookie), local, remote)
            return None
        if from_remote >= settings.block_threshold_per_address:
            self.stats["dropped_overload_address"] += 1
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
        ip = remote.packed_host
        return self.cookies.make(nonce.data if nonce else b"", ip, header.spi_i)

    def _cookie_ok(self, payloads: list[Payload], header: Header, remote: Address, now: float) -> bool:
        self.cookies.maybe_rotate(now)
        nonce = next((p for p in payloads if isinstance(p, NoncePayload)), None)
        first = payloads[0] if payloads else None
        if nonce is None or not isinstance(first, NotifyPayload) or first.notify_type != NotifyType.COOKIE:
            self.stats["cookie_sent"] += 1
            return False
        ip = remote.packed_host
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
