"""TCP MSS clamping (the `iptables TCPMSS --clamp-mss-to-pmtu` idea) for SYN and SYN-ACK
segments crossing the tunnel, with the RFC 1624 incremental checksum update so the rest of the
segment need not be summed again."""

from __future__ import annotations

from meshsec.agent.dataplane.userspace.packet import IPPROTO_TCP

_SYN = 0x02
_OPT_EOL = 0
_OPT_NOP = 1
_OPT_MSS = 2


def is_tcp_syn(pkt: bytes | bytearray) -> bool:
    """Cheap pre-check so the hot path copies only SYN segments into a mutable buffer."""
    v = pkt[0] >> 4
    if v == 4:
        off = (pkt[0] & 0x0F) * 4
        return pkt[9] == IPPROTO_TCP and len(pkt) >= off + 20 and bool(pkt[off + 13] & _SYN)
    return v == 6 and pkt[6] == IPPROTO_TCP and len(pkt) >= 60 and bool(pkt[53] & _SYN)


def clamp_mss(pkt: bytearray, mss4: int, mss6: int) -> bool:
    """Lower the MSS option of a TCP SYN (or SYN-ACK) in place to the limit for its IP version.
    Returns True if the packet was changed. Non-TCP, non-SYN, fragments and malformed options are
    left alone."""
    v = pkt[0] >> 4
    if v == 4:
        if len(pkt) < 20 or pkt[9] != IPPROTO_TCP or (pkt[6] & 0x3F) or pkt[7]:
            return False
        off = (pkt[0] & 0x0F) * 4
        limit = mss4
    elif v == 6:
        if len(pkt) < 40 or pkt[6] != IPPROTO_TCP:
            return False
        off = 40
        limit = mss6
    else:
        return False
    if len(pkt) < off + 20 or not pkt[off + 13] & _SYN:
        return False
    data_off = (pkt[off + 12] >> 4) * 4
    end = off + data_off
    if data_off < 20 or end > len(pkt):
        return False
    i = off + 20
    while i < end:
        kind = pkt[i]
        if kind == _OPT_EOL:
            return False
        if kind == _OPT_NOP:
            i += 1
            continue
        if i + 1 >= end:
            return False
        length = pkt[i + 1]
        if length < 2 or i + length > end:
            return False
        if kind == _OPT_MSS and length == 4:
            old = (pkt[i + 2] << 8) | pkt[i + 3]
            if old <= limit:
                return False
            pkt[i + 2] = limit >> 8
            pkt[i + 3] = limit & 0xFF
            if (i - off) % 2:
                # The value straddles two 16-bit words of the checksum: its bytes sum swapped.
                old, limit = _swap(old), _swap(limit)
            _update_checksum(pkt, off + 16, old, limit)
            return True
        i += length
    return False


def _update_checksum(pkt: bytearray, at: int, old: int, new: int) -> None:
    # RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m')
    hc = (pkt[at] << 8) | pkt[at + 1]
    total = (~hc & 0xFFFF) + (~old & 0xFFFF) + new
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    res = ~total & 0xFFFF
    pkt[at] = res >> 8
    pkt[at + 1] = res & 0xFF


def _swap(v: int) -> int:
    return ((v & 0xFF) << 8) | (v >> 8)
