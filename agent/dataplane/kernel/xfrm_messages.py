"""Netlink XFRM messages on pyroute2's nlmsg framework, mirroring <linux/xfrm.h> (uapi, Linux 6.x).

pyroute2 0.9 speaks NETLINK_XFRM only as a number: these classes are the structures and attribute
maps of include/uapi/linux/xfrm.h.  pyroute2 packs each field on its own (no C alignment), so the
structures below spell out the compiler's padding as explicit ``Nx`` fields; the sizes in the
comments are x86_64 ``sizeof`` values and `STRUCT_SIZES` is checked by the tests.  Nested C structs
are flattened with a prefix (``sel_`` for xfrm_selector, ``id_`` for xfrm_id, ``lft_``/``cur_`` for
the lifetimes) because pyroute2 fields cannot nest.

Only what the agent uses is here: no FLUSHSA/FLUSHPOLICY (the agent never flushes whole tables),
no offload, no migrate, no security contexts.
"""

from __future__ import annotations

import struct
from typing import Any

from pyroute2.netlink import nla, nlmsg

# -- message types (enum xfrm_msg_type, XFRM_MSG_BASE = 0x10) ---------------------------------------
XFRM_MSG_NEWSA = 0x10
XFRM_MSG_DELSA = 0x11
XFRM_MSG_GETSA = 0x12
XFRM_MSG_NEWPOLICY = 0x13
XFRM_MSG_DELPOLICY = 0x14
XFRM_MSG_GETPOLICY = 0x15
XFRM_MSG_ALLOCSPI = 0x16
XFRM_MSG_ACQUIRE = 0x17
XFRM_MSG_EXPIRE = 0x18
XFRM_MSG_UPDPOLICY = 0x19
XFRM_MSG_UPDSA = 0x1A
XFRM_MSG_POLEXPIRE = 0x1B

# -- multicast groups (enum xfrm_nlgroups); bind() takes the bit 1 << (group - 1) ------------------
XFRMNLGRP_ACQUIRE = 1
XFRMNLGRP_EXPIRE = 2

# -- constants --------------------------------------------------------------------------------------
XFRM_INF = 0xFFFF_FFFF_FFFF_FFFF  # "no limit" in xfrm_lifetime_cfg byte/packet fields
XFRM_POLICY_IN = 0
XFRM_POLICY_OUT = 1
XFRM_POLICY_FWD = 2
XFRM_POLICY_ALLOW = 0
XFRM_POLICY_BLOCK = 1
XFRM_MODE_TRANSPORT = 0
XFRM_MODE_TUNNEL = 1
XFRM_SHARE_ANY = 0
XFRM_STATE_ESN = 128
UDP_ENCAP_ESPINUDP = 2  # <linux/udp.h>
XFRM_ALGO_NAME_LEN = 64

STRUCT_SIZES = {
    "xfrm_selector": 56,
    "xfrm_id": 24,
    "xfrm_lifetime_cfg": 64,
    "xfrm_lifetime_cur": 32,
    "xfrm_usersa_info": 224,
    "xfrm_usersa_id": 24,
    "xfrm_userspi_info": 232,
    "xfrm_userpolicy_info": 168,
    "xfrm_userpolicy_id": 64,
    "xfrm_user_tmpl": 64,
    "xfrm_user_expire": 232,
    "xfrm_user_acquire": 280,
    "xfrm_encap_tmpl": 24,
    "xfrm_replay_state_esn": 24,
    "xfrm_mark": 8,
    "xfrm_algo": 68,
    "xfrm_algo_auth": 72,
    "xfrm_algo_aead": 72,
}

Fields = tuple[tuple[str, str], ...]


def _address(name: str) -> Fields:
    # xfrm_address_t: a 16-byte union (IPv4 uses the first 4 bytes), 4-byte aligned.
    return ((name, "16s"),)


def _selector(p: str) -> Fields:
    """struct xfrm_selector (56 bytes)."""
    return (
        *_address(p + "daddr"),
        *_address(p + "saddr"),
        (p + "dport", ">H"),
        (p + "dport_mask", ">H"),
        (p + "sport", ">H"),
        (p + "sport_mask", ">H"),
        (p + "family", "H"),
        (p + "prefixlen_d", "B"),
        (p + "prefixlen_s", "B"),
        (p + "proto", "B"),
        (p + "pad", "3x"),
        (p + "ifindex", "i"),
        (p + "user", "I"),
    )


def _xfrm_id(p: str) -> Fields:
    """struct xfrm_id (24 bytes)."""
    return (*_address(p + "daddr"), (p + "spi", ">I"), (p + "proto", "B"), (p + "pad", "3x"))


def _lifetime_cfg(p: str) -> Fields:
    """struct xfrm_lifetime_cfg (64 bytes)."""
    names = (
        "soft_byte_limit",
        "hard_byte_limit",
        "soft_packet_limit",
        "hard_packet_limit",
        "soft_add_expires_seconds",
        "hard_add_expires_seconds",
        "soft_use_expires_seconds",
        "hard_use_expires_seconds",
    )
    return tuple((p + n, "Q") for n in names)


def _lifetime_cur(p: str) -> Fields:
    """struct xfrm_lifetime_cur (32 bytes)."""
    return tuple((p + n, "Q") for n in ("bytes", "packets", "add_time", "use_time"))


def _usersa_info(p: str) -> Fields:
    """struct xfrm_usersa_info (224 bytes)."""
    return (
        *_selector(p + "sel_"),
        *_xfrm_id(p + "id_"),
        *_address(p + "saddr"),
        *_lifetime_cfg(p + "lft_"),
        *_lifetime_cur(p + "cur_"),
        (p + "stats_replay_window", "I"),
        (p + "stats_replay", "I"),
        (p + "stats_integrity_failed", "I"),
        (p + "seq", "I"),
        (p + "reqid", "I"),
        (p + "family", "H"),
        (p + "mode", "B"),
        (p + "replay_window", "B"),
        (p + "flags", "B"),
        (p + "pad", "7x"),
    )


def _userpolicy_info(p: str) -> Fields:
    """struct xfrm_userpolicy_info (168 bytes)."""
    return (
        *_selector(p + "sel_"),
        *_lifetime_cfg(p + "lft_"),
        *_lifetime_cur(p + "cur_"),
        (p + "priority", "I"),
        (p + "index", "I"),
        (p + "dir", "B"),
        (p + "action", "B"),
        (p + "flags", "B"),
        (p + "share", "B"),
        (p + "pad", "4x"),
    )


def _user_tmpl() -> Fields:
    """struct xfrm_user_tmpl (64 bytes)."""
    return (
        *_xfrm_id("id_"),
        ("family", "H"),
        ("pad1", "2x"),
        *_address("saddr"),
        ("reqid", "I"),
        ("mode", "B"),
        ("share", "B"),
        ("optional", "B"),
        ("pad2", "x"),
        ("aalgos", "I"),
        ("ealgos", "I"),
        ("calgos", "I"),
    )


def _zero_defaults(fields: Fields) -> dict[str, Any]:
    # pyroute2 fills a missing field with the integer 0, which "16s" cannot pack.
    return {name: b"" for name, fmt in fields if fmt.endswith("s")}


def fields_size(fields: Fields) -> int:
    return sum(struct.calcsize(fmt) for _, fmt in fields)


class _PackedFields:
    """Encodes the fixed fields with one precompiled struct instead of pyroute2's per-field path,
    which looks every field up through its NLA-aware `get` (about half the cost of a request).
    Big-endian fields are byte-swapped into a little-endian layout so one format covers all."""

    fields: Fields = ()
    defaults: dict[str, Any] = {}
    align = 4
    _packer: tuple[struct.Struct, tuple[tuple[str, int, Any], ...], str | None] | None = None

    @classmethod
    def _compile(cls) -> tuple[struct.Struct, tuple[tuple[str, int, Any], ...], str | None]:
        packer = cls.__dict__.get("_packer")
        if packer is None:
            fmt, names, tail = "<", [], None
            for name, f in cls.fields:
                if f == "s":  # flexible tail, appended as is
                    tail = name
                    continue
                fmt += f.lstrip("<>")
                if not f.endswith("x"):
                    swap = struct.calcsize(f) if f.startswith(">") else 0
                    names.append((name, swap, cls.defaults.get(name, 0)))
            packer = (struct.Struct(fmt), tuple(names), tail)
            cls._packer = packer
        return packer

    def ft_encode(self, offset: int) -> tuple[int, int]:
        packer, names, tail = self._compile()
        values = []
        for name, swap, default in names:
            value = dict.get(self, name)  # type: ignore[call-overload]
            if value is None:
                value = default
            if swap:
                value = int.from_bytes(value.to_bytes(swap, "big"), "little")
            values.append(value)
        raw = packer.pack(*values)
        if tail is not None:
            raw += dict.get(self, tail) or b""  # type: ignore[call-overload]
        data = self.data  # type: ignore[attr-defined]
        data.extend(raw)
        offset += len(raw)
        diff = 0
        if self.align > 0:
            diff = ((offset + self.align - 1) & ~(self.align - 1)) - offset
            offset += diff
            data.extend(b"\0" * diff)
        return offset, diff


class _VarTail(_PackedFields, nla):  # type: ignore[misc]
    """A struct NLA ending in a flexible array (`char alg_key[]`, `__u32 bmp[]`): pyroute2 encodes a
    trailing "s" field of any length, but decodes "s" as one byte, so the tail is read here."""

    tail = "tail"

    def ft_decode(self, offset: int) -> None:
        fixed = self.fields[:-1]
        for name, fmt in fixed:
            self[name], offset = self.decode_field(fmt, self.data, offset)
        self[self.tail] = bytes(self.data[offset : self.offset + self.length])
        del self["attrs"]
        if self.get("value") is not None:
            del self["value"]


class xfrm_algo(_VarTail):
    """struct xfrm_algo: XFRMA_ALG_CRYPT; alg_key_len is in bits."""

    fields = (("alg_name", f"{XFRM_ALGO_NAME_LEN}s"), ("alg_key_len", "I"), ("alg_key", "s"))
    tail = "alg_key"


class xfrm_algo_auth(_VarTail):
    """struct xfrm_algo_auth: XFRMA_ALG_AUTH_TRUNC; alg_trunc_len in bits."""

    fields = (
        ("alg_name", f"{XFRM_ALGO_NAME_LEN}s"),
        ("alg_key_len", "I"),
        ("alg_trunc_len", "I"),
        ("alg_key", "s"),
    )
    tail = "alg_key"


class xfrm_algo_aead(_VarTail):
    """struct xfrm_algo_aead: XFRMA_ALG_AEAD; alg_icv_len in bits."""

    fields = (
        ("alg_name", f"{XFRM_ALGO_NAME_LEN}s"),
        ("alg_key_len", "I"),
        ("alg_icv_len", "I"),
        ("alg_key", "s"),
    )
    tail = "alg_key"


class xfrm_replay_state_esn(_VarTail):
    """struct xfrm_replay_state_esn: XFRMA_REPLAY_ESN_VAL, bitmap of bmp_len 32-bit words."""

    fields = (
        ("bmp_len", "I"),
        ("oseq", "I"),
        ("seq", "I"),
        ("oseq_hi", "I"),
        ("seq_hi", "I"),
        ("replay_window", "I"),
        ("bmp", "s"),
    )
    tail = "bmp"


class xfrm_encap_tmpl(_PackedFields, nla):  # type: ignore[misc]
    """struct xfrm_encap_tmpl: XFRMA_ENCAP (ports in network order)."""

    fields = (
        ("encap_type", "H"),
        ("encap_sport", ">H"),
        ("encap_dport", ">H"),
        ("pad", "2x"),
        *_address("encap_oa"),
    )
    defaults = _zero_defaults(fields)


class xfrm_mark(_PackedFields, nla):  # type: ignore[misc]
    """struct xfrm_mark: XFRMA_MARK (value, mask)."""

    fields = (("v", "I"), ("m", "I"))


class xfrm_user_tmpl(_PackedFields, nla):  # type: ignore[misc]
    """struct xfrm_user_tmpl: XFRMA_TMPL. The attribute is an array of these without NLA headers;
    the agent installs one template per policy, so the first is decoded (`templates()` reads all)."""

    fields = _user_tmpl()
    defaults = _zero_defaults(fields)


class xfrm_lifetime_cur(nla):  # type: ignore[misc]
    """struct xfrm_lifetime_cur: XFRMA_LTIME_VAL."""

    fields = _lifetime_cur("")


class xfrm_address(nla):  # type: ignore[misc]
    """xfrm_address_t: XFRMA_SRCADDR."""

    fields = _address("addr")


# Attribute numbers (enum xfrm_attr_type_t); the names are the kernel's.
_XFRMA = (
    (1, "XFRMA_ALG_AUTH", "xfrm_algo"),
    (2, "XFRMA_ALG_CRYPT", "xfrm_algo"),
    (4, "XFRMA_ENCAP", "xfrm_encap_tmpl"),
    (5, "XFRMA_TMPL", "xfrm_user_tmpl"),
    (9, "XFRMA_LTIME_VAL", "xfrm_lifetime_cur"),
    (13, "XFRMA_SRCADDR", "xfrm_address"),
    (15, "XFRMA_LASTUSED", "uint64"),
    (18, "XFRMA_ALG_AEAD", "xfrm_algo_aead"),
    (20, "XFRMA_ALG_AUTH_TRUNC", "xfrm_algo_auth"),
    (21, "XFRMA_MARK", "xfrm_mark"),
    (23, "XFRMA_REPLAY_ESN_VAL", "xfrm_replay_state_esn"),
    (24, "XFRMA_SA_EXTRA_FLAGS", "uint32"),
    (31, "XFRMA_IF_ID", "uint32"),
)


class _XfrmMsg(_PackedFields, nlmsg):  # type: ignore[misc]
    nla_map = _XFRMA
    xfrm_algo = xfrm_algo
    xfrm_algo_auth = xfrm_algo_auth
    xfrm_algo_aead = xfrm_algo_aead
    xfrm_replay_state_esn = xfrm_replay_state_esn
    xfrm_encap_tmpl = xfrm_encap_tmpl
    xfrm_mark = xfrm_mark
    xfrm_user_tmpl = xfrm_user_tmpl
    xfrm_lifetime_cur = xfrm_lifetime_cur
    xfrm_address = xfrm_address

    def templates(self) -> list[dict[str, Any]]:
        """Every xfrm_user_tmpl in XFRMA_TMPL (pyroute2 decodes only the first of the array)."""
        out: list[dict[str, Any]] = []
        size = STRUCT_SIZES["xfrm_user_tmpl"]
        for name, attr in self.get("attrs", []):
            if name != "XFRMA_TMPL":
                continue
            payload = bytes(attr.data[attr.offset + 4 : attr.offset + attr.length])
            for off in range(0, len(payload) - size + 1, size):
                cell = xfrm_user_tmpl(struct.pack("HH", size + 4, 5) + payload[off : off + size])
                cell.decode()
                out.append({k: v for k, v in cell.items() if k not in ("attrs", "value")})
        return out


class xfrm_usersa_info(_XfrmMsg):
    """struct xfrm_usersa_info: XFRM_MSG_NEWSA / UPDSA requests and GETSA answers/dumps."""

    fields = _usersa_info("")
    defaults = _zero_defaults(fields)


class xfrm_usersa_id(_XfrmMsg):
    """struct xfrm_usersa_id: XFRM_MSG_DELSA / GETSA requests."""

    fields = (*_address("daddr"), ("spi", ">I"), ("family", "H"), ("proto", "B"), ("pad", "x"))
    defaults = _zero_defaults(fields)


class xfrm_userspi_info(_XfrmMsg):
    """struct xfrm_userspi_info: XFRM_MSG_ALLOCSPI (answered with an xfrm_usersa_info)."""

    fields = (*_usersa_info("info_"), ("min", "I"), ("max", "I"))
    defaults = _zero_defaults(fields)


class xfrm_userpolicy_info(_XfrmMsg):
    """struct xfrm_userpolicy_info: XFRM_MSG_NEWPOLICY / UPDPOLICY and GETPOLICY answers/dumps."""

    fields = _userpolicy_info("")
    defaults = _zero_defaults(fields)


class xfrm_userpolicy_id(_XfrmMsg):
    """struct xfrm_userpolicy_id: XFRM_MSG_DELPOLICY / GETPOLICY requests."""

    fields = (*_selector("sel_"), ("index", "I"), ("dir", "B"), ("pad", "3x"))
    defaults = _zero_defaults(fields)


class xfrm_user_expire(_XfrmMsg):
    """struct xfrm_user_expire: XFRM_MSG_EXPIRE multicast (soft: hard == 0)."""

    fields = (*_usersa_info("state_"), ("hard", "B"), ("pad", "7x"))
    defaults = _zero_defaults(fields)


class xfrm_user_acquire(_XfrmMsg):
    """struct xfrm_user_acquire: XFRM_MSG_ACQUIRE multicast."""

    fields = (
        *_xfrm_id("id_"),
        *_address("saddr"),
        *_selector("sel_"),
        *_userpolicy_info("policy_"),
        ("aalgos", "I"),
        ("ealgos", "I"),
        ("calgos", "I"),
        ("seq", "I"),
    )
    defaults = _zero_defaults(fields)


# What the kernel sends back, by message type (requests pick their class explicitly).
RESPONSE_CLASSES: dict[int, type[nlmsg]] = {
    XFRM_MSG_NEWSA: xfrm_usersa_info,
    XFRM_MSG_UPDSA: xfrm_usersa_info,
    XFRM_MSG_DELSA: xfrm_usersa_id,
    XFRM_MSG_NEWPOLICY: xfrm_userpolicy_info,
    XFRM_MSG_UPDPOLICY: xfrm_userpolicy_info,
    XFRM_MSG_DELPOLICY: xfrm_userpolicy_id,
    XFRM_MSG_EXPIRE: xfrm_user_expire,
    XFRM_MSG_ACQUIRE: xfrm_user_acquire,
}
