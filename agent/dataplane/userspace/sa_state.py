"""Per-SA runtime state: the sealed/opened transform, counters, lifetime limits.

Byte and packet limits are checked on the hot path with one comparison against the next
threshold (soft, then hard); time limits are timers in the control plane.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

from meshsec.agent.dataplane.api import (
    DataPlaneError,
    IpsecProtocol,
    Mode,
    SaExpired,
    SecurityAssociation,
    Unsupported,
)
from meshsec.agent.dataplane.userspace.ah import AhReceiver, AhSender
from meshsec.agent.dataplane.userspace.esp import EspReceiver, EspSender
from meshsec.agent.dataplane.userspace.replay import ReplayWindow
from meshsec.agent.dataplane.userspace.spd import CompiledSelector
from meshsec.agent.dataplane.userspace.transforms import IntegrityAlgorithm, RandomSource, make_esp_transform

Emit = Callable[[SaExpired], None]
_UNLIMITED = 1 << 80


class SaState:
    """Counters and lifetime for one SA, shared by both directions."""

    __slots__ = (
        "_emit",
        "_hard_bytes",
        "_hard_packets",
        "_soft_sent",
        "bytes",
        "dead",
        "dst_b",
        "dst_s",
        "encap_dst",
        "integrity_failed",
        "ipv6",
        "last_used",
        "next_bytes",
        "next_packets",
        "packets",
        "replay_dropped",
        "sa",
        "selector",
        "src_b",
        "src_s",
        "tunnel",
    )

    def __init__(self, sa: SecurityAssociation, emit: Emit) -> None:
        self.sa = sa
        self._emit = emit
        self.ipv6 = sa.id.dst.version == 6
        if sa.src.version != sa.id.dst.version:
            raise DataPlaneError(f"SA {sa.id}: source {sa.src} and destination differ in IP version")
        self.src_b = sa.src.packed
        self.dst_b = sa.id.dst.packed
        self.dst_s = str(sa.id.dst)
        self.src_s = str(sa.src)
        self.tunnel = sa.mode is Mode.TUNNEL
        self.encap_dst = (str(sa.id.dst), sa.encap.dst_port) if sa.encap else None
        self.selector = CompiledSelector.compile(sa.selector) if sa.selector else None
        self.bytes = 0
        self.packets = 0
        self.replay_dropped = 0
        self.integrity_failed = 0
        self.last_used: float | None = None
        self.dead = False
        self._soft_sent = False
        lt = sa.lifetime
        self._hard_bytes = lt.hard_bytes or _UNLIMITED
        self._hard_packets = lt.hard_packets or _UNLIMITED
        self.next_bytes = lt.soft_bytes or self._hard_bytes
        self.next_packets = lt.soft_packets or self._hard_packets

    def limit_reached(self) -> None:
        """Called when a byte or packet threshold is crossed (the engine inlines the check)."""
        if self.bytes >= self._hard_bytes or self.packets >= self._hard_packets:
            self.expire(hard=True)
        else:
            self.expire(hard=False)
            self.next_bytes = self._hard_bytes
            self.next_packets = self._hard_packets

    def expire(self, hard: bool) -> None:
        if self.dead:
            return
        if hard:
            self.dead = True
            self._emit(SaExpired(self.sa.id, hard=True))
        elif not self._soft_sent:
            self._soft_sent = True
            self._emit(SaExpired(self.sa.id, hard=False))


class OutboundSa(SaState):
    __slots__ = ("ah", "esp")

    def __init__(self, sa: SecurityAssociation, emit: Emit, random: RandomSource) -> None:
        super().__init__(sa, emit)
        self.esp: EspSender | None = None
        self.ah: AhSender | None = None
        if sa.id.protocol is IpsecProtocol.ESP:
            transform = make_esp_transform(sa.encryption, sa.integrity, sa.esn, random)
            self.esp = EspSender(sa.id.spi, transform, sa.esn)
        else:
            self.ah = AhSender(sa.id.spi, _ah_integrity(sa), sa.esn, self.ipv6)


class InboundSa(SaState):
    __slots__ = ("ah", "esp", "peer_b")

    def __init__(self, sa: SecurityAssociation, emit: Emit, random: RandomSource) -> None:
        super().__init__(sa, emit)
        window = ReplayWindow(sa.replay_window, sa.esn)
        self.esp: EspReceiver | None = None
        self.ah: AhReceiver | None = None
        self.peer_b = sa.src.packed  # the outer source we expect, for rebuilding headers
        if sa.id.protocol is IpsecProtocol.ESP:
            self.esp = EspReceiver(make_esp_transform(sa.encryption, sa.integrity, sa.esn, random), window)
        else:
            self.ah = AhReceiver(_ah_integrity(sa), window, self.ipv6)


def _ah_integrity(sa: SecurityAssociation) -> IntegrityAlgorithm:
    if sa.integrity is None:
        raise DataPlaneError(f"AH SA {sa.id} needs an integrity algorithm")
    if sa.encryption is not None:
        raise DataPlaneError(f"AH SA {sa.id} must not carry an encryption algorithm")
    if sa.encap is not None:
        raise Unsupported(f"AH SA {sa.id}: AH cannot cross NAT, UDP encapsulation is not defined for it")
    return IntegrityAlgorithm(sa.integrity)


def packed(addr: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6 if ":" in addr else socket.AF_INET, addr)
