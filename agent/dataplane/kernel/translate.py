"""Between the data-plane interface's dataclasses and the XFRM netlink messages.

Everything the kernel needs to know about names lives here: the agent's algorithm names map to
the kernel crypto API names (RFC 4106 GCM with the salt at the end of the key; RFC 4868 HMAC-SHA2
truncations), port ranges map to XFRM's port/mask pairs, and every message carries the owner
mark (see `OwnerMark`).
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Any

from meshsec.agent.dataplane.api import (
    Acquire,
    DataPlaneError,
    Direction,
    Encryption,
    Integrity,
    IPAddress,
    IPNetwork,
    IpsecProtocol,
    Lifetime,
    Mode,
    Policy,
    PolicyAction,
    SaCounters,
    SaExpired,
    SaId,
    SecurityAssociation,
    TrafficSelector,
    Unsupported,
)
from meshsec.agent.dataplane.kernel import xfrm_messages as xm


@dataclass(frozen=True, slots=True)
class OwnerMark:
    """The XFRM mark (value, mask) on every SA and policy the agent installs.

    XFRM matches a packet when ``skb->mark & mask == value``. The default, value 0 with a mask of
    bits nobody else uses, therefore matches all traffic that does not carry those bits (i.e.
    normal traffic) while tagging the state as ours: dumps show it, policy lookups by selector
    compare it exactly, so state without this mark (another daemon's, an admin's) is never seen
    or removed by the agent.
    """

    value: int = 0
    mask: int = 0x4D53_0000  # "MS"

    def __post_init__(self) -> None:
        if not (0 <= self.value <= 0xFFFF_FFFF and 0 < self.mask <= 0xFFFF_FFFF):
            raise ValueError(f"owner mark {self.value:#x}/{self.mask:#x}: need a 32-bit value and a "
                             "non-zero mask")
        if self.value & ~self.mask:
            raise ValueError(f"owner mark value {self.value:#x} has bits outside its mask {self.mask:#x}")

    def attr(self) -> list[Any]:
        return ["XFRMA_MARK", {"v": self.value, "m": self.mask}]

    def matches(self, msg: Any) -> bool:
        mark = msg.get_attr("XFRMA_MARK")
        return mark is not None and mark["v"] == self.value and mark["m"] == self.mask


# RFC 4106 / RFC 7634: the 4-byte salt follows the cipher key; the kernel takes both as one key
# (rfc7539esp is the kernel's RFC 7634 template: 8-byte IV, salt at the end of the 36-byte key).
_AEAD = {"aes-gcm-16": "rfc4106(gcm(aes))", "chacha20-poly1305": "rfc7539esp(chacha20,poly1305)"}
# ICV lengths the kernel accepts per template; RFC 7634 defines only the 16-byte tag.
_AEAD_ICV_BITS = {"aes-gcm-16": (64, 96, 128), "chacha20-poly1305": (128,)}
_CRYPT = {"aes-cbc": "cbc(aes)", "null": "ecb(cipher_null)"}
# RFC 4868 truncations are the normal ones; others are refused rather than silently installed.
_AUTH = {"hmac-sha256": ("hmac(sha256)", 128), "hmac-sha384": ("hmac(sha384)", 192),
         "hmac-sha512": ("hmac(sha512)", 256)}
_DIR = {Direction.IN: xm.XFRM_POLICY_IN, Direction.OUT: xm.XFRM_POLICY_OUT, Direction.FWD: xm.XFRM_POLICY_FWD}
_DIR_BACK = {v: k for k, v in _DIR.items()}
_MODE = {Mode.TUNNEL: xm.XFRM_MODE_TUNNEL, Mode.TRANSPORT: xm.XFRM_MODE_TRANSPORT}
_NO_LIMITS = {
    "lft_soft_byte_limit": xm.XFRM_INF,
    "lft_hard_byte_limit": xm.XFRM_INF,
    "lft_soft_packet_limit": xm.XFRM_INF,
    "lft_hard_packet_limit": xm.XFRM_INF,
}


def family(addr: IPAddress | IPNetwork) -> int:
    return socket.AF_INET if addr.version == 4 else socket.AF_INET6


def pack_address(addr: IPAddress | None) -> bytes:
    return b"\0" * 16 if addr is None else addr.packed.ljust(16, b"\0")


def unpack_address(raw: bytes, fam: int) -> IPAddress:
    return ipaddress.ip_address(raw[:4] if fam == socket.AF_INET else raw[:16])


def _port_mask(ports: tuple[int, int], what: str) -> tuple[int, int]:
    lo, hi = ports
    if not 0 <= lo <= hi <= 0xFFFF:
        raise DataPlaneError(f"{what} port range {lo}-{hi} is not within 0-65535")
    size = hi - lo + 1
    # XFRM selectors hold port & mask, so only aligned power-of-two ranges are expressible.
    if size & (size - 1) or lo % size:
        raise Unsupported(f"{what} port range {lo}-{hi} cannot be expressed as an XFRM port/mask")
    return lo, 0xFFFF & ~(size - 1)


def selector_fields(sel: TrafficSelector, prefix: str = "sel_") -> dict[str, Any]:
    if sel.src.version != sel.dst.version:
        raise DataPlaneError(f"selector {sel.src} -> {sel.dst} mixes IPv4 and IPv6")
    sport, sport_mask = _port_mask(sel.src_ports, "source")
    dport, dport_mask = _port_mask(sel.dst_ports, "destination")
    if (sport_mask or dport_mask) and sel.protocol not in (socket.IPPROTO_TCP, socket.IPPROTO_UDP, 132):
        raise Unsupported(f"selector with ports needs TCP, UDP or SCTP, not IP protocol {sel.protocol}")
    return {
        prefix + "daddr": pack_address(sel.dst.network_address),
        prefix + "saddr": pack_address(sel.src.network_address),
        prefix + "dport": dport,
        prefix + "dport_mask": dport_mask,
        prefix + "sport": sport,
        prefix + "sport_mask": sport_mask,
        prefix + "family": family(sel.src),
        prefix + "prefixlen_d": sel.dst.prefixlen,
        prefix + "prefixlen_s": sel.src.prefixlen,
        prefix + "proto": sel.protocol,
    }


def _ports_back(port: int, mask: int) -> tuple[int, int]:
    return port & mask, (port & mask) | (~mask & 0xFFFF)


def selector_from(msg: Any, prefix: str = "sel_") -> TrafficSelector:
    fam = msg[prefix + "family"]
    src = ipaddress.ip_network(
        (unpack_address(msg[prefix + "saddr"], fam), msg[prefix + "prefixlen_s"]), strict=False)
    dst = ipaddress.ip_network(
        (unpack_address(msg[prefix + "daddr"], fam), msg[prefix + "prefixlen_d"]), strict=False)
    return TrafficSelector(
        src=src,
        dst=dst,
        protocol=msg[prefix + "proto"],
        src_ports=_ports_back(msg[prefix + "sport"], msg[prefix + "sport_mask"]),
        dst_ports=_ports_back(msg[prefix + "dport"], msg[prefix + "dport_mask"]),
    )


def _lifetime_fields(lt: Lifetime) -> dict[str, Any]:
    def limit(v: int) -> int:
        return v if v else xm.XFRM_INF

    return {
        "lft_soft_byte_limit": limit(lt.soft_bytes),
        "lft_hard_byte_limit": limit(lt.hard_bytes),
        "lft_soft_packet_limit": limit(lt.soft_packets),
        "lft_hard_packet_limit": limit(lt.hard_packets),
        "lft_soft_add_expires_seconds": lt.soft_seconds,
        "lft_hard_add_expires_seconds": lt.hard_seconds,
    }


def _algorithm_attrs(sa: SecurityAssociation) -> list[list[Any]]:
    attrs: list[list[Any]] = []
    enc, integ = sa.encryption, sa.integrity
    if sa.id.protocol is IpsecProtocol.AH:
        if enc is not None or integ is None:
            raise DataPlaneError(f"AH SA {sa.id.spi:#x} needs integrity and no encryption")
    elif enc is None:
        raise DataPlaneError(f"ESP SA {sa.id.spi:#x} needs an encryption algorithm")
    if enc is not None:
        attrs.append(_encryption_attr(enc, integ, sa.id.spi))
    if integ is not None:
        attrs.append(_integrity_attr(integ))
    return attrs


def _encryption_attr(enc: Encryption, integ: Integrity | None, spi: int) -> list[Any]:
    key = enc.key.reveal()
    if enc.name in _AEAD:
        if integ is not None:
            raise DataPlaneError(f"SA {spi:#x}: AEAD {enc.name} takes no separate integrity algorithm")
        icv = enc.icv_bits or 128
        if icv not in _AEAD_ICV_BITS[enc.name]:
            allowed = ", ".join(str(b) for b in _AEAD_ICV_BITS[enc.name])
            raise DataPlaneError(f"SA {spi:#x}: {enc.name} ICV of {icv} bits is not one of {allowed}")
        return ["XFRMA_ALG_AEAD", {"alg_name": _AEAD[enc.name].encode(), "alg_key_len": len(key) * 8,
                                   "alg_icv_len": icv, "alg_key": key}]
    if enc.name in _CRYPT:
        if integ is None:
            raise DataPlaneError(f"SA {spi:#x}: {enc.name} needs an integrity algorithm")
        return ["XFRMA_ALG_CRYPT", {"alg_name": _CRYPT[enc.name].encode(), "alg_key_len": len(key) * 8,
                                    "alg_key": key}]
    raise Unsupported(f"SA {spi:#x}: encryption algorithm {enc.name!r} is not one of "
                      f"{sorted([*_AEAD, *_CRYPT])}")


def _integrity_attr(integ: Integrity) -> list[Any]:
    if integ.name not in _AUTH:
        raise Unsupported(f"integrity algorithm {integ.name!r} is not one of {sorted(_AUTH)}")
    kernel_name, rfc_bits = _AUTH[integ.name]
    if integ.truncation_bits != rfc_bits:
        raise DataPlaneError(
            f"{integ.name} truncation must be {rfc_bits} bits (RFC 4868), got {integ.truncation_bits}")
    key = integ.key.reveal()
    return ["XFRMA_ALG_AUTH_TRUNC", {"alg_name": kernel_name.encode(), "alg_key_len": len(key) * 8,
                                     "alg_trunc_len": integ.truncation_bits, "alg_key": key}]


def sa_message(sa: SecurityAssociation, owner: OwnerMark) -> xm.xfrm_usersa_info:
    if sa.src.version != sa.id.dst.version:
        raise DataPlaneError(f"SA {sa.id.spi:#x}: outer addresses {sa.src} -> {sa.id.dst} mix families")
    if not 0 < sa.id.spi <= 0xFFFF_FFFF or sa.id.spi < 256:
        raise DataPlaneError(f"SA SPI {sa.id.spi:#x} is reserved or out of range (RFC 4303: >= 256)")
    msg = xm.xfrm_usersa_info()
    fields: dict[str, Any] = {
        "id_daddr": pack_address(sa.id.dst),
        "id_spi": sa.id.spi,
        "id_proto": int(sa.id.protocol),
        "saddr": pack_address(sa.src),
        "reqid": sa.reqid,
        "family": family(sa.src),
        "mode": _MODE[sa.mode],
        **_lifetime_fields(sa.lifetime),
    }
    if sa.selector is not None:
        fields.update(selector_fields(sa.selector))
    attrs = _algorithm_attrs(sa)
    if sa.esn or sa.replay_window > 32:
        # The kernel wants replay_window == 0 in the struct when XFRMA_REPLAY_ESN_VAL is present.
        window = max(sa.replay_window, 32)
        words = (window + 31) // 32
        attrs.append(["XFRMA_REPLAY_ESN_VAL", {"bmp_len": words, "replay_window": window,
                                               "bmp": b"\0" * (4 * words)}])
        if sa.esn:
            fields["flags"] = xm.XFRM_STATE_ESN
    else:
        fields["replay_window"] = sa.replay_window
    if sa.encap is not None:
        if sa.id.protocol is not IpsecProtocol.ESP:
            raise DataPlaneError(f"SA {sa.id.spi:#x}: UDP encapsulation is for ESP only (RFC 3948)")
        attrs.append(["XFRMA_ENCAP", {"encap_type": xm.UDP_ENCAP_ESPINUDP, "encap_sport": sa.encap.src_port,
                                      "encap_dport": sa.encap.dst_port, "encap_oa": b"\0" * 16}])
    if sa.if_id:
        attrs.append(["XFRMA_IF_ID", sa.if_id])
    attrs.append(owner.attr())
    msg.update(fields)
    msg["attrs"] = attrs
    return msg


def continued_sa_message(sa: SecurityAssociation, owner: OwnerMark, current: Any) -> xm.xfrm_usersa_info:
    """`sa` as a continuation of the installed SA `current` (a GETSA answer): its replay state
    (XFRMA_REPLAY_ESN_VAL: outbound and inbound sequence numbers, the window's bitmap) and its
    current lifetime (XFRMA_LTIME_VAL: bytes and packets so far) carried over (MOBIKE)."""
    msg = sa_message(sa, owner)
    replay = current.get_attr("XFRMA_REPLAY_ESN_VAL")
    attrs = [a for a in msg["attrs"] if a[0] != "XFRMA_REPLAY_ESN_VAL"]
    if replay is not None:
        names = ("bmp_len", "oseq", "seq", "oseq_hi", "seq_hi", "replay_window", "bmp")
        attrs.append(["XFRMA_REPLAY_ESN_VAL", {k: replay[k] for k in names}])
    elif any(a[0] == "XFRMA_REPLAY_ESN_VAL" for a in msg["attrs"]):
        raise DataPlaneError(f"SA {sa.id.spi:#x}: the installed SA has no ESN replay state to carry over")
    lifetime = {k: current[f"cur_{k}"] for k in ("bytes", "packets", "add_time", "use_time")}
    attrs.append(["XFRMA_LTIME_VAL", lifetime])
    msg["attrs"] = attrs
    return msg


def sa_id_message(sa_id: SaId, owner: OwnerMark) -> xm.xfrm_usersa_id:
    msg = xm.xfrm_usersa_id()
    msg.update({"daddr": pack_address(sa_id.dst), "spi": sa_id.spi, "family": family(sa_id.dst),
                "proto": int(sa_id.protocol)})
    msg["attrs"] = [owner.attr()]
    return msg


def allocspi_message(protocol: IpsecProtocol, src: IPAddress, dst: IPAddress, reqid: int,
                     owner: OwnerMark, spi_range: tuple[int, int]) -> xm.xfrm_userspi_info:
    if src.version != dst.version:
        raise DataPlaneError(f"SPI request {src} -> {dst} mixes address families")
    msg = xm.xfrm_userspi_info()
    msg.update({
        "info_id_daddr": pack_address(dst),
        "info_id_proto": int(protocol),
        "info_saddr": pack_address(src),
        "info_family": family(dst),
        "info_mode": xm.XFRM_MODE_TUNNEL,
        "info_reqid": reqid,
        "min": spi_range[0],
        "max": spi_range[1],
    })
    msg["attrs"] = [owner.attr()]
    return msg


def sa_id_from(msg: Any) -> SaId:
    return SaId(dst=unpack_address(msg["id_daddr"], msg["family"]), spi=msg["id_spi"],
                protocol=IpsecProtocol(msg["id_proto"]))


def counters_from(msg: Any) -> SaCounters:
    last = msg.get_attr("XFRMA_LASTUSED")
    return SaCounters(
        bytes=msg["cur_bytes"],
        packets=msg["cur_packets"],
        replay_dropped=msg["stats_replay"],
        integrity_failed=msg["stats_integrity_failed"],
        last_used=float(last) if last else (float(msg["cur_use_time"]) or None),
    )


def is_larval(msg: Any) -> bool:
    """An SPI reservation (ALLOCSPI) or an acquire placeholder: an SA with no algorithms yet."""
    names = {name for name, _ in msg.get("attrs", [])}
    return not names & {"XFRMA_ALG_AEAD", "XFRMA_ALG_CRYPT", "XFRMA_ALG_AUTH", "XFRMA_ALG_AUTH_TRUNC"}


def policy_message(policy: Policy, owner: OwnerMark) -> xm.xfrm_userpolicy_info:
    msg = xm.xfrm_userpolicy_info()
    fields: dict[str, Any] = {
        **selector_fields(policy.selector),
        **_NO_LIMITS,
        "priority": policy.priority,
        "dir": _DIR[policy.direction],
        "action": xm.XFRM_POLICY_BLOCK if policy.action is PolicyAction.BLOCK else xm.XFRM_POLICY_ALLOW,
        "share": xm.XFRM_SHARE_ANY,
    }
    attrs: list[list[Any]] = []
    if policy.action is PolicyAction.PROTECT:
        t = policy.template
        if t is None:
            raise DataPlaneError(
                f"protect policy {describe(policy.selector, policy.direction)} has no template")
        if t.mode is Mode.TUNNEL and (t.src is None or t.dst is None):
            raise DataPlaneError(f"tunnel template of {describe(policy.selector, policy.direction)} "
                                 "needs outer src and dst addresses")
        tmpl_family = family(t.dst) if t.dst is not None else family(policy.selector.src)
        attrs.append(["XFRMA_TMPL", {
            "id_daddr": pack_address(t.dst),
            "id_proto": int(t.protocol),
            "family": tmpl_family,
            "saddr": pack_address(t.src),
            "reqid": t.reqid,
            "mode": _MODE[t.mode],
            "share": xm.XFRM_SHARE_ANY,
            "aalgos": 0xFFFF_FFFF,
            "ealgos": 0xFFFF_FFFF,
            "calgos": 0xFFFF_FFFF,
        }])
    elif policy.template is not None:
        raise DataPlaneError(f"{policy.action.value} policy {describe(policy.selector, policy.direction)} "
                             "cannot have a template")
    if policy.if_id:
        attrs.append(["XFRMA_IF_ID", policy.if_id])
    attrs.append(owner.attr())
    msg.update(fields)
    msg["attrs"] = attrs
    return msg


def policy_id_message(selector: TrafficSelector, direction: Direction,
                      owner: OwnerMark, if_id: int = 0) -> xm.xfrm_userpolicy_id:
    msg = xm.xfrm_userpolicy_id()
    msg.update({**selector_fields(selector), "dir": _DIR[direction]})
    attrs: list[list[Any]] = [owner.attr()]
    if if_id:
        attrs.append(["XFRMA_IF_ID", if_id])
    msg["attrs"] = attrs
    return msg


def policy_key_from(msg: Any) -> tuple[TrafficSelector, Direction] | None:
    direction = _DIR_BACK.get(msg["dir"])
    if direction is None:  # socket policies (dir 3+) are never the agent's
        return None
    return selector_from(msg), direction


def describe(selector: TrafficSelector, direction: Direction) -> str:
    return f"{selector.src} -> {selector.dst} proto {selector.protocol} dir {direction.value}"


def expire_event(msg: Any) -> SaExpired:
    return SaExpired(sa=SaId(dst=unpack_address(msg["state_id_daddr"], msg["state_family"]),
                             spi=msg["state_id_spi"], protocol=IpsecProtocol(msg["state_id_proto"])),
                     hard=bool(msg["hard"]))


def acquire_event(msg: Any) -> Acquire:
    # The policy's selector (not the packet's /32s) names what the agent installed and must key.
    templates = msg.templates()
    reqid = templates[0]["reqid"] if templates else 0
    return Acquire(selector=selector_from(msg, "policy_sel_"), reqid=reqid)
