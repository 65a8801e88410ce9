"""XFRM message layout and the dataclass <-> message translation (no kernel needed)."""

from __future__ import annotations

import ipaddress
import socket
import struct

import pytest

from meshsec.agent.dataplane.api import (
    DataPlaneError,
    Direction,
    Encryption,
    Integrity,
    IpsecProtocol,
    Lifetime,
    Mode,
    Policy,
    SaId,
    SecurityAssociation,
    Template,
    TrafficSelector,
    UdpEncapsulation,
    Unsupported,
)
from meshsec.agent.dataplane.kernel import bypass
from meshsec.agent.dataplane.kernel import translate as tr
from meshsec.agent.dataplane.kernel import xfrm_messages as xm
from meshsec.common.secrets import Secret

OWNER = tr.OwnerMark()
A, B = ipaddress.ip_address("198.18.0.1"), ipaddress.ip_address("198.18.0.2")


def _sa(**kw: object) -> SecurityAssociation:
    base: dict[str, object] = dict(
        id=SaId(B, 0x1234_5678, IpsecProtocol.ESP), src=A, direction=Direction.OUT, mode=Mode.TUNNEL,
        reqid=7, encryption=Encryption("aes-gcm-16", Secret(bytes(range(20))), 128))
    base.update(kw)
    return SecurityAssociation(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["xfrm_usersa_info", "xfrm_userpolicy_info", "xfrm_userpolicy_id",
                                  "xfrm_usersa_id", "xfrm_userspi_info", "xfrm_user_expire",
                                  "xfrm_user_acquire"])
def test_message_struct_sizes_match_the_kernel_abi(name: str) -> None:
    assert xm.fields_size(getattr(xm, name).fields) == xm.STRUCT_SIZES[name]


def test_sa_message_encodes_header_struct_and_attributes_at_kernel_offsets() -> None:
    msg = tr.sa_message(_sa(encap=UdpEncapsulation(4500, 4501), lifetime=Lifetime(soft_seconds=5)), OWNER)
    msg.encode()
    raw = bytes(msg.data)
    body = raw[16:]  # after struct nlmsghdr
    # xfrm_id.daddr at 56, spi (network order) at 72, proto at 76; saddr at 80; family at 212.
    assert body[56:60] == B.packed and body[72:76] == struct.pack(">I", 0x1234_5678) and body[76] == 50
    assert body[80:84] == A.packed
    assert struct.unpack_from("H", body, 212)[0] == socket.AF_INET
    assert struct.unpack_from("Q", body, 96 + 32)[0] == 5  # lft.soft_add_expires_seconds
    assert struct.unpack_from("Q", body, 96)[0] == xm.XFRM_INF  # no byte limit
    assert body[216] == xm.XFRM_STATE_ESN and body[215] == 0  # ESN: window only in the attribute
    # Decoding our own bytes gives the attributes back.
    back = xm.xfrm_usersa_info(raw)
    back.decode()
    aead = back.get_attr("XFRMA_ALG_AEAD")
    assert aead["alg_name"].rstrip(b"\0") == b"rfc4106(gcm(aes))" and aead["alg_key_len"] == 160
    assert aead["alg_icv_len"] == 128 and aead["alg_key"] == bytes(range(20))
    encap = back.get_attr("XFRMA_ENCAP")
    assert (encap["encap_type"], encap["encap_sport"], encap["encap_dport"]) == (2, 4500, 4501)
    esn = back.get_attr("XFRMA_REPLAY_ESN_VAL")
    assert esn["replay_window"] == 1024 and esn["bmp_len"] == 32 and len(esn["bmp"]) == 128
    assert OWNER.matches(back)
    assert tr.sa_id_from(back) == SaId(B, 0x1234_5678, IpsecProtocol.ESP)


def test_cbc_hmac_sa_uses_truncated_auth_and_refuses_non_rfc_truncation() -> None:
    sa = _sa(encryption=Encryption("aes-cbc", Secret(b"k" * 16)),
             integrity=Integrity("hmac-sha384", Secret(b"i" * 48), 192))
    msg = tr.sa_message(sa, OWNER)
    attrs = dict(msg["attrs"])
    assert attrs["XFRMA_ALG_CRYPT"]["alg_name"] == b"cbc(aes)"
    assert attrs["XFRMA_ALG_AUTH_TRUNC"]["alg_trunc_len"] == 192
    with pytest.raises(DataPlaneError, match="RFC 4868"):
        tr.sa_message(_sa(encryption=Encryption("aes-cbc", Secret(b"k" * 16)),
                          integrity=Integrity("hmac-sha256", Secret(b"i" * 32), 96)), OWNER)
    with pytest.raises(DataPlaneError, match="needs an integrity"):
        tr.sa_message(_sa(encryption=Encryption("aes-cbc", Secret(b"k" * 16))), OWNER)
    with pytest.raises(Unsupported, match="'camellia-cbc' is not one of"):
        tr.sa_message(_sa(encryption=Encryption("camellia-cbc", Secret(b"k" * 16))), OWNER)


def test_chacha20poly1305_sa_is_the_rfc7539esp_aead_with_its_salt_and_a_16_byte_icv() -> None:
    key = bytes(range(36))  # 32-byte key, then the 4-byte salt (RFC 7634 section 2)
    msg = tr.sa_message(_sa(encryption=Encryption("chacha20-poly1305", Secret(key), 128)), OWNER)
    msg.encode()
    back = xm.xfrm_usersa_info(bytes(msg.data))
    back.decode()
    aead = back.get_attr("XFRMA_ALG_AEAD")
    assert aead["alg_name"].rstrip(b"\0") == b"rfc7539esp(chacha20,poly1305)"
    assert aead["alg_key_len"] == 288 and aead["alg_icv_len"] == 128 and aead["alg_key"] == key
    assert back.get_attr("XFRMA_ALG_AUTH_TRUNC") is None and back.get_attr("XFRMA_ALG_CRYPT") is None
    with pytest.raises(DataPlaneError, match="ICV of 96 bits is not one of 128"):
        tr.sa_message(_sa(encryption=Encryption("chacha20-poly1305", Secret(key), 96)), OWNER)
    with pytest.raises(DataPlaneError, match="no separate integrity"):
        tr.sa_message(_sa(encryption=Encryption("chacha20-poly1305", Secret(key), 128),
                          integrity=Integrity("hmac-sha256", Secret(b"i" * 32), 128)), OWNER)


def test_selector_ports_become_port_masks_and_back() -> None:
    sel = TrafficSelector(ipaddress.ip_network("198.19.1.0/24"), ipaddress.ip_network("198.19.2.0/25"),
                          protocol=6, src_ports=(1024, 2047), dst_ports=(443, 443))
    fields = tr.selector_fields(sel)
    assert (fields["sel_sport"], fields["sel_sport_mask"]) == (1024, 0xFC00)
    assert (fields["sel_dport"], fields["sel_dport_mask"]) == (443, 0xFFFF)
    msg = xm.xfrm_userpolicy_id()
    msg.update(fields)
    assert tr.selector_from(msg) == sel


def test_unexpressible_selectors_are_refused_with_the_reason() -> None:
    with pytest.raises(Unsupported, match="1000-2000"):
        tr.selector_fields(TrafficSelector(ipaddress.ip_network("198.19.1.0/24"),
                                           ipaddress.ip_network("198.19.2.0/24"), 6, (1000, 2000)))
    with pytest.raises(DataPlaneError, match="mixes IPv4 and IPv6"):
        tr.selector_fields(TrafficSelector(ipaddress.ip_network("198.19.1.0/24"),
                                           ipaddress.ip_network("::ffff:198.19.2.0/120")))


def test_protect_policy_needs_a_template_and_bypass_must_not_have_one() -> None:
    sel = TrafficSelector(ipaddress.ip_network("198.19.1.0/24"), ipaddress.ip_network("198.19.2.0/24"))
    with pytest.raises(DataPlaneError, match="no template"):
        tr.policy_message(Policy(sel, Direction.OUT), OWNER)
    from meshsec.agent.dataplane.api import PolicyAction

    with pytest.raises(DataPlaneError, match="cannot have a template"):
        tr.policy_message(Policy(sel, Direction.OUT, PolicyAction.BYPASS,
                                 Template(IpsecProtocol.ESP, Mode.TUNNEL, A, B, 1)), OWNER)


def test_owner_mark_rejects_value_outside_mask() -> None:
    with pytest.raises(ValueError, match="outside its mask"):
        tr.OwnerMark(value=0x1, mask=0x10)


def _decoded(msg: xm.xfrm_usersa_info) -> xm.xfrm_usersa_info:
    msg.encode()
    back = xm.xfrm_usersa_info(bytes(msg.data))
    back.decode()
    return back


def test_a_migrated_sa_continues_the_replay_state_and_lifetime_of_the_installed_one() -> None:
    # What GETSA would answer for the installed SA: sequence numbers and counters moved on.
    installed = tr.sa_message(_sa(), OWNER)
    for name, attr in installed["attrs"]:
        if name == "XFRMA_REPLAY_ESN_VAL":
            attr.update({"oseq": 4242, "seq": 17, "oseq_hi": 1})
    installed.update({"cur_bytes": 9000, "cur_packets": 90, "cur_add_time": 1_700_000_000})
    current = _decoded(installed)
    moved = _sa(id=SaId(ipaddress.ip_address("198.18.0.9"), 0x1234_5678, IpsecProtocol.ESP))
    got = _decoded(tr.continued_sa_message(moved, OWNER, current))
    assert got["id_daddr"][:4] == ipaddress.ip_address("198.18.0.9").packed
    replay = got.get_attr("XFRMA_REPLAY_ESN_VAL")
    assert (replay["oseq"], replay["seq"], replay["oseq_hi"]) == (4242, 17, 1)
    life = got.get_attr("XFRMA_LTIME_VAL")
    assert (life["bytes"], life["packets"], life["add_time"]) == (9000, 90, 1_700_000_000)
    # One replay state, not the fresh one beside the carried one.
    assert [n for n, _ in got["attrs"]].count("XFRMA_REPLAY_ESN_VAL") == 1


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
@pytest.mark.parametrize("direction", [xm.XFRM_POLICY_IN, xm.XFRM_POLICY_OUT])
def test_socket_bypass_policy_is_the_kernels_xfrm_userpolicy_info(family: int, direction: int) -> None:
    """The setsockopt body is laid out exactly as the netlink encoder lays out the same struct."""
    msg = xm.xfrm_userpolicy_info()
    msg["sel_family"], msg["dir"], msg["action"] = family, direction, xm.XFRM_POLICY_ALLOW
    msg.encode()
    expected = bytes(msg.data)[16:16 + xm.STRUCT_SIZES["xfrm_userpolicy_info"]]  # after nlmsghdr
    assert bypass.socket_policy(family, direction) == expected
