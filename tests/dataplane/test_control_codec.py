"""The data-plane daemon's wire forms, without a daemon: SAs and policies survive the trip to
JSON and back unchanged (keys included: the socket is the only place they travel), the control
protocol's decoder refuses what it must with texts that never quote the message, and the IKE
channel's packets carry the remote address and the message intact."""

from __future__ import annotations

import ipaddress

import pytest

from meshsec.agent.dataplane.api import (
    Direction,
    Encryption,
    Integrity,
    IpsecProtocol,
    Lifetime,
    Mode,
    Policy,
    PolicyAction,
    SaId,
    SecurityAssociation,
    Template,
    TrafficSelector,
    UdpEncapsulation,
)
from meshsec.agent.dataplane.userspace import control
from meshsec.agent.dataplane.userspace.jsoncodec import (
    policy_from_json,
    policy_to_json,
    sa_from_json,
    sa_to_json,
)
from meshsec.common.secrets import Secret

A, B = ipaddress.ip_address("198.18.0.1"), ipaddress.ip_address("198.18.0.2")
SEL = TrafficSelector(ipaddress.ip_network("198.19.1.0/24"), ipaddress.ip_network("198.19.2.0/24"), 6,
                      (1000, 2000), (443, 443))  # fmt: skip


@pytest.mark.parametrize("kind", ["aead-udp", "cbc-hmac-transport"])
def test_sa_round_trip_keeps_every_field(kind: str) -> None:
    if kind == "aead-udp":
        sa = SecurityAssociation(
            SaId(B, 0x1234, IpsecProtocol.ESP), A, Direction.OUT, Mode.TUNNEL, 7,
            encryption=Encryption("aes-gcm-16", Secret(bytes(range(36))), 128),
            encap=UdpEncapsulation(4500, 31000), replay_window=64, esn=False,
            lifetime=Lifetime(soft_seconds=50, hard_seconds=60, soft_bytes=1, hard_bytes=2, soft_packets=3,
                              hard_packets=4), if_id=9)  # fmt: skip
    else:
        sa = SecurityAssociation(
            SaId(A, 0xFFFFFFFF, IpsecProtocol.ESP), B, Direction.IN, Mode.TRANSPORT, 1,
            encryption=Encryption("aes-cbc", Secret(b"\x01" * 16)),
            integrity=Integrity("hmac-sha256", Secret(b"\x02" * 32), 128), selector=SEL)  # fmt: skip
    assert sa_from_json(sa_to_json(sa)) == sa  # Secret compares by value: the keys made the trip


def test_policy_round_trip_and_key_only_delete() -> None:
    template = Template(IpsecProtocol.ESP, Mode.TUNNEL, A, B, 3)
    policy = Policy(SEL, Direction.OUT, PolicyAction.PROTECT, template, priority=5, if_id=2)
    assert policy_from_json(policy_to_json(policy)) == policy
    transport = Policy(SEL, Direction.IN, template=Template(IpsecProtocol.AH, Mode.TRANSPORT, None, None, 1))
    assert policy_from_json(policy_to_json(transport)) == transport


def test_decoder_refuses_with_texts_that_never_quote_the_message() -> None:
    secret = "00112233445566778899aabbccddeeff"
    with pytest.raises(control.ProtocolError, match=r"^message larger than the 65536-byte limit$"):
        control.decode(b"{}", True, control.MAX_REQUEST)
    with pytest.raises(control.ProtocolError, match=r"^empty message$"):
        control.decode(b"", False, control.MAX_REQUEST)
    with pytest.raises(control.ProtocolError) as bad:
        control.decode(f'{{"key": "{secret}"'.encode(), False, control.MAX_REQUEST)
    assert str(bad.value).startswith("message is not JSON") and secret not in str(bad.value)
    with pytest.raises(control.ProtocolError, match=r"^message is not JSON"):
        control.decode(b"\xff\xfe", False, control.MAX_REQUEST)
    with pytest.raises(control.ProtocolError, match=r"^message must be a JSON object, not str$"):
        control.decode(f'"{secret}"'.encode(), False, control.MAX_REQUEST)
    assert control.decode(control.encode({"id": 1, "op": "list"}), False, control.MAX_REQUEST) == {
        "id": 1, "op": "list"}


def test_ike_channel_packets() -> None:
    message = b"\x00" * 28 + b"IKE"
    for remote in (("198.18.0.2", 4500), ("2001:db8::1", 31000)):
        assert control.unpack_ike(control.pack_ike(message, remote)) == (message, remote)
    with pytest.raises(control.ProtocolError, match="shorter than its header"):
        control.unpack_ike(b"\x0a198.1")
    with pytest.raises(control.ProtocolError, match="empty"):
        control.unpack_ike(b"")
