"""The task manager of one IKE SA (after strongSwan's task_manager_v2): message IDs, the request
window of one, retransmission with exponential back-off, the cached response for duplicate
requests, RFC 7383 reassembly, and the queue of pending exchanges (tasks).

Our requests: `queue` a Task; `kick` starts the next one when the window is free and the SA's
state allows its exchange (states.EXCHANGE_RULES); its response goes to Task.process. The peer's
requests: checked (SPIs, message ID, state), decoded, answered by the responder registered for
the exchange type (exchanges/dispatch.py), and the answer cached for retransmissions."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from meshsec.agent.ike.address import Address
from meshsec.agent.ike.build import build_chain, build_message
from meshsec.agent.ike.constants import (
    IKE_HEADER_LEN,
    IKE_VERSION,
    ExchangeType,
    HeaderFlag,
    NotifyType,
    PayloadType,
)
from meshsec.agent.ike.crypto import CryptoError
from meshsec.agent.ike.events import IkeSaFailed
from meshsec.agent.ike.exchanges.dispatch import RESPONDERS
from meshsec.agent.ike.failures import FailureReason
from meshsec.agent.ike.parse import ParseError, parse_chain
from meshsec.agent.ike.payloads import EncryptedPayload, Header, Message, NotifyPayload, Payload
from meshsec.agent.ike.states import EXCHANGE_RULES, State
from meshsec.agent.ike.task import Outcome, Task

if TYPE_CHECKING:
    from meshsec.agent.ike.sa import IkeSa

log = logging.getLogger(__name__)

MAX_FRAGMENTS = 64  # a peer claiming more is not reassembled (memory bound)

Decoded = tuple[Message | None, NotifyPayload | None]


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


class TaskManager:
    def __init__(self, sa: IkeSa) -> None:
        self._sa = sa
        self._queue: deque[Task] = deque()
        self._active: _Active | None = None
        self._my_mid = 0
        self._peer_mid = 0
        self._cached_request = b""
        self._cached_response: list[bytes] | None = None
        self._fragments: dict[tuple[bool, int], _Fragments] = {}
        self._reassembled: Decoded | None = None
        self._processing = False  # a response is being processed: its message ID is not yet free
        self._deferred: tuple[Header, Message, bytes] | None = None  # a request waiting (resume_deferred)
        # Where the request being answered came from (our local, the peer's address): the
        # answer goes back that way (RFC 7296 2.11), and MOBIKE's responder moves the SA there.
        self.request_path: tuple[Address, Address] = (sa.local, sa.remote)

    # ------------------------------------------------------------------ the queue

    @property
    def next_request_id(self) -> int:
        return self._my_mid

    @property
    def expected_request_id(self) -> int:
        """The message ID the peer's next request must carry."""
        return self._peer_mid

    @property
    def active(self) -> Task | None:
        return self._active.task if self._active is not None else None

    @property
    def busy(self) -> bool:
        """A request of ours is in flight or queued."""
        return self._active is not None or bool(self._queue)

    @property
    def processing(self) -> bool:
        return self._processing

    @property
    def fragments_pending(self) -> int:
        return len(self._fragments)

    def queue(self, task: Task) -> None:
        self._queue.append(task)

    def queue_first(self, tasks: Iterable[Task]) -> None:
        self._queue.extendleft(reversed(list(tasks)))

    def pending(self) -> tuple[Task, ...]:
        return tuple(self._queue)

    def clear(self) -> None:
        """Forgets queued tasks (the one in flight stays)."""
        self._queue.clear()

    def stop(self) -> None:
        """The SA closed: nothing is sent or retransmitted any more."""
        self._queue.clear()
        self._active = None

    def take_over(self) -> list[Task]:
        """Removes and returns the queued tasks that move to a successor IKE SA."""
        moved = [t for t in self._queue if t.survives_ike_rekey]
        self._queue.clear()
        return moved

    def adopt(self, tasks: Iterable[Task]) -> None:
        self._queue.extend(tasks)

    def kick(self, now: float) -> None:
        """Starts the next queued task if the window is free and the state allows it."""
        sa = self._sa
        if self._processing:
            return
        while self._active is None and self._queue and sa.state is not State.CLOSED:
            task = self._queue[0]
            if task.exchange is not ExchangeType.IKE_SA_INIT and sa.protection is None:
                return
            if sa.state not in EXCHANGE_RULES[task.exchange].send_in:
                return
            self._queue.popleft()
            self.send_request(task, now)

    def send_request(self, task: Task, now: float) -> None:
        sa = self._sa
        payloads = task.build(sa, now)
        if payloads is None or sa.state is State.CLOSED:
            return
        flags = HeaderFlag.INITIATOR if sa.initiator else 0
        header = Header(sa.spi_i, sa.spi_r, 0, task.exchange, flags, self._my_mid, 0, IKE_VERSION)
        packets = self.encode_all(header, payloads)
        if task.exchange is ExchangeType.IKE_SA_INIT:
            sa.init_request = packets[0]
        self._active = _Active(task, self._my_mid, packets, 0, now + sa.config.retransmit.delay(0))
        for data in packets:
            sa.send_datagram(data, now)

    def send_one_shot(self, payloads: list[Payload], now: float) -> None:
        """An INFORMATIONAL request that is never retransmitted (the error notify that ends an
        SA, RFC 7296 2.21.2): it takes the next message ID."""
        sa = self._sa
        flags = HeaderFlag.INITIATOR if sa.initiator else 0
        mid = self._my_mid + (1 if self._processing else 0)
        header = Header(sa.spi_i, sa.spi_r, 0, ExchangeType.INFORMATIONAL, flags, mid, 0, IKE_VERSION)
        sa.send_datagram(self.encode(header, payloads), now)

    # ------------------------------------------------------------------ timers

    def deadline(self) -> float | None:
        return self._active.deadline if self._active is not None else None

    def on_timer(self, now: float) -> None:
        """Retransmits the request in flight, or gives up on it after the last try."""
        sa = self._sa
        a = self._active
        if a is None or now < a.deadline:
            return
        rt = sa.config.retransmit
        if a.attempt < rt.tries:
            a.attempt += 1
            a.deadline = now + rt.delay(a.attempt)
            sa.stats["retransmits"] += 1
            for data in a.packets:
                sa.send_datagram(data, now)
            return
        self._active = None
        sa.stats["retransmit_limit"] += 1
        sa.request_timed_out(a.task, now)
        if not sa.closed:
            self._my_mid += 1
            self.kick(now)

    # ------------------------------------------------------------------ inbound

    def receive(self, datagram: bytes, header: Header, local: Address, remote: Address, now: float) -> None:
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

    def _on_request(
        self, datagram: bytes, header: Header, local: Address, remote: Address, now: float
    ) -> None:
        sa = self._sa
        is_init = header.exchange == ExchangeType.IKE_SA_INIT
        if not sa.check_spis(header, is_init) or (is_init and (header.spi_r != bytes(8) or sa.initiator)):
            sa.stats["dropped_bad_spi"] += 1
            return
        mid = header.message_id
        if self._cached_response is not None and mid == self._peer_mid - 1:
            if datagram == self._cached_request:
                sa.stats["duplicate_request_answered"] += 1
                for data in self._cached_response:
                    sa.send_datagram(data, now, path=(local, remote))
            else:
                sa.stats["dropped_old_request"] += 1
            return
        if mid != self._peer_mid:
            sa.stats["dropped_bad_message_id"] += 1
            return
        exchange = ExchangeType(header.exchange)
        rules = EXCHANGE_RULES[exchange]
        if rules.from_original_initiator and sa.initiator:
            sa.stats["dropped_unexpected_request"] += 1
            return
        if sa.state not in rules.accept_in and not (rules.accept_during_eap and sa.eap is not None):
            sa.stats["dropped_unexpected_init" if is_init else "dropped_unexpected_request"] += 1
            return
        msg, error = self._decode(datagram, header)
        if msg is None and error is None:
            return
        if is_init and sa.created_at is None:
            sa.created_at = now
            sa.spi_i = header.spi_i
        if msg is not None:
            sa.last_inbound = now
        self.request_path = (local, remote)
        responder = RESPONDERS.get(exchange)
        payloads: list[Payload]
        if error is not None:
            payloads = [error]
            if is_init:
                sa.close_after_response(
                    IkeSaFailed(
                        f"IKE_SA_INIT rejected: {NotifyType(error.notify_type).name}",
                        FailureReason.from_notify(error.notify_type),
                    )
                )
        elif msg is not None and responder is not None:
            if not is_init:
                if msg.notify(NotifyType.UPDATE_SA_ADDRESSES) is None:
                    sa.update_addresses(local, remote)  # (MOBIKE's responder decides that one)
            else:
                sa.init_request = datagram
                sa.local, sa.remote = local, remote
            answer = responder(sa, msg, now)
            if answer is None:  # deferred (feature.Deferred): answered on resume or retransmission
                self._deferred = (header, msg, datagram)
                sa.stats["request_deferred"] += 1
                return
            payloads = answer
        else:
            return
        self._send_response(header, payloads, datagram, now)

    def resume_deferred(self, now: float) -> bool:
        """Processes a deferred request again; True if it is answered now."""
        deferred, self._deferred = self._deferred, None
        if deferred is None:
            return False
        header, msg, datagram = deferred
        if header.message_id != self._peer_mid:
            return False  # answered meanwhile (the peer's retransmission came after the answer)
        responder = RESPONDERS[ExchangeType(header.exchange)]
        answer = responder(self._sa, msg, now)
        if answer is None:
            self._deferred = deferred
            return False
        self._send_response(header, answer, datagram, now)
        return True

    @property
    def deferred(self) -> bool:
        return self._deferred is not None

    def _send_response(self, req: Header, payloads: list[Payload], raw_request: bytes, now: float) -> None:
        sa = self._sa
        flags = HeaderFlag.RESPONSE | (HeaderFlag.INITIATOR if sa.initiator else 0)
        header = Header(sa.spi_i, sa.spi_r, 0, req.exchange, flags, req.message_id, 0, IKE_VERSION)
        is_init = req.exchange == ExchangeType.IKE_SA_INIT
        closing = sa.closing_after_response
        if is_init and closing:
            # Error answers to IKE_SA_INIT carry no responder SPI: we keep no state for them.
            header = Header(
                sa.spi_i, bytes(8), 0, req.exchange, HeaderFlag.RESPONSE, req.message_id, 0, IKE_VERSION
            )
        packets = self.encode_all(header, payloads)
        if sa.after_response is not None:
            # Keys that take over once this answer is sealed (IKE_INTERMEDIATE, RFC 9370 2.2.2).
            install, sa.after_response = sa.after_response, None
            install()
        if is_init:
            sa.init_response = packets[0]
        self._deferred = None
        self._cached_request = raw_request
        self._cached_response = packets
        self._peer_mid = req.message_id + 1
        for data in packets:
            sa.send_datagram(data, now, path=self.request_path)
        if closing:
            sa.close_pending()
        else:
            sa.kick(now)

    def _on_response(
        self, datagram: bytes, header: Header, local: Address, remote: Address, now: float
    ) -> None:
        sa = self._sa
        a = self._active
        if a is None or header.message_id != a.message_id or header.exchange != a.task.exchange:
            sa.stats["dropped_unexpected_response"] += 1
            return
        is_init = header.exchange == ExchangeType.IKE_SA_INIT
        if not sa.check_spis(header, is_init):
            sa.stats["dropped_bad_spi"] += 1
            return
        msg, _ = self._decode(datagram, header)
        if msg is None:
            return
        if not is_init:
            sa.update_addresses(local, remote)
        sa.last_inbound = now
        self._active = None
        # While a task handles its response, requests it queues wait for the message ID to
        # advance (below), so they never reuse the finished exchange's ID.
        self._processing = True
        try:
            outcome = a.task.process(sa, msg, datagram, now)
        finally:
            self._processing = False
        if sa.state is State.CLOSED:
            return
        if outcome is Outcome.RETRY:
            self.send_request(a.task, now)
            return
        self._my_mid += 1
        if outcome is Outcome.REQUEUE:
            self._queue.appendleft(a.task)
        sa.kick(now)

    # ------------------------------------------------------------------ codec

    def _decode(self, datagram: bytes, header: Header) -> Decoded:
        """Parses (and for encrypted exchanges verifies and decrypts) a message. Returns the
        message, or a notify to answer with, or (None, None) for a silent drop."""
        sa = self._sa
        if self._reassembled is not None:
            decoded, self._reassembled = self._reassembled, None
            return decoded
        try:
            payloads = parse_chain(header.next_payload, memoryview(datagram)[IKE_HEADER_LEN:])
        except ParseError as exc:
            sa.stats["dropped_malformed"] += 1
            if header.is_response or header.exchange != ExchangeType.IKE_SA_INIT:
                return None, None
            if exc.notify == NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD:
                return None, NotifyPayload(exc.notify, exc.data)
            return None, None
        msg = Message(header, payloads)
        if header.exchange == ExchangeType.IKE_SA_INIT:
            return msg, None
        sk = payloads[-1] if payloads else None
        if not isinstance(sk, EncryptedPayload) or sa.protection is None:
            sa.stats["dropped_unprotected"] += 1
            return None, None
        try:
            inner, plain = sa.protection.open_plain(datagram, sk)
        except CryptoError:
            sa.stats["dropped_integrity"] += 1
            return None, None
        except ParseError as exc:
            # Authenticated but malformed: a request gets the error notify (RFC 7296 2.21.3).
            sa.stats["malformed_protected"] += 1
            if header.is_response:
                return None, None
            return None, NotifyPayload(exc.notify, exc.data)
        msg.payloads = payloads[:-1] + inner
        msg.inner, msg.inner_first = plain, sk.first_inner
        return msg, None

    def encode_all(self, header: Header, payloads: list[Payload]) -> list[bytes]:
        """One datagram, or RFC 7383 fragments when it would exceed fragment_size and both
        ends support them (never for IKE_SA_INIT)."""
        sa = self._sa
        protection = sa.protection
        if protection is None or header.exchange == ExchangeType.IKE_SA_INIT:
            return [self.encode(header, payloads)]  # unencrypted, so never fragmented (2.5)
        # The inner chain is encoded once and its sealed size computed, not sealed to be
        # measured: a message that is then fragmented (an ML-KEM key share) would otherwise
        # be encrypted twice.
        first = int(payloads[0].payload_type) if payloads else PayloadType.NONE
        inner = build_chain(payloads)
        if not sa.frag_peer or protection.sealed_size(len(inner)) <= sa.config.fragment_size:
            return [protection.seal_encoded(header, first, inner, sa.rnd)]
        sa.stats["messages_fragmented"] += 1
        return protection.seal_fragments_encoded(header, first, inner, sa.rnd, sa.config.fragment_size)

    def encode(self, header: Header, payloads: list[Payload]) -> bytes:
        if header.exchange == ExchangeType.IKE_SA_INIT:
            return build_message(header, payloads)
        sa = self._sa
        assert sa.protection is not None
        return sa.protection.seal(header, payloads, sa.rnd)

    # ------------------------------------------------------------------ RFC 7383 reassembly

    def _reassemble(self, datagram: bytes, header: Header, now: float) -> bool:
        """Collects RFC 7383 fragments; True when `datagram` completed a message, which
        _decode then hands out. Each fragment is authenticated before it is kept."""
        sa = self._sa
        mid, is_response = header.message_id, header.is_response
        if sa.protection is None or not sa.check_spis(header, False):
            sa.stats["dropped_fragment"] += 1
            return False
        if not is_response and mid == self._peer_mid - 1 and self._cached_response is not None:
            # A retransmitted request: answer once per retransmission, on its first fragment.
            number = self._fragment_number(datagram)
            if number is None:
                sa.stats["dropped_integrity"] += 1
                return False
            if number == 1:
                sa.stats["duplicate_request_answered"] += 1
                for data in self._cached_response:
                    sa.send_datagram(data, now)
            return False
        if not self._expected(is_response, mid):
            sa.stats["dropped_bad_message_id"] += 1
            return False
        try:
            number, total, first, chunk = sa.protection.open_fragment(datagram)
        except CryptoError:
            sa.stats["dropped_integrity"] += 1
            return False
        if total > MAX_FRAGMENTS:
            sa.stats["dropped_fragment"] += 1
            return False
        key = (is_response, mid)
        buf = self._fragments.get(key)
        if buf is None or buf.total != total:
            buf = self._fragments[key] = _Fragments(total)  # a resend may be cut differently
        if number == 1:
            buf.first = first
        buf.parts[number] = chunk
        sa.stats["fragments_received"] += 1
        if len(buf.parts) < total:
            return False
        del self._fragments[key]
        plaintext = b"".join(buf.parts[n] for n in range(1, total + 1))
        try:
            payloads = parse_chain(buf.first, memoryview(plaintext))
        except ParseError as exc:
            sa.stats["malformed_protected"] += 1
            self._reassembled = (None, None if is_response else NotifyPayload(exc.notify, exc.data))
            return not is_response
        self._reassembled = (Message(header, payloads, plaintext, buf.first), None)
        return True

    def _fragment_number(self, datagram: bytes) -> int | None:
        """The number of a verified fragment of the peer's last request; it may have been sealed
        with the keys an IKE_INTERMEDIATE answer has since replaced (previous_protection)."""
        for protection in (self._sa.protection, self._sa.previous_protection):
            if protection is None:
                continue
            try:
                number, *_ = protection.open_fragment(datagram)
            except CryptoError:
                continue
            return number
        return None

    def _expected(self, is_response: bool, mid: int) -> bool:
        if is_response:
            return self._active is not None and mid == self._active.message_id
        return mid == self._peer_mid

    def _drop_stale_fragments(self) -> None:
        """Partial messages whose ID is no longer the one expected (it was received whole, or
        our request gave up) can never complete; without this a peer could pile them up."""
        for is_response, mid in list(self._fragments):
            if not self._expected(is_response, mid):
                del self._fragments[(is_response, mid)]
