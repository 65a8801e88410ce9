"""Initiator <-> responder in one process with a fake clock: every exchange, loss, duplication,
reordering, retransmission limits and the negotiation failures."""

from __future__ import annotations

import pytest

from meshsec.agent.ike.address import Address
from meshsec.agent.ike.config import RetransmitConfig
from meshsec.agent.ike.constants import DhId, EncrId, ExchangeType, IntegId, ProtocolId
from meshsec.agent.ike.events import (
    ChildSaDeleted,
    ChildSaEstablished,
    ChildSaFailed,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaFailed,
    InitialContactReceived,
    LivenessChecked,
    PortsChanged,
)
from meshsec.agent.ike.failures import FailureReason
from meshsec.agent.ike.parse import parse_header
from meshsec.agent.ike.responder import ResponderSettings
from meshsec.agent.ike.sa import OutgoingDatagram, State
from meshsec.agent.ike.ts import Ts

from .peers import Pair, child, ike_config, of_type, responder_config


def exchange_of(d: OutgoingDatagram) -> tuple[int, bool]:
    h = parse_header(d.data)
    return h.exchange, h.is_response


def assert_child_pair(a: ChildSaEstablished, b: ChildSaEstablished) -> None:
    assert a.spi_in == b.spi_out and a.spi_out == b.spi_in
    assert a.keys_in == b.keys_out and a.keys_out == b.keys_in
    assert a.keys_in != a.keys_out
    assert a.ts_local == b.ts_remote and a.ts_remote == b.ts_local
    assert a.mode == b.mode and a.protocol == b.protocol and a.algorithms == b.algorithms


def established(p: Pair) -> tuple[ChildSaEstablished, ChildSaEstablished]:
    assert len(of_type(p.events_i, IkeSaEstablished)) == 1, p.events_i
    assert len(of_type(p.events_r, IkeSaEstablished)) == 1, p.events_r
    ci, cr = of_type(p.events_i, ChildSaEstablished), of_type(p.events_r, ChildSaEstablished)
    assert len(ci) == 1 and len(cr) == 1, (p.events_i, p.events_r)
    assert_child_pair(ci[0], cr[0])
    return ci[0], cr[0]


def test_establish_default_suite() -> None:
    p = Pair(ike_config(), [responder_config()])
    p.connect()
    ci, _cr = established(p)
    ike = of_type(p.events_i, IkeSaEstablished)[0]
    assert ike.algorithms.encr == EncrId.AES_GCM_16 and ike.algorithms.dh == DhId.CURVE25519
    assert ike.remote_id == "bob.example" and not ike.udp_encap
    assert ci.ts_local == (Ts.from_cidr("198.19.1.0/24"),) and ci.mode == "tunnel"
    assert len(ci.keys_in.encr) == 36 and len(ci.keys_in.integ) == 0  # AES-256 + GCM salt
    assert p.initiator.state is State.ESTABLISHED and p.responder.state is State.ESTABLISHED
    assert of_type(p.events_r, InitialContactReceived) == [InitialContactReceived("alice.example")]
    # Exactly four datagrams: IKE_SA_INIT and IKE_AUTH, request and response.
    assert len(p.wire) == 4


@pytest.mark.parametrize(
    ("ike", "esp", "protocol", "encr", "integ", "keylens"),
    [
        (
            "aes128-sha256-ecp256",
            "aes128-sha256",
            ProtocolId.ESP,
            EncrId.AES_CBC,
            IntegId.HMAC_SHA2_256_128,
            (16, 32),
        ),
        (
            "aes256-sha512-ecp384",
            "aes256-sha384",
            ProtocolId.ESP,
            EncrId.AES_CBC,
            IntegId.HMAC_SHA2_384_192,
            (32, 48),
        ),
        ("aes128gcm16-prfsha384-modp2048", "aes128gcm16", ProtocolId.ESP, EncrId.AES_GCM_16, None, (20, 0)),
        ("aes256-sha384-modp3072", "sha512", ProtocolId.AH, None, IntegId.HMAC_SHA2_512_256, (0, 64)),
    ],
)
def test_suites(
    ike: str, esp: str, protocol: ProtocolId, encr: int | None, integ: int | None, keylens: tuple[int, int]
) -> None:
    ic = child(proposals=esp, protocol=protocol)
    rc = child(local="198.19.2.0/24", remote="198.19.1.0/24", proposals=esp, protocol=protocol)
    p = Pair(ike_config(proposals=ike, children=(ic,)), [responder_config(proposals=ike, children=(rc,))])
    p.connect()
    ci, _ = established(p)
    assert ci.protocol == protocol and ci.algorithms.encr == encr and ci.algorithms.integ == integ
    assert (len(ci.keys_in.encr), len(ci.keys_in.integ)) == keylens


def test_lost_init_request_is_retransmitted() -> None:
    dropped: list[OutgoingDatagram] = []

    def drop_first(direction: str, d: OutgoingDatagram) -> list[OutgoingDatagram]:
        if not dropped:
            dropped.append(d)
            return []
        return [d]

    p = Pair(ike_config(), [responder_config()], filter=drop_first)
    p.connect()
    assert not p.events_i
    p.advance(3.9)
    assert not p.events_i
    p.advance(0.2)  # first retransmission after 4 s
    established(p)
    assert p.initiator.stats["retransmits"] == 1


def test_lost_auth_response_answered_from_cache() -> None:
    state = {"dropped": False}

    def drop_auth_response(direction: str, d: OutgoingDatagram) -> list[OutgoingDatagram]:
        if direction == "r->i" and exchange_of(d) == (ExchangeType.IKE_AUTH, True) and not state["dropped"]:
            state["dropped"] = True
            return []
        return [d]

    p = Pair(ike_config(), [responder_config()], filter=drop_auth_response)
    p.connect()
    assert of_type(p.events_r, IkeSaEstablished) and not of_type(p.events_i, IkeSaEstablished)
    p.advance(5)
    established(p)  # also proves the responder did not establish twice
    assert p.responder.stats["duplicate_request_answered"] == 1


def test_duplicated_packets() -> None:
    p = Pair(ike_config(), [responder_config()], filter=lambda direction, d: [d, d])
    p.connect()
    established(p)
    assert p.responder.stats["duplicate_request_answered"] == 2
    assert p.initiator.stats["dropped_unexpected_response"] >= 2


def test_reordered_responses() -> None:
    held: list[OutgoingDatagram] = []

    def hold_first_auth_response(direction: str, d: OutgoingDatagram) -> list[OutgoingDatagram]:
        if direction == "r->i" and exchange_of(d) == (ExchangeType.IKE_AUTH, True):
            if not held:
                held.append(d)
                return []
            return [d, held[0]]  # the retransmitted answer overtakes the original
        return [d]

    p = Pair(ike_config(), [responder_config()], filter=hold_first_auth_response)
    p.connect()
    p.advance(5)
    established(p)
    assert p.initiator.stats["dropped_unexpected_response"] == 1


def test_retransmit_limit_fails_sa() -> None:
    cfg = ike_config(retransmit=RetransmitConfig(timeout=4.0, base=1.8, tries=5))
    p = Pair(cfg, [responder_config()], filter=lambda direction, d: [])
    start = p.now
    p.connect()
    times: list[float] = []
    while not p.events_i and p.now < start + 400:
        p.advance(0.5)
        times.append(p.now)
    fails = of_type(p.events_i, IkeSaFailed)
    assert len(fails) == 1 and "retransmit" in fails[0].reason
    sent = [d for direction, d in p.wire if direction == "i->r"]
    assert len(sent) == 6  # initial send + 5 retransmissions
    # 4 + 7.2 + 12.96 + 23.328 + 41.99 + 75.58 = 165.06 s (strongSwan's schedule)
    assert start + 165.0 <= p.now <= start + 166.0
    assert p.initiator.next_timer() is None


def test_invalid_ke_retry_with_requested_group() -> None:
    init = ike_config(proposals="aes256gcm16-prfsha256-x25519-ecp256")
    resp = responder_config(proposals="aes256gcm16-prfsha256-ecp256")
    p = Pair(init, [resp])
    p.connect()
    established(p)
    assert of_type(p.events_i, IkeSaEstablished)[0].algorithms.dh == DhId.ECP_256
    inits = [d for direction, d in p.wire if exchange_of(d) == (ExchangeType.IKE_SA_INIT, False)]
    assert len(inits) == 2


def test_invalid_ke_for_group_we_do_not_offer_fails() -> None:
    # The responder wants ECP-256 but the initiator only offers X25519 in that proposal: no match at all.
    p = Pair(
        ike_config(proposals="aes256gcm16-prfsha256-x25519"),
        [responder_config(proposals="aes256gcm16-prfsha256-ecp256")],
    )
    p.connect()
    assert "NO_PROPOSAL_CHOSEN" in of_type(p.events_i, IkeSaFailed)[0].reason


def test_no_proposal_chosen() -> None:
    p = Pair(
        ike_config(proposals="aes128-sha256-ecp256"),
        [responder_config(proposals="aes256gcm16-prfsha256-x25519")],
    )
    p.connect()
    assert "NO_PROPOSAL_CHOSEN" in of_type(p.events_i, IkeSaFailed)[0].reason
    assert of_type(p.events_r, IkeSaFailed)
    assert len(p.table) == 0  # the responder keeps no state


def test_wrong_psk_authentication_failed() -> None:
    p = Pair(ike_config(psk="right"), [responder_config(psk="wrong")])
    p.connect()
    assert "AUTHENTICATION_FAILED" in of_type(p.events_i, IkeSaFailed)[0].reason
    assert "did not verify" in of_type(p.events_r, IkeSaFailed)[0].reason
    assert not of_type(p.events_r, ChildSaEstablished)


def test_responder_picks_connection_by_initiator_identity() -> None:
    other = ike_config(name="other", local_id="bob.example", remote_id="carol@example.org", psk="carol-psk")
    for local_id in ("alice.example", "198.18.0.1", "2001:db8::1", "alice@example.org", "@#0a0b0c"):
        p = Pair(
            ike_config(local_id=local_id, psk="alice-psk"),
            [other, responder_config(name="alice-conn", remote_id=local_id, psk="alice-psk")],
        )
        p.connect()
        established(p)
        assert of_type(p.events_r, IkeSaEstablished)[0].connection == "alice-conn"


def test_prefer_initiator_order() -> None:
    init = ike_config(proposals="aes128-sha256-x25519,aes256gcm16-prfsha256-x25519")
    ours = responder_config(proposals="aes256gcm16-prfsha256-x25519,aes128-sha256-x25519")
    theirs = responder_config(proposals=ours.proposals, prefer_own_proposals=False)
    p = Pair(init, [ours])
    p.connect()
    assert of_type(p.events_i, IkeSaEstablished)[0].algorithms.encr == EncrId.AES_GCM_16
    p = Pair(init, [theirs])
    p.connect()
    assert of_type(p.events_i, IkeSaEstablished)[0].algorithms.encr == EncrId.AES_CBC


def test_traffic_selector_narrowing() -> None:
    ic = child(local="198.19.0.0/16", remote="198.19.2.0/23")
    rc = child(local="198.19.2.0/24", remote="198.19.1.0/24")
    p = Pair(ike_config(children=(ic,)), [responder_config(children=(rc,))])
    p.connect()
    ci, _ = established(p)
    assert ci.ts_local == (Ts.from_cidr("198.19.1.0/24"),)
    assert ci.ts_remote == (Ts.from_cidr("198.19.2.0/24"),)


def test_ts_unacceptable_keeps_ike_sa() -> None:
    ic = child(local="198.19.7.0/24", remote="198.19.8.0/24")
    p = Pair(ike_config(children=(ic,)), [responder_config()])
    p.connect()
    assert of_type(p.events_i, IkeSaEstablished)
    assert of_type(p.events_i, ChildSaFailed) == [
        ChildSaFailed("net", "TS_UNACCEPTABLE", FailureReason.TS_UNACCEPTABLE)
    ]
    assert p.initiator.established and not p.responder.children


def test_transport_mode() -> None:
    ic = child(local="198.18.0.1/32", remote="198.18.0.2/32", mode="transport")
    rc = child(local="198.18.0.2/32", remote="198.18.0.1/32", mode="transport")
    p = Pair(ike_config(children=(ic,)), [responder_config(children=(rc,))])
    p.connect()
    ci, _ = established(p)
    assert ci.mode == "transport"


def test_transport_requested_but_tunnel_answered_is_rejected_and_deleted() -> None:
    ic = child(local="198.19.1.0/24", remote="198.19.2.0/24", mode="transport")
    p = Pair(ike_config(children=(ic,)), [responder_config()])
    p.connect()
    # The responder declines by answering in tunnel mode; the initiator refuses that and
    # deletes the CHILD_SA the responder already installed.
    assert of_type(p.events_i, ChildSaFailed)[0].reason == "responder did not accept the requested mode"
    assert of_type(p.events_r, ChildSaEstablished)[0].mode == "tunnel"
    assert of_type(p.events_r, ChildSaDeleted)[0].by_peer
    assert not p.responder.children and not p.initiator.children


def test_tunnel_requested_against_transport_only_config() -> None:
    rc = child(local="198.19.2.0/24", remote="198.19.1.0/24", mode="transport")
    p = Pair(ike_config(), [responder_config(children=(rc,))])
    p.connect()
    assert of_type(p.events_i, ChildSaFailed)[0].reason == "NO_PROPOSAL_CHOSEN"


def test_cookie_flow() -> None:
    p = Pair(ike_config(), [responder_config()], settings=ResponderSettings(cookie_threshold=0))
    p.connect()
    established(p)
    stats = p.responder_front.stats
    assert stats["cookie_sent"] == 1 and stats["cookie_accepted"] == 1


def test_cookie_forgery_rejected() -> None:
    def corrupt_cookie(direction: str, d: OutgoingDatagram) -> list[OutgoingDatagram]:
        if direction == "r->i" and parse_header(d.data).spi_r == bytes(8) and len(d.data) > 60:
            raw = bytearray(d.data)
            raw[-1] ^= 0xFF  # last byte of the COOKIE value
            return [OutgoingDatagram(bytes(raw), d.local, d.remote)]
        return [d]

    p = Pair(
        ike_config(),
        [responder_config()],
        settings=ResponderSettings(cookie_threshold=0),
        filter=corrupt_cookie,
    )
    p.connect()
    assert not of_type(p.events_i, IkeSaEstablished)
    assert p.responder_front.stats["cookie_invalid"] >= 1 and len(p.table) == 0


def test_second_child_via_create_child_sa_and_deletes() -> None:
    ic2 = child(name="second", local="198.19.11.0/24", remote="198.19.12.0/24", proposals="aes128-sha256")
    rc2 = child(name="second", local="198.19.12.0/24", remote="198.19.11.0/24", proposals="aes128-sha256")
    init = ike_config(children=(child(), ic2))
    resp = responder_config(children=(child(local="198.19.2.0/24", remote="198.19.1.0/24"), rc2))
    p = Pair(init, [resp])
    p.connect()
    ci = of_type(p.events_i, ChildSaEstablished)
    cr = of_type(p.events_r, ChildSaEstablished)
    assert [c.name for c in ci] == ["net", "second"] and [c.name for c in cr] == ["net", "second"]
    assert_child_pair(ci[1], cr[1])
    assert any(exchange_of(d) == (ExchangeType.CREATE_CHILD_SA, False) for _, d in p.wire)

    # initiator deletes the second child
    p.initiator.delete_child(ci[1].spi_in, p.now)
    p.pump()
    assert of_type(p.events_i, ChildSaDeleted) == [
        ChildSaDeleted("second", ci[1].spi_in, ci[1].spi_out, 3, False)
    ]
    assert of_type(p.events_r, ChildSaDeleted) == [
        ChildSaDeleted("second", cr[1].spi_in, cr[1].spi_out, 3, True)
    ]

    # responder deletes the first one
    p.responder.delete_child(cr[0].spi_in, p.now)
    p.pump()
    assert of_type(p.events_i, ChildSaDeleted)[-1] == ChildSaDeleted(
        "net", ci[0].spi_in, ci[0].spi_out, 3, True
    )
    assert not p.initiator.children and not p.responder.children

    p.initiator.create_child(ic2, p.now)
    p.pump()
    assert len(of_type(p.events_i, ChildSaEstablished)) == 3 and len(p.responder.children) == 1


def test_delete_ike_sa_by_responder() -> None:
    p = Pair(ike_config(), [responder_config()])
    p.connect()
    established(p)
    p.responder.delete(p.now)
    p.pump()
    assert of_type(p.events_i, IkeSaDeleted) == [IkeSaDeleted(by_peer=True)]
    assert of_type(p.events_i, ChildSaDeleted)[0].by_peer
    assert of_type(p.events_r, IkeSaDeleted) == [IkeSaDeleted(by_peer=False)]
    assert p.initiator.closed and len(p.table) == 0


def test_delete_ike_sa_unanswered_still_deletes() -> None:
    state = {"cut": False}
    p = Pair(ike_config(), [responder_config()], filter=lambda direction, d: [] if state["cut"] else [d])
    p.connect()
    state["cut"] = True
    p.initiator.delete(p.now)
    p.advance(200)
    assert of_type(p.events_i, IkeSaDeleted) == [IkeSaDeleted(by_peer=False)]


def test_liveness_check() -> None:
    state = {"cut": False}
    p = Pair(ike_config(), [responder_config()], filter=lambda direction, d: [] if state["cut"] else [d])
    p.connect()
    p.initiator.check_liveness(p.now)
    p.pump()
    assert of_type(p.events_i, LivenessChecked) == [LivenessChecked(True)]
    state["cut"] = True
    p.responder.check_liveness(p.now)
    p.advance(200)
    assert of_type(p.events_r, LivenessChecked) == [LivenessChecked(False)]
    assert of_type(p.events_r, IkeSaFailed)


def test_half_open_timeout() -> None:
    p = Pair(
        ike_config(),
        [responder_config()],
        filter=lambda direction, d: [] if exchange_of(d)[0] == ExchangeType.IKE_AUTH else [d],
    )
    p.connect()
    assert len(p.table) == 1
    p.advance(31)
    assert "half-open" in of_type(p.events_r, IkeSaFailed)[0].reason


def test_nat_traversal_floats_to_4500_and_sends_keepalives() -> None:
    p = Pair(ike_config(), [responder_config()], nat_i=Address("198.18.100.1", 31000))
    p.connect()
    ci, cr = established(p)
    assert ci.udp_encap and cr.udp_encap
    assert of_type(p.events_i, PortsChanged) == [PortsChanged(4500, 4500)]
    auth = [d for direction, d in p.wire if exchange_of(d)[0] == ExchangeType.IKE_AUTH]
    assert all(d.encapsulated and d.wire()[:4] == bytes(4) for d in auth)
    assert p.responder.remote == Address("198.18.100.1", 35000)  # NAT mapping of port 4500
    assert p.initiator.nat_local and p.responder.nat_remote
    p.advance(21)
    keepalives = [d for direction, d in p.wire if d.keepalive]
    assert keepalives and keepalives[0].wire() == b"\xff" and keepalives[0].remote.port == 4500


def test_force_encap_without_nat() -> None:
    p = Pair(ike_config(force_encap=True), [responder_config()])
    p.connect()
    ci, cr = established(p)
    assert ci.udp_encap and cr.udp_encap
    assert p.responder.nat_remote and not p.responder.nat_local


def test_initial_contact_not_sent_when_disabled() -> None:
    p = Pair(ike_config(send_initial_contact=False), [responder_config()])
    p.connect()
    established(p)
    assert not of_type(p.events_r, InitialContactReceived)


def test_api_calls_in_wrong_state_do_not_raise() -> None:
    p = Pair(ike_config(), [responder_config()])
    p.initiator.check_liveness(p.now)  # queued until established
    p.initiator.delete_child(12345, p.now)
    p.connect()
    p.initiator.initiate(p.now)  # second initiate is ignored
    p.pump()
    established(p)
    assert p.initiator.stats["initiate_ignored"] == 1 and p.initiator.stats["internal_error"] == 0
    assert of_type(p.events_i, LivenessChecked) == [LivenessChecked(True)]


# IKE_INTERMEDIATE and IKE_FOLLOWUP_KE run only with additional key exchanges (their own tests).
_CLASSIC_EXCHANGES = [e for e in ExchangeType if e <= ExchangeType.INFORMATIONAL]


@pytest.mark.parametrize("exchange", _CLASSIC_EXCHANGES)
@pytest.mark.parametrize("lose", ["request", "response"])
def test_first_datagram_of_each_exchange_lost(exchange: ExchangeType, lose: str) -> None:
    """Every exchange survives losing its first request or response: the initiator retransmits,
    the responder answers a repeated request from its cache and reports nothing twice."""
    dropped: list[OutgoingDatagram] = []

    def lossy(direction: str, d: OutgoingDatagram) -> list[OutgoingDatagram]:
        exch, is_response = exchange_of(d)
        if not dropped and exch == exchange and is_response == (lose == "response"):
            dropped.append(d)
            return []
        return [d]

    ic2 = child(name="second", local="198.19.11.0/24", remote="198.19.12.0/24")
    rc2 = child(name="second", local="198.19.12.0/24", remote="198.19.11.0/24")
    init = ike_config(children=(child(), ic2))
    resp = responder_config(children=(child(local="198.19.2.0/24", remote="198.19.1.0/24"), rc2))
    p = Pair(init, [resp], filter=lossy)
    p.connect()
    p.advance(10)
    p.initiator.check_liveness(p.now)
    p.pump()
    p.advance(10)
    assert dropped, "the exchange under test never ran"
    assert len(of_type(p.events_i, IkeSaEstablished)) == 1 and len(of_type(p.events_r, IkeSaEstablished)) == 1
    assert [c.name for c in of_type(p.events_i, ChildSaEstablished)] == ["net", "second"]
    assert [c.name for c in of_type(p.events_r, ChildSaEstablished)] == ["net", "second"]
    assert of_type(p.events_i, LivenessChecked) == [LivenessChecked(True)]
    assert p.initiator.stats["retransmits"] == 1
    if lose == "response":
        assert p.responder.stats["duplicate_request_answered"] == 1


def _pfs_pair(init_esp: str, resp_esp: str) -> Pair:
    ic2 = child(name="pfs", local="198.19.11.0/24", remote="198.19.12.0/24", proposals=init_esp)
    rc2 = child(name="pfs", local="198.19.12.0/24", remote="198.19.11.0/24", proposals=resp_esp)
    init = ike_config(children=(child(proposals=init_esp), ic2))
    resp = responder_config(
        children=(child(local="198.19.2.0/24", remote="198.19.1.0/24", proposals=resp_esp), rc2)
    )
    p = Pair(init, [resp])
    p.connect()
    return p


def test_pfs_in_create_child_sa() -> None:
    p = _pfs_pair("aes128gcm16-ecp256", "aes128gcm16-ecp256")
    ci, cr = of_type(p.events_i, ChildSaEstablished), of_type(p.events_r, ChildSaEstablished)
    assert [c.name for c in ci] == ["net", "pfs"]
    assert ci[0].algorithms.dh is None  # IKE_AUTH never runs a DH for its CHILD_SA
    assert ci[1].algorithms.dh == DhId.ECP_256 and cr[1].algorithms.dh == DhId.ECP_256
    assert_child_pair(ci[1], cr[1])


def test_pfs_invalid_ke_retry() -> None:
    p = _pfs_pair("aes128gcm16-x25519-ecp256", "aes128gcm16-ecp256")
    ci = of_type(p.events_i, ChildSaEstablished)
    assert [c.name for c in ci] == ["net", "pfs"] and ci[1].algorithms.dh == DhId.ECP_256
    assert_child_pair(ci[1], of_type(p.events_r, ChildSaEstablished)[1])
    requests = [d for _, d in p.wire if exchange_of(d) == (ExchangeType.CREATE_CHILD_SA, False)]
    assert len(requests) == 2


def test_pfs_mismatch_fails_only_the_child() -> None:
    p = _pfs_pair("aes128gcm16-ecp256", "aes128gcm16")
    assert of_type(p.events_i, ChildSaFailed) == [
        ChildSaFailed("pfs", "NO_PROPOSAL_CHOSEN", FailureReason.NO_PROPOSAL_CHOSEN)
    ]
    assert p.initiator.established and len(p.initiator.children) == 1
