"""The packet engine: TUN packets out through the SPD to ESP/AH, wire packets in through the
SAD to the TUN. It holds no sockets; I/O goes through an injected `WireOutput`, so the same
engine runs under the threaded or the asyncio driver and under unit tests.

Every inbound failure is a counted drop, never an exception: the driver calls these methods in a
loop that must survive hostile input, and one SA's trouble must not affect another.

Threading: the outbound path (`from_tun`) and the inbound path (`from_*`) touch disjoint state
(outbound SAs and `drops_out` versus inbound SAs and `drops`), so each may run on its own thread;
the control plane only swaps references (SPD tables, dict entries).
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Protocol

from meshsec.agent.dataplane.api import (
    Acquire,
    DataPlaneEvent,
    PolicyAction,
    SaId,
)
from meshsec.agent.dataplane.userspace.ah import zero_mutable_ipv4
from meshsec.agent.dataplane.userspace.esp import Drop, SequenceExhausted
from meshsec.agent.dataplane.userspace.mss import clamp_mss, is_tcp_syn
from meshsec.agent.dataplane.userspace.packet import (
    IPPROTO_AH,
    IPPROTO_ESP,
    IPPROTO_IPIP,
    IPPROTO_IPV6,
    IPPROTO_NONE,
    IPPROTO_TCP,
    build_ipv4,
    build_ipv4_raw,
    build_ipv6,
    l4_info,
)
from meshsec.agent.dataplane.userspace.sa_state import InboundSa, OutboundSa, SaState
from meshsec.agent.dataplane.userspace.spd import Spd

_ACQUIRE_INTERVAL = 1.0


class WireOutput(Protocol):
    def send_ipv4(self, packet: bytes, dst: str) -> None:
        """A complete IPv4 packet (header included); `dst` is its destination, for routing."""

    def send_ipv6(self, payload: bytes, protocol: int, src: bytes, dst: str) -> None: ...

    def send_udp(self, datagram: bytes, dst: tuple[str, int], src: str) -> None:
        """From the UDP 4500 socket that `src` (the SA's outer source) is bound to."""

    def write_tun(self, packet: bytes | bytearray) -> None: ...


class Engine:
    def __init__(
        self, output: WireOutput, emit: Callable[[DataPlaneEvent], None], mss4: int, mss6: int
    ) -> None:
        self.output = output
        self.emit = emit
        self.mss4 = mss4
        self.mss6 = mss6
        # Drop counters per path: with the two-thread loop each list has a single writer.
        self.drops = [0] * len(Drop)  # wire -> TUN
        self.drops_out = [0] * len(Drop)  # TUN -> wire
        self.now = 0.0  # wall clock, set by the driver once per batch
        self.spd_out = Spd(())
        self.spd_in = Spd(())
        self.inbound: dict[tuple[int, int], InboundSa] = {}
        self.outbound: dict[SaId, OutboundSa] = {}
        self._out_by_reqid: dict[int, OutboundSa] = {}
        self._last_acquire: dict[int, float] = {}
        self._ident = 0

    # -- control plane (called from the asyncio side; each step is one atomic reference swap) --

    def add_outbound(self, state: OutboundSa) -> None:
        self.outbound[state.sa.id] = state
        self._out_by_reqid[state.sa.reqid] = state  # newest SA for a reqid carries new traffic

    def add_inbound(self, state: InboundSa) -> None:
        self.inbound[(state.sa.id.spi, int(state.sa.id.protocol))] = state

    def remove(self, sa_id: SaId) -> SaState | None:
        state: SaState | None = self.outbound.pop(sa_id, None)
        if state is not None:
            reqid = state.sa.reqid
            if self._out_by_reqid.get(reqid) is state:
                rest = [s for s in self.outbound.values() if s.sa.reqid == reqid and not s.dead]
                if rest:
                    self._out_by_reqid[reqid] = rest[-1]
                else:
                    del self._out_by_reqid[reqid]
            return state
        key = (sa_id.spi, int(sa_id.protocol))
        found = self.inbound.get(key)
        if found is not None and found.sa.id == sa_id:
            return self.inbound.pop(key)
        return None

    def set_policies(self, spd_out: Spd, spd_in: Spd) -> None:
        self.spd_out = spd_out
        self.spd_in = spd_in

    # -- outbound: TUN -> wire --

    def from_tun(self, pkt: bytes) -> None:
        n = len(pkt)
        v = pkt[0] >> 4 if n else 0
        if v == 4 and n >= 20:
            pair = pkt[12:20]
        elif v == 6 and n >= 40:
            pair = pkt[8:40]
        else:
            self.drops_out[Drop.MALFORMED] += 1
            return
        cands = self.spd_out.candidates(pair)
        if not cands:
            self.drops_out[Drop.NO_POLICY] += 1
            return
        if cands[0].selector.any_l4:
            policy = cands[0].policy
        else:
            proto, _, sport, dport = l4_info(pkt)
            for entry in cands:
                if entry.selector.matches_l4(proto, sport, dport):
                    policy = entry.policy
                    break
            else:
                self.drops_out[Drop.NO_POLICY] += 1
                return
        tmpl = policy.template
        if policy.action is not PolicyAction.PROTECT or tmpl is None:
            if policy.action is PolicyAction.BYPASS and v == 4:
                self._send4(pkt, socket.inet_ntop(socket.AF_INET, pair[4:]))
            else:
                self.drops_out[Drop.BLOCKED] += 1
            return
        st = self._out_by_reqid.get(tmpl.reqid)
        if st is None or st.dead:
            self.drops_out[Drop.NO_SA] += 1
            last = self._last_acquire.get(tmpl.reqid, -_ACQUIRE_INTERVAL)
            if self.now - last >= _ACQUIRE_INTERVAL:
                self._last_acquire[tmpl.reqid] = self.now
                self.emit(Acquire(policy.selector, tmpl.reqid))
            return
        if (pkt[9] if v == 4 else pkt[6]) == IPPROTO_TCP and is_tcp_syn(pkt):
            buf = bytearray(pkt)
            if clamp_mss(buf, self.mss4, self.mss6):
                pkt = bytes(buf)
        if st.tunnel:
            payload = pkt
            nh = IPPROTO_IPIP if v == 4 else IPPROTO_IPV6
        elif v == 4:
            payload = pkt[(pkt[0] & 0x0F) * 4 :]
            nh = pkt[9]
        else:
            payload = pkt[40:]
            nh = pkt[6]
        st.bytes += n
        st.packets += 1
        st.last_used = self.now
        if st.bytes >= st.next_bytes or st.packets >= st.next_packets:
            st.limit_reached()
        try:
            if st.esp is not None:
                esp = st.esp.seal(payload, nh)
                if st.encap_dst is not None:
                    self._send_udp(esp, st.encap_dst, st.src_s)
                elif st.ipv6:
                    self._send6(esp, IPPROTO_ESP, st.src_b, st.dst_s)
                else:
                    self._send4(build_ipv4_raw(st.src_b, st.dst_b, IPPROTO_ESP, len(esp), 0) + esp, st.dst_s)
            elif st.ah is not None:
                self._send_ah(st, payload, nh)
        except SequenceExhausted:
            st.expire(hard=True)
            self.drops_out[Drop.EXPIRED] += 1

    def _send_ah(self, st: OutboundSa, payload: bytes, nh: int) -> None:
        ah = st.ah
        assert ah is not None
        total = ah.ah_len + len(payload)
        if st.ipv6:
            zeroed = build_ipv6(st.src_b, st.dst_b, IPPROTO_AH, total, hop_limit=0)
            self._send6(ah.seal(zeroed, payload, nh) + payload, IPPROTO_AH, st.src_b, st.dst_s)
            return
        # The IPv4 ID is immutable for AH, so we choose it rather than let the kernel fill it in.
        self._ident = self._ident % 0xFFFF + 1
        header = build_ipv4(st.src_b, st.dst_b, IPPROTO_AH, total, self._ident)
        self._send4(header + ah.seal(zero_mutable_ipv4(header), payload, nh) + payload, st.dst_s)

    def _send4(self, data: bytes, dst: str) -> None:
        try:
            self.output.send_ipv4(data, dst)
        except OSError:
            self.drops_out[Drop.SEND_ERROR] += 1

    def _write_tun(self, data: bytes) -> None:
        try:
            self.output.write_tun(data)
        except OSError:
            self.drops[Drop.SEND_ERROR] += 1

    def _send6(self, payload: bytes, proto: int, src: bytes, dst: str) -> None:
        try:
            self.output.send_ipv6(payload, proto, src, dst)
        except OSError:
            self.drops_out[Drop.SEND_ERROR] += 1

    def _send_udp(self, data: bytes, dst: tuple[str, int], src: str) -> None:
        try:
            self.output.send_udp(data, dst, src)
        except OSError:
            self.drops_out[Drop.SEND_ERROR] += 1

    # -- inbound: wire -> TUN --

    def from_ipv4_raw(self, data: bytes) -> None:
        """An IPv4 packet from a raw ESP or AH socket (header included)."""
        if len(data) < 20:
            self.drops[Drop.MALFORMED] += 1
            return
        ihl = (data[0] & 0x0F) * 4
        if data[9] == IPPROTO_ESP:
            self.from_esp(data[ihl:])
        elif ihl != 20:
            self.drops[Drop.MALFORMED] += 1  # AH behind IPv4 options: mutability rules not implemented
        else:
            self.from_ah(data[20:], zero_mutable_ipv4(data[:20]))

    def from_ipv6_ah(self, data: bytes) -> None:
        """An AH packet from a raw IPv6 socket (the kernel strips the IPv6 header)."""
        if len(data) < 12:
            self.drops[Drop.MALFORMED] += 1
            return
        st = self.inbound.get((int.from_bytes(data[4:8], "big"), IPPROTO_AH))
        if st is None:
            self.drops[Drop.UNKNOWN_SPI] += 1
            return
        # Rebuilt from the SA's endpoints: the ICV then also proves the outer addresses.
        self.from_ah(data, build_ipv6(st.peer_b, st.dst_b, IPPROTO_AH, len(data), hop_limit=0))

    def from_esp(self, esp: bytes) -> None:
        """An ESP packet starting at its SPI (raw socket payload or UDP-encapsulated)."""
        if len(esp) < 8:
            self.drops[Drop.MALFORMED] += 1
            return
        st = self.inbound.get((int.from_bytes(esp[:4], "big"), IPPROTO_ESP))
        if st is None or st.esp is None:
            self.drops[Drop.UNKNOWN_SPI] += 1
            return
        if st.dead:
            self.drops[Drop.EXPIRED] += 1
            return
        res = st.esp.open(esp)
        if isinstance(res, Drop):
            self._count_sa_drop(st, res)
            return
        self._deliver(st, res[0], res[1])

    def from_ah(self, ah: bytes, zeroed_outer: bytes) -> None:
        if len(ah) < 12:
            self.drops[Drop.MALFORMED] += 1
            return
        st = self.inbound.get((int.from_bytes(ah[4:8], "big"), IPPROTO_AH))
        if st is None or st.ah is None:
            self.drops[Drop.UNKNOWN_SPI] += 1
            return
        if st.dead:
            self.drops[Drop.EXPIRED] += 1
            return
        res = st.ah.open(zeroed_outer, ah)
        if isinstance(res, Drop):
            self._count_sa_drop(st, res)
            return
        self._deliver(st, res[0], res[1])

    def _count_sa_drop(self, st: InboundSa, reason: Drop) -> None:
        self.drops[reason] += 1
        if reason is Drop.REPLAY:
            st.replay_dropped += 1
        elif reason is Drop.INTEGRITY:
            st.integrity_failed += 1

    def _deliver(self, st: InboundSa, nh: int, payload: bytes) -> None:
        if nh == IPPROTO_NONE:
            self.drops[Drop.DUMMY] += 1
            return
        if st.tunnel:
            v = payload[0] >> 4 if payload else 0
            if not ((nh == IPPROTO_IPIP and v == 4 and len(payload) >= 20)
                    or (nh == IPPROTO_IPV6 and v == 6 and len(payload) >= 40)):
                self.drops[Drop.MALFORMED] += 1
                return
            inner = payload
        elif st.ipv6:
            inner = build_ipv6(st.peer_b, st.dst_b, nh, len(payload)) + payload
        else:
            inner = build_ipv4(st.peer_b, st.dst_b, nh, len(payload), 0) + payload
        if not self._inbound_allowed(st, inner):
            self.drops[Drop.POLICY] += 1
            return
        st.bytes += len(inner)
        st.packets += 1
        st.last_used = self.now
        if st.bytes >= st.next_bytes or st.packets >= st.next_packets:
            st.limit_reached()
        if is_tcp_syn(inner):
            buf = bytearray(inner)
            clamp_mss(buf, self.mss4, self.mss6)
            inner = bytes(buf)
        self._write_tun(inner)

    def _inbound_allowed(self, st: InboundSa, inner: bytes) -> bool:
        """RFC 4301 section 5.2 step 4: the decrypted packet must match the SA's selectors."""
        if inner[0] >> 4 == 4:
            pair, half, version = inner[12:20], 4, 4
        else:
            pair, half, version = inner[8:40], 16, 6
        sel = st.selector
        proto = sport = dport = -1
        if sel is not None:
            src, dst = int.from_bytes(pair[:half], "big"), int.from_bytes(pair[half:], "big")
            if not sel.matches_addresses(version, src, dst):
                return False
            if not sel.any_l4:
                proto, _, sport, dport = l4_info(inner)
                if not sel.matches_l4(proto, sport, dport):
                    return False
        for entry in self.spd_in.candidates(pair):
            if not entry.selector.any_l4:
                if proto < 0:
                    proto, _, sport, dport = l4_info(inner)
                if not entry.selector.matches_l4(proto, sport, dport):
                    continue
            tmpl = entry.policy.template
            return (entry.policy.action is PolicyAction.PROTECT and tmpl is not None
                    and tmpl.reqid == st.sa.reqid)
        return False
