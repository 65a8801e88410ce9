"""The asyncio IKE adapter: owns the UDP sockets, feeds the sans-IO engine, runs its timers,
dispatches its events and drives the data plane.

The engine's IkeSaTable is the single object driven here. After every input (a datagram, a
timer, an API call) one `_pump` runs: datagrams go out, events are dispatched, the
one loop timer is re-armed for the table's earliest deadline. The table only looks at SAs with
pending output, so the cost of a datagram does not grow with the number of SAs.

Data-plane calls are async and run strictly in event order on one worker task, so a CHILD_SA is
never removed before it was installed; which pair a new CHILD_SA succeeds (and so its reqid,
and whether its outbound SA waits) is the engine's word (`replaces`, `outbound_active`,
ChildSaRekeyed). The adapter's own decisions live in small pure modules: which CHILD_SAs
follow a moved IKE SA (follow.py), when inbound counters are read as proof of life
(liveness.py), which socket a datagram leaves by (endpoints.py), the status document
(status.py).

Fail closed: an unexpected exception while handling one IKE SA fails that SA (its data-plane
state removed, one log line with the traceback, counted as `sa_failed_closed`) and the adapter
goes on; in strict mode (failclosed.py) it is raised too."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field

from meshsec.agent.adapters import follow, liveness, roaming, takeover, udp
from meshsec.agent.adapters.address_events import AddressEvents
from meshsec.agent.adapters.endpoints import Endpoint, Endpoints, bind_plan, pick
from meshsec.agent.adapters.eventlog import SpiText, log_event
from meshsec.agent.adapters.failclosed import strict
from meshsec.agent.adapters.install import ChildInstaller, ChildKey, InstallError
from meshsec.agent.adapters.records import ChildRecord, SaRecord
from meshsec.agent.adapters.resume import ChildBinding, Journal, child_record, ike_event
from meshsec.agent.adapters.spi import SpiReserver
from meshsec.agent.adapters.status import closed_status, counters_doc, sa_status
from meshsec.agent.dataplane.api import DataPlane, DataPlaneError, SaId
from meshsec.agent.ike import (
    Address,
    AddressesUpdated,
    ChildSaDeleted,
    ChildSaEstablished,
    ChildSaFailed,
    ChildSaRekeyed,
    DhFactory,
    Event,
    IkeConfig,
    IkeSa,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaFailed,
    IkeSaRekeyed,
    IkeSaTable,
    OutgoingDatagram,
    Random,
    Responder,
    ResponderSettings,
    SystemRandom,
    classify_4500,
    default_dh_factory,
)
from meshsec.agent.ike.config import ChildConfig
from meshsec.agent.ike.constants import IKE_HEADER_LEN, NATT_PORT, ProtocolId
from meshsec.agent.ike.parse import ParseError, parse_header
from meshsec.agent.ike.responder import ConfigLookup
from meshsec.common.deadline import within

__all__ = ["AdapterSettings", "ChildRecord", "EventCallback", "IkeAdapter", "SaRecord", "source_address_for"]

log = logging.getLogger(__name__)

DEFAULT_RCVBUF = 4 * 1024 * 1024
READ_BATCH = 64  # datagrams per readiness callback, so one busy socket cannot starve the others
HISTORY = 64  # closed IKE SAs kept for status
FAILED_CLOSED = "failed: internal error"


@dataclass(frozen=True, slots=True)
class AdapterSettings:
    bind: tuple[str, ...] = ("0.0.0.0", "::")
    ike_port: int = 500
    rcvbuf: int = DEFAULT_RCVBUF
    responder: ResponderSettings = field(default_factory=ResponderSettings)
    first_reqid: int = 1  # a restarted agent starts above the reqids of the SAs it adopted


EventCallback = Callable[[SaRecord, Event], None]
Job = Callable[[], Awaitable[None]]


class IkeAdapter:
    def __init__(
        self,
        lookup: ConfigLookup,
        *,
        dataplane: DataPlane | None = None,
        settings: AdapterSettings | None = None,
        rnd: Random | None = None,
        dh_factory: DhFactory = default_dh_factory,
        on_event: EventCallback | None = None,
    ) -> None:
        self.settings = settings or AdapterSettings()
        self.dataplane = dataplane
        self.rnd: Random = rnd or SystemRandom()
        self.dh_factory = dh_factory
        self.on_event = on_event
        self.responder = Responder(
            lookup, rnd=self.rnd, dh_factory=dh_factory, settings=self.settings.responder
        )
        self.table = IkeSaTable(self.responder)
        self.stats: Counter[str] = Counter()
        self.records: dict[IkeSa, SaRecord] = {}
        self.by_handle: dict[int, SaRecord] = {}
        self.history: deque[SaRecord] = deque(maxlen=HISTORY)
        first_reqid = self.settings.first_reqid
        self.installer = ChildInstaller(dataplane, first_reqid) if dataplane is not None else None
        self.spis = SpiReserver(dataplane, self.rnd) if dataplane is not None else None
        self.strict_failure: BaseException | None = None  # raised in a task in strict mode
        self._by_spi: dict[bytes, IkeSa] = {}
        # Failed closed, until their closing events are through (the record, for the callback).
        self._failed: dict[IkeSa, SaRecord | None] = {}
        self._handles = 0
        self._endpoints = Endpoints()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._work: asyncio.Queue[tuple[SaRecord | None, Job]] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        # CHILD_SAs taking over another IKE SA's pair of the tunnel (takeover.py), by new key.
        self._takeovers: dict[ChildKey, takeover.Takeover] = {}
        self._takeover_tasks: set[asyncio.Task[None]] = set()
        self._traffic: asyncio.Task[None] | None = None
        self._address_watch: asyncio.Task[None] | None = None
        self._closed = False
        # The IKE state file's entries (agent/adapters/resume.py); None: nothing is persisted.
        self.journal: Journal | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._worker = self._loop.create_task(self._run_work())
        if self.installer is not None:
            self._traffic = self._loop.create_task(self._watch_traffic())
        try:
            addresses = bind_plan(self.settings.bind, self.settings.ike_port)
            await self._endpoints.open(addresses, self.settings.rcvbuf, self._loop, self._readable,
                                       self.dataplane, self._from_dataplane)  # fmt: skip
        except BaseException:
            await self.close(graceful=False)
            raise
        log.info("IKE listening on %s", ", ".join(map(str, self.endpoints)))

    @property
    def endpoints(self) -> list[Address]:
        return [ep.bound for ep in self._endpoints.all]

    async def close(self, graceful: bool = True, timeout: float = 3.0,
                    only: Callable[[SaRecord], bool] | None = None) -> None:  # fmt: skip
        """With `graceful`, deletes every established IKE SA first (INFORMATIONAL DELETE), or
        those `only` picks, and waits up to `timeout` for the peers' answers and the data-plane
        cleanup."""
        if self._closed:
            return
        if graceful and self._loop is not None:
            now = self.now()
            for sa in list(self.table):
                record = self.records.get(sa)
                if only is None or (record is not None and only(record)):
                    sa.delete(now)
            self._pump()
            deadline = time.monotonic() + timeout
            while any(not sa.closed for sa in self.table) and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            for key in list(self._takeovers):  # (their outbound SAs go unused: all is deleted)
                self._end_takeover(key, activate=False)
            await self._drain_work(max(0.1, deadline - time.monotonic()))
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        if self._loop is not None:
            self._endpoints.stop_reading(self._loop)
        for task in (self._traffic, self._address_watch, self._worker, *self._takeover_tasks):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._endpoints.close_unattached()
        self._raise_strict_failure()

    def close_sockets(self) -> None:
        """Closes also the sockets lent to the data plane (call after the data plane stopped)."""
        self._endpoints.close_all()

    async def _drain_work(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await within(timeout, self._work.join())
        if self.spis is not None:
            await self.spis.drain()

    async def settle(self, timeout: float = 5.0) -> None:
        """Waits until queued data-plane work is done (tests and status use it)."""
        await self._drain_work(timeout)
        self._raise_strict_failure()

    def _raise_strict_failure(self) -> None:
        failure, self.strict_failure = self.strict_failure, None
        if failure is not None:
            raise failure

    # ------------------------------------------------------------------ API

    def now(self) -> float:
        assert self._loop is not None, "adapter not started"
        return self._loop.time()

    async def initiate(self, config: IkeConfig, remote: Address, local: Address | None = None) -> SaRecord:
        """Starts IKE_SA_INIT + IKE_AUTH (+ further children) towards `remote`."""
        if local is None:
            local = Address(source_address_for(remote.host), self.settings.ike_port)
        sa = IkeSa(config, local, remote, initiator=True, rnd=self.rnd, dh_factory=self.dh_factory)
        record = self._track(sa)
        if record.stock is not None and self.spis is not None:
            sa.allocate_spi = record.stock.take
            try:
                for protocol in {ProtocolId(c.protocol) for c in config.children}:
                    needed = sum(c.protocol == protocol for c in config.children)
                    await self.spis.fill(record.stock, protocol, needed)
            except BaseException as exc:
                # Never started: gone from the records, its reservations given back.
                record.outcome = f"failed: {exc}"
                self._forget(sa)
                raise
        self.table.add(sa)
        log.info("%s: initiating IKE SA %s -> %s", config.name, local, remote)
        sa.initiate(self.now())
        self._pump()
        return record

    def replace_child(self, record: SaRecord, spi_in: int, config: ChildConfig) -> None:
        """Replaces CHILD_SA `spi_in` by one with a changed configuration (selectors, proposals,
        mode, lifetimes) on the established IKE SA, make-before-break, by the engine's rules
        for a rekey: the new pair `replaces` it (same reqid, so traffic on selectors both have
        keeps flowing), outbound moves with ChildSaRekeyed, the old pair is deleted."""
        record.replacing.add(config.name)
        record.sa.replace_child(spi_in, config, self.now())
        self._pump()

    def reconfigure(self, record: SaRecord, config: IkeConfig) -> None:
        """A config differing from the SA's only in CHILD_SA settings: the IKE SA stays, and
        later CHILD_SAs (replacements, rekeys) are made from it."""
        record.sa.config = config

    def delete_child(self, record: SaRecord, spi_in: int) -> None:
        record.sa.delete_child(spi_in, self.now())
        self._pump()

    def delete(self, record: SaRecord) -> None:
        record.sa.delete(self.now())
        self._pump()

    def answer_deferred(self, record: SaRecord) -> None:
        """Answer the request the engine deferred for `record` (a road warrior's lease came)."""
        record.sa.resume_request(self.now())
        self._pump()

    def roam(self, record: SaRecord, local: Address) -> None:
        """Our address for this IKE SA changed (MOBIKE, RFC 4555): the engine sends
        UPDATE_SA_ADDRESSES from `local` (or, as the original responder, an address list
        update); its CHILD_SAs follow on AddressesUpdated. Without MOBIKE negotiated the
        engine reports AddressUpdateFailed and nothing moves."""
        record.sa.roam(local, self.now())
        self._pump()

    def watch_local_addresses(self, interval: float = 5.0) -> None:
        """On every address change the kernel reports (address_events.py), and every
        `interval` seconds in case an event was missed: each MOBIKE SA whose local address the
        host no longer holds moves to the host's new source address towards its peer
        (roaming.py)."""
        assert self._loop is not None, "adapter not started"
        if self._address_watch is not None:
            return
        events = AddressEvents(self._loop)
        wait = interval if events.subscribed else min(interval, 1.0)

        async def watch() -> None:
            try:
                while True:
                    await events.wait(wait)
                    try:
                        self.local_addresses_changed()
                    except Exception:
                        with self._strict_in_task():
                            self._unexpected(None, "following the host's addresses")
            finally:
                events.close()

        self._address_watch = self._loop.create_task(watch())

    def local_addresses_changed(self) -> None:
        for roam in roaming.roams(self.active(), roaming.is_local, source_address_for):
            log.info("%s: our address %s is gone; moving IKE SA %s to %s (MOBIKE)", roam.record.name,
                     roam.record.sa.local.host, SpiText(roam.record.sa), roam.local)  # fmt: skip
            self.stats["roams"] += 1
            self.roam(roam.record, roam.local)

    def check_liveness(self, record: SaRecord) -> None:
        """An empty INFORMATIONAL request (RFC 7296 2.4); LivenessChecked follows as an event."""
        record.sa.check_liveness(self.now())
        self._pump()

    def drop(self, record: SaRecord) -> None:
        """Forgets an IKE SA (and removes its CHILD_SAs) without an exchange: for a peer that
        already forgot it (INITIAL_CONTACT), where a DELETE would only be retransmitted."""
        record.sa.close_deleted(by_peer=True)
        self._pump()

    def flush(self) -> None:
        """Acts on engine output produced by calling an IkeSa directly."""
        self._pump()

    def child_expired(self, sa_id: SaId, hard: bool) -> bool:
        """A data-plane lifetime (seconds, bytes or packets) ran out for one of our SAs. Soft:
        the engine rekeys the CHILD_SA; hard: that SA is gone, so the engine deletes the
        CHILD_SA with the peer too (a half-dead tunnel would blackhole traffic). Returns
        whether it was ours."""
        if self.installer is None:
            return False
        for (host, _, spi_in), plan in self.installer.installed.items():
            if sa_id not in (plan.inbound.id, plan.outbound.id):
                continue
            for record in self.active():
                child = record.children.get(spi_in)
                if child is None or child.local.host != host:
                    continue
                log.info("%s: CHILD_SA %s reached its %s lifetime", record.name, child.event.name,
                         "hard" if hard else "soft")  # fmt: skip
                record.sa.child_expired(spi_in, hard, self.now())
                self._pump()
                return True
        return False

    def resume(self, sa: IkeSa, bindings: list[ChildBinding], entry: dict[str, object]) -> SaRecord:
        """Takes up an IKE SA an earlier run of this agent persisted (resume.restore rebuilt it
        and checked its CHILD_SAs are in the data plane): tracked, its CHILD_SAs bound to what the
        data plane holds, its timers running. Nothing is sent: the peer notices nothing."""
        sa.dh_factory = self.dh_factory
        record = self._track(sa)
        if record.stock is not None:
            sa.allocate_spi = record.stock.take
        now = self.now()
        record.established = ike_event(sa)
        age = now - sa.created_at if sa.created_at is not None else 0.0
        record.established_at = time.time() - age  # the newest-wins rule for duplicates needs it
        by_spi = {b.spi_in: b for b in bindings}
        for spi_in, child in sa.children.items():
            binding = by_spi[spi_in]
            known = child_record(sa, child, binding)
            record.children[spi_in] = known
            if self.installer is not None:
                self.installer.bind(known.event, binding.local, binding.remote, binding.reqid,
                                    tunnel=record.traffic_name)  # fmt: skip
        self.table.add(sa)
        if self.journal is not None:
            self.journal.seed(sa, dict(entry))
        self.stats["ike_sas_resumed"] += 1
        self._pump()
        return record

    async def quiesce(self, timeout: float) -> list[SaRecord]:
        """Waits up to `timeout` until every established IKE SA has an entry in the journal
        (no exchange in flight, its CHILD_SAs installed); returns those that still have none."""
        deadline = time.monotonic() + timeout
        while True:
            self._persist(record.sa for record in self.active())
            journal = self.journal
            missing = [r for r in self.active() if r.sa.established and
                       (journal is None or (journal.include(r) and not journal.holds(r.sa)))]  # fmt: skip
            if not missing or time.monotonic() >= deadline or self.journal is None:
                return missing
            await asyncio.sleep(0.02)

    def _persist(self, extra: Iterable[IkeSa] = (), *, force: bool = False) -> None:
        """Brings the IKE state file up to date with the SAs touched since the last call (before
        any answer they produced goes out, so a crash never leaves the peer ahead of the file)."""
        touched = self.table.take_touched()
        journal = self.journal
        if journal is None or self._loop is None:
            return
        try:
            journal.refresh([*touched, *extra], self.records, self.installer, self.now(), force=force)
        except OSError as exc:
            self.stats["ike_state_write_failed"] += 1
            log.error("cannot write the IKE state file: %s (a restart now falls back to new IKE SAs)", exc)

    def persist_now(self) -> None:
        """A final save (a restart stop): every SA recaptured, deadlines relative to now."""
        self._persist([r.sa for r in self.active()], force=True)

    def active(self) -> list[SaRecord]:
        return [r for r in self.records.values() if not r.sa.closed and r.sa not in self._failed]

    # ------------------------------------------------------------------ input

    def _readable(self, ep: Endpoint) -> None:
        for _ in range(READ_BATCH):
            try:
                got = udp.receive(ep.sock, ep.bound)
            except OSError as exc:
                self.stats["receive_errors"] += 1
                log.debug("receive on %s: %s", ep.bound, exc)
                break
            if got is None:
                break
            self.stats["datagrams_received"] += 1
            if ep.bound.port == NATT_PORT:
                kind, data = classify_4500(got.data)
                if kind == "keepalive":
                    self.stats["natt_keepalives_received"] += 1
                    continue
                if kind == "esp":
                    self.stats["dropped_esp_without_dataplane"] += 1
                    continue
                self._ike_input(data, got.local, got.remote)
            else:
                self._ike_input(got.data, got.local, got.remote)
            # Answer each datagram at once: the table only looks at SAs with output, so this is
            # cheap, while answering a whole batch at its end would add the batch's CPU time to
            # every handshake's latency.
            self._pump()

    def _from_dataplane(self, msg: bytes, local: tuple[str, int], remote: tuple[str, int]) -> None:
        """The data plane's IkeReceiver: IKE from the shared 4500 socket, marker removed."""
        if self._loop is None or self._closed:
            return
        if threading.get_ident() != self._loop_thread:
            self._loop.call_soon_threadsafe(self._from_dataplane, msg, local, remote)
            return
        self.stats["datagrams_received"] += 1
        self._ike_input(bytes(msg), Address(local[0], local[1]), Address(remote[0].split("%")[0], remote[1]))
        self._pump()

    def _ike_input(self, data: bytes, local: Address, remote: Address) -> None:
        """Anything wrong with a datagram is counted and it is dropped; an error of ours fails
        the IKE SA it reached."""
        sa: IkeSa | None = None
        try:
            if len(data) < IKE_HEADER_LEN:
                self.stats["dropped_short"] += 1
                return
            if udp.is_wildcard(local.host):
                local = self._known_local(data, local)
            sa = self.table.receive(data, local, remote, self.now())
            if sa is not None:
                record = self.records.get(sa)
                if record is None:
                    if not sa.spawned:  # a rekey's successor gets its record via IkeSaRekeyed
                        self._adopt_responder_sa(sa)
                elif record.children and self.installer is not None:
                    self._follow_addresses(record, self.installer)
        except Exception:
            self._unexpected(sa or self._sa_for(data), f"handling a datagram from {remote}")

    def _follow_addresses(
        self, record: SaRecord, installer: ChildInstaller, udp_encap: bool | None = None
    ) -> None:
        sa = record.sa
        for move in follow.left_behind(record.children.values(), sa.local, sa.remote, udp_encap):
            child = move.child
            child.local, child.remote, child.event = sa.local, sa.remote, move.event
            log.info("%s: CHILD_SA %s follows the IKE SA to %s <-> %s", record.name, child.event.name,
                     sa.local, sa.remote)  # fmt: skip
            self._queue_work(record, functools.partial(self._move, installer, move.old_key, child))

    def _known_local(self, data: bytes, local: Address) -> Address:
        """The shared socket may be wildcard-bound: reuse the address the SA already uses."""
        sa = self._sa_for(data)
        return Address(sa.local.host, local.port) if sa is not None else local

    def _sa_for(self, data: bytes) -> IkeSa | None:
        """The IKE SA an IKE message names by our SPI, if we hold it."""
        try:
            header = parse_header(data)
        except ParseError:
            return None
        return self._by_spi.get(header.spi_r if header.is_initiator else header.spi_i)

    def _adopt_responder_sa(self, sa: IkeSa) -> None:
        record = self._track(sa)
        if record.stock is not None:
            sa.allocate_spi = record.stock.take

    def _track(self, sa: IkeSa) -> SaRecord:
        stock = None
        # An SA refused within its first datagram never announces an SPI; reserving one anyway
        # would cost the data plane two requests per unauthenticated packet.
        if self.spis is not None and not sa.closed:
            protocols = {ProtocolId(c.protocol) for cfg in sa.candidates for c in cfg.children}
            stock = self.spis.stock(sa.local, sa.remote, protocols or {ProtocolId.ESP})
        self._handles += 1
        record = SaRecord(sa, stock, time.time(), handle=self._handles)
        self.records[sa] = record
        self.by_handle[record.handle] = record
        self._by_spi[sa.local_spi] = sa
        return record

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        try:
            self.table.handle_timers(self.now())
        except Exception:
            self._unexpected(None, "in IKE timers")
        self._pump()

    def _pump(self) -> None:
        """Acts on everything the engine produced since the last pump."""
        if self._closed or self._loop is None:
            return
        try:
            out = self.table.datagrams_to_send()
            events = self.table.events()
        except Exception:
            out, events = [], []
            self._unexpected(None, "draining engine output")
        queued = self._work.qsize()
        closed: dict[IkeSa, None] = {}
        for sa, ev in events:
            try:
                self._dispatch(sa, ev)
            except Exception:
                self._unexpected(sa, f"handling its {type(ev).__name__}")
            if sa.closed:
                closed[sa] = None
        self._persist(closed)
        if self._work.qsize() > queued and out:
            # Make-before-break: an answer may announce an inbound SPI (or tell the peer to
            # switch, e.g. the DELETE after a rekey) only once the data plane has it.
            self._queue_work(None, functools.partial(self._send_later, out))
        else:
            for d in out:
                self._send(d)
        for sa in closed:  # after all its events: an SA closes with several (CHILD_SAs first)
            self._forget(sa)
        self._arm_timer()

    async def _send_later(self, out: list[OutgoingDatagram]) -> None:
        if self._closed:
            return
        for d in out:
            self._send(d)

    def _arm_timer(self) -> None:
        assert self._loop is not None
        deadline = self.table.next_timer()
        if deadline == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = deadline
        if deadline is not None:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _send(self, d: OutgoingDatagram) -> None:
        ep = pick(self._endpoints.all, d.local)
        if ep is None:
            self.stats["dropped_no_socket"] += 1
            log.warning("no socket to send from %s", d.local)
            return
        try:
            udp.send(ep.sock, ep.bound, d.wire(), d.local, d.remote)
        except OSError as exc:
            self.stats["send_errors"] += 1
            log.debug("send %s -> %s: %s", d.local, d.remote, exc)
            return
        self.stats["natt_keepalives_sent" if d.keepalive else "datagrams_sent"] += 1

    # ------------------------------------------------------------------ failing closed

    def _unexpected(self, sa: IkeSa | None, where: str) -> None:
        """Call from an `except` block: a bug of ours (the engine promises not to raise). It
        fails the IKE SA it hit, if any; in strict mode it is raised again."""
        if sa is None:
            self.stats["adapter_errors"] += 1
            log.exception("unexpected error %s", where)
        elif sa not in self._failed:
            self._fail_closed(sa, where)
        else:
            self.stats["adapter_errors"] += 1  # already failed and logged once
        if strict():
            raise

    def _fail_closed(self, sa: IkeSa, where: str) -> None:
        self.stats["sa_failed_closed"] += 1
        record = self.records.get(sa)
        self._failed[sa] = record if record is not None and record.sa is sa else None
        log.exception("%s: unexpected error %s; failing IKE SA %s closed",
                      record.name if record else sa.config.name, where, SpiText(sa))  # fmt: skip
        if record is not None and record.sa is sa:  # (not the old SA of an IKE rekey: its successor's)
            record.outcome = FAILED_CLOSED
            if self.installer is not None:
                installer = self.installer
                for child in record.children.values():
                    self._queue_work(None, functools.partial(self._remove, installer, child.key))
            record.children.clear()
        try:  # the engine drops it (its CHILD_SA events find nothing left to remove)
            if not sa.closed:
                sa.close_deleted(by_peer=False)
        except Exception:  # the engine itself is broken here: forget the SA without it
            self.stats["close_failed"] += 1
            self._forget(sa)
        if self._loop is not None:
            self._loop.call_soon(self._pump)  # its closing events

    # ------------------------------------------------------------------ events

    def _dispatch(self, sa: IkeSa, ev: Event) -> None:
        if sa in self._failed:
            self._closing_after_failure(sa, ev)
            return
        record = self.records.get(sa)
        if record is None and sa.spawned:
            return  # the redundant IKE SA of a rekey collision: never carried anything
        if record is None:  # an SA the responder created and closed within one input
            record = self._track(sa)
        if record.sa is not sa:
            return  # an IKE SA replaced by a rekey, closing: its successor carries the record
        if isinstance(ev, IkeSaRekeyed):
            self._rekeyed(record, sa, ev)
        log_event(record.name, sa, ev)
        if isinstance(ev, IkeSaEstablished):
            record.established, record.established_at = ev, time.time()
        elif isinstance(ev, ChildSaEstablished):
            child = ChildRecord(ev, sa.local, sa.remote)
            record.replacing.discard(ev.name)
            olds = takeover.predecessors(self.records.values(), record, ev) if self.installer else frozenset()
            record.children[ev.spi_in] = child
            if olds:
                self._takeovers[child.key] = takeover.Takeover(child.key, olds)
            if self.installer is not None:
                self._queue_work(record, functools.partial(self._install, record, child))
        elif isinstance(ev, ChildSaDeleted):
            record.children.pop(ev.spi_in, None)
            if self.installer is not None:
                key: ChildKey = (sa.local.host, ev.protocol, ev.spi_in)
                if (waiting := self._takeover_of_old(key)) is not None:
                    waiting.deleted.append(key)  # removed once its successor carries traffic
                else:
                    self._end_takeover(key, activate=False)  # (a successor deleted before it took over)
                    self._queue_work(record, functools.partial(self._remove, self.installer, key))
        elif isinstance(ev, ChildSaRekeyed):
            if (successor := record.children.get(ev.new_spi_in)) is not None:
                successor.outbound_live = True
            if self.installer is not None:
                new_key: ChildKey = (sa.local.host, ev.protocol, ev.new_spi_in)
                self._queue_work(record, functools.partial(self._activate, self.installer, new_key))
        elif isinstance(ev, ChildSaFailed):
            record.replacing.discard(ev.name)
        elif isinstance(ev, AddressesUpdated):
            # MOBIKE moved the IKE SA (and NAT detection on the new path decided ESP-in-UDP).
            if self.installer is not None and record.children:
                self._follow_addresses(record, self.installer, ev.udp_encap)
        elif isinstance(ev, IkeSaFailed):
            record.outcome = f"failed: {ev.reason}"
        elif isinstance(ev, IkeSaDeleted):
            record.outcome = "deleted by peer" if ev.by_peer else "deleted"
        if self.on_event is not None:
            self.on_event(record, ev)  # an exception fails this SA closed (`_pump`)

    def _closing_after_failure(self, sa: IkeSa, ev: Event) -> None:
        """The events of an SA failed closed: its data-plane state is gone already; the
        callback hears that it closed (a reconciler then looks at its tunnel again)."""
        if not isinstance(ev, IkeSaDeleted | IkeSaFailed):
            return
        record = self._failed.pop(sa)
        if record is not None and self.on_event is not None:
            try:
                self.on_event(record, ev)
            except Exception:  # the SA is failed already; this is the same bug again
                self.stats["adapter_errors"] += 1

    def _rekeyed(self, record: SaRecord, old: IkeSa, ev: IkeSaRekeyed) -> None:
        new = self.table.get(ev.new_local_spi)
        if new is None:
            log.error("%s: successor of IKE SA %s not found", record.name, SpiText(old))
            return
        record.sa = new
        self.records[new] = record
        self._by_spi[new.local_spi] = new
        log.info("%s: IKE SA %s REKEYED to %s", record.name, SpiText(old), SpiText(new))

    def _forget(self, sa: IkeSa) -> None:
        record = self.records.pop(sa, None)
        if self._by_spi.get(sa.local_spi) is sa:
            del self._by_spi[sa.local_spi]
        if record is not None and record.sa is sa:
            self.by_handle.pop(record.handle, None)
            if record.stock is not None:
                record.stock.release()
            self.history.append(record)

    # ------------------------------------------------------------------ data plane work

    def _queue_work(self, record: SaRecord | None, job: Job) -> None:
        """`record`: the IKE SA a failure of the job fails closed (None: no single one)."""
        self._work.put_nowait((record, job))

    async def _run_work(self) -> None:
        while True:
            record, job = await self._work.get()
            try:
                await job()
            except Exception:
                with self._strict_in_task():
                    self._unexpected(record.sa if record else None, "in a data-plane job")
            finally:
                if record is not None and not self._closed:  # what it installed, moved or removed
                    self._persist([record.sa])
                self._work.task_done()

    @contextlib.contextmanager
    def _strict_in_task(self) -> Iterator[None]:
        """In strict mode a background task keeps running: the failure waits for `settle` or
        `close`, which raise it."""
        try:
            yield
        except Exception as exc:
            self.strict_failure = self.strict_failure or exc

    async def _install(self, record: SaRecord, child: ChildRecord) -> None:
        assert self.installer is not None
        ev = child.event
        if ev.spi_in not in record.children:
            return  # deleted again before we got to it
        # A rekey or a replacement shares the reqid of the pair it `replaces`: both then match
        # the same policies and traffic keeps flowing while outbound moves over.
        reqid = self.installer.reqid_of((child.local.host, ev.protocol, ev.replaces)) if ev.replaces else None
        held = child.key in self._takeovers
        try:
            await self.installer.install(ev, child.local, child.remote, reqid=reqid,
                                         outbound=ev.outbound_active and not held,
                                         tunnel=record.traffic_name)  # fmt: skip
        except (DataPlaneError, InstallError) as exc:
            self._end_takeover(child.key, activate=False)
            child.install_error = str(exc)
            self.stats["child_install_failed"] += 1
            log.error("%s: CHILD_SA %s could not be installed: %s; deleting it", record.name, ev.name, exc)
            if not record.sa.closed:
                record.sa.delete_child(ev.spi_in, self.now())
                self._pump()
            return
        child.installed = True
        if held:
            task = asyncio.get_running_loop().create_task(self._watch_takeover(record, child))
            self._takeover_tasks.add(task)
            task.add_done_callback(self._takeover_tasks.discard)
            return
        child.outbound_live = child.outbound_live or ev.outbound_active

    def _takeover_of_old(self, key: ChildKey) -> takeover.Takeover | None:
        return next((t for t in self._takeovers.values() if key in t.olds), None)

    async def _watch_takeover(self, record: SaRecord, child: ChildRecord) -> None:
        """Holds the new pair's outbound SA until the peer sends on the pair or WAIT passed."""
        assert self.installer is not None
        key, start = child.key, time.monotonic()  # (its key in `_takeovers`, where it was installed)
        why = f"no packet in {takeover.WAIT:g} s"
        while key in self._takeovers and time.monotonic() - start < takeover.WAIT:
            plan = self.installer.installed.get(child.key)  # (MOBIKE may have moved it meanwhile)
            if plan is None:
                break  # removed: the end below only removes the old pairs that waited for it
            with contextlib.suppress(DataPlaneError):  # (read again: the pair is being set up)
                if (await self.installer.dataplane.counters(plan.inbound.id)).packets:
                    why = f"the peer's first packet after {time.monotonic() - start:.3f} s"
                    break
            await asyncio.sleep(takeover.POLL)
        if key in self._takeovers:
            log.info("%s: CHILD_SA %s %08x_i takes over from another IKE SA's pair (%s)",
                     record.name, child.event.name, child.event.spi_in, why)  # fmt: skip
            live = record.children.get(child.event.spi_in) is child and child.key in self.installer.installed
            self._end_takeover(key, activate=live, now_at=child.key)
            child.outbound_live = child.outbound_live or live

    def _end_takeover(self, key: ChildKey, *, activate: bool, now_at: ChildKey | None = None) -> None:
        """The new pair (installed as `key`, now at `now_at` if MOBIKE moved it) sends from now on
        (`activate`); the old pairs whose IKE SA went meanwhile are removed after that, in order on
        the data-plane worker."""
        t = self._takeovers.pop(key, None)
        if t is None or self.installer is None:
            return
        if activate:
            self.stats["child_takeovers"] += 1
            self._queue_work(None, functools.partial(self._activate, self.installer, now_at or key))
        for old in t.deleted:
            self._queue_work(None, functools.partial(self._remove, self.installer, old))

    async def _activate(self, installer: ChildInstaller, key: ChildKey) -> None:
        try:
            await installer.activate(key)
        except DataPlaneError as exc:
            self.stats["child_activate_failed"] += 1
            log.error("could not switch outbound traffic to CHILD_SA %s: %s", key, exc)

    async def _remove(self, installer: ChildInstaller, key: ChildKey) -> None:
        try:
            await installer.remove(key)
        except DataPlaneError as exc:
            self.stats["child_remove_failed"] += 1
            log.error("could not remove CHILD_SA %s from the data plane: %s", key, exc)

    async def _move(self, installer: ChildInstaller, key: ChildKey, child: ChildRecord) -> None:
        try:
            await installer.move(key, child.event, child.local, child.remote)
        except (DataPlaneError, InstallError) as exc:
            self.stats["child_move_failed"] += 1
            log.error("CHILD_SA %s could not follow its IKE SA: %s", child.event.name, exc)

    # ------------------------------------------------------------------ traffic as liveness

    async def _watch_traffic(self) -> None:
        while True:
            wait = liveness.SCAN_MAX
            try:
                wait = await self.feed_traffic()
            except Exception:
                with self._strict_in_task():
                    self._unexpected(None, "reading inbound CHILD_SA counters")
            await asyncio.sleep(wait)

    async def feed_traffic(self) -> float:
        """Tells each IKE SA with DPD that heard nothing for half its DPD delay (nor was checked
        in that time) whether inbound packets arrived on any of its CHILD_SAs since the last
        check (liveness.py). Returns the seconds until the next SA is due."""
        now = self.now()
        due: list[float] = []
        for record in self.active():
            sa = record.sa
            at = liveness.check_due(sa.config.dpd_delay, sa.last_inbound, record.traffic_checked_at)
            if at is None or not sa.established:
                continue
            if now < at:
                due.append(at)
                continue
            record.traffic_checked_at = now
            due.append(now + sa.config.dpd_delay / 2)
            try:
                arrived = await self._inbound_moved(record)
            except Exception:
                self._unexpected(sa, "reading its inbound counters")
                continue
            if arrived and record.sa is sa and not sa.closed:
                self.stats["traffic_seen"] += 1
                sa.traffic_seen(self.now())
        self._pump()
        return liveness.next_scan(self.now(), due)

    async def _inbound_moved(self, record: SaRecord) -> bool:
        """Whether an inbound packet counter of the SA's installed CHILD_SAs moved."""
        assert self.installer is not None
        arrived = False
        for child in list(record.children.values()):
            plan = self.installer.installed.get(child.key)
            if plan is None or not child.installed:
                continue
            try:
                packets = (await self.installer.dataplane.counters(plan.inbound.id)).packets
            except DataPlaneError:
                continue
            arrived |= liveness.moved(child.packets_in, packets)
            child.packets_in = packets
        return arrived

    # ------------------------------------------------------------------ status

    async def status(self) -> dict[str, object]:
        """A JSON-ready snapshot: IKE SAs with their CHILD_SAs and counters, recent failures."""
        dataplane = self.installer is not None
        sas = [sa_status(r, await self._counters(r), dataplane=dataplane) for r in self.active()]
        return {
            "ike_sas": sas,
            "recent": [closed_status(r) for r in self.history],
            "stats": {
                "adapter": dict(self.stats),
                "responder": dict(self.responder.stats),
                "table": dict(self.table.stats),
                "install": dict(self.installer.stats) if self.installer else {},
                "spi": dict(self.spis.stats) if self.spis else {},
            },
            "dataplane": self.dataplane.capabilities.backend if self.dataplane else None,
            "listening": [str(a) for a in self.endpoints],
        }

    async def _counters(self, record: SaRecord) -> dict[int, dict[str, int] | None]:
        if self.installer is None:
            return {}
        return {
            spi: counters_doc(await self.installer.counters(c.key))
            for spi, c in list(record.children.items())
            if c.installed
        }


def source_address_for(remote_host: str) -> str:
    """The address the kernel would send from to reach `remote_host` (no packet is sent)."""
    family = socket.AF_INET6 if ":" in remote_host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.connect((remote_host, 9))
        return str(s.getsockname()[0])
