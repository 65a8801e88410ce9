"""MOBIKE (RFC 4555) with a fake clock: MOBIKE_SUPPORTED negotiation, UPDATE_SA_ADDRESSES from
a new address moving the IKE SA and its CHILD_SAs (same SPIs, no new SA), a lost request or
answer retransmitted, NAT detection on the new path (UDP 4500 after it, NO_NATS_ALLOWED
refusing it), and a peer without MOBIKE getting no update at all."""

from __future__ import annotations

import dataclasses

from meshsec.agent.ike.address import Address
from meshsec.agent.ike.config import RetransmitConfig
from meshsec.agent.ike.constants import NATT_PORT, NotifyType
from meshsec.agent.ike.events import AddressesUpdated, AddressUpdateFailed, IkeSaFailed, IkeSaRekeyed
from meshsec.agent.ike.failures import FailureReason
from meshsec.agent.ike.parse import parse_header
from meshsec.agent.ike.sa import OutgoingDatagram
from meshsec.agent.ike.snapshot import from_dict, to_dict

from .lifecycle import B, Net
from .test_child_rekey import configs

A_NEW = Address("198.18.7.11", 500)  # where A roams to
NAT_PUBLIC = "198.18.9.1"  # the NAT box's outside address
FAST = RetransmitConfig(timeout=1.0, base=2.0, tries=3)


class NatNet(Net):
    """Net plus an optional NAT in front of A: datagrams A sends from a host in `behind_nat`
    leave with NAT_PUBLIC and a port of the NAT's choosing; answers to it go back inside.
    `gone`: hosts no longer reachable (an address removed from the interface)."""

    def __init__(self, *args: object, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.behind_nat: set[str] = set()
        self.gone: set[str] = set()
        self._mappings: dict[Address, Address] = {}

    def _translate(self, direction: str, d: OutgoingDatagram) -> OutgoingDatagram | None:
        if d.local.host in self.gone or d.remote.host in self.gone:
            return None
        if direction == "a->b" and d.local.host in self.behind_nat:
            public = self._mappings.setdefault(d.local, Address(NAT_PUBLIC, 30000 + len(self._mappings)))
            return dataclasses.replace(d, local=public)
        if direction == "b->a" and d.remote.host == NAT_PUBLIC:
            inside = next(k for k, v in self._mappings.items() if v == d.remote)
            return dataclasses.replace(d, remote=inside)
        return d

    def _collect(self) -> None:
        for agent, direction in ((self.a, "a->b"), (self.b, "b->a")):
            for d in agent.table.datagrams_to_send():
                if self.filter is not None and not self.filter(direction, d):
                    continue
                moved = self._translate(direction, d)
                if moved is not None:
                    self.queue.append((direction, moved))
            self._drain(agent)


def connected(a_kw: dict[str, object] | None = None, b_kw: dict[str, object] | None = None) -> NatNet:
    a_cfg, _ = configs(**{"mobike": True, **(a_kw or {})})
    _, b_cfg = configs(**{"mobike": True, **(b_kw or {})})
    net = NatNet([a_cfg], [b_cfg])
    net.a.connect(a_cfg, B, net.now)
    net.settle()
    net.assert_mirrored()
    net.traffic.clear()
    return net


def _is_update(d: OutgoingDatagram) -> bool:
    # Encrypted, so recognised by exchange and direction: the only INFORMATIONAL request from
    # A in these tests is the update.
    h = parse_header(d.data)
    return h.exchange == 37 and not h.is_response


def test_mobike_is_negotiated_only_when_both_announce_it() -> None:
    net = connected()
    assert net.a.sa().mobike and net.b.sa().mobike
    one_sided = connected(b_kw={"mobike": False})
    assert not one_sided.a.sa().mobike and not one_sided.b.sa().mobike


def test_update_moves_the_ike_sa_and_its_children_without_a_new_sa() -> None:
    net = connected()
    sa_a, sa_b = net.a.sa(), net.b.sa()
    spis, children_a = (sa_a.spi_i, sa_a.spi_r), dict(sa_a.children)
    net.gone.add("198.18.7.1")  # the old address is gone at once
    sa_a.roam(A_NEW, net.now)
    net.settle()
    assert (sa_b.local, sa_b.remote) == (B, A_NEW)
    assert sa_a.local == A_NEW
    assert net.b.of_type(AddressesUpdated) == [AddressesUpdated(B, A_NEW, False)]
    assert net.a.of_type(AddressesUpdated) == [AddressesUpdated(A_NEW, B, False)]
    # The same IKE SA and CHILD_SAs: nothing was rekeyed or re-created.
    assert (net.a.sa(), net.b.sa()) == (sa_a, sa_b) and (sa_a.spi_i, sa_a.spi_r) == spis
    assert sa_a.children == children_a and not net.a.of_type(IkeSaRekeyed)
    net.advance(2)
    net.assert_no_loss()
    # The new path carries later exchanges both ways.
    sa_b.check_liveness(net.now)
    sa_a.check_liveness(net.now)
    net.settle()
    assert sa_a.stats["address_updates_sent"] == 1 and sa_b.stats["address_updates_received"] == 1
    assert not net.a.of_type(IkeSaFailed) and not net.b.of_type(IkeSaFailed)


def test_a_lost_update_is_retransmitted_from_the_new_address() -> None:
    net = connected({"retransmit": FAST})
    sa_a, sa_b = net.a.sa(), net.b.sa()
    dropped: list[OutgoingDatagram] = []

    def lose_first_update(direction: str, d: OutgoingDatagram) -> bool:
        if direction == "a->b" and _is_update(d) and not dropped:
            dropped.append(d)
            return False
        return True

    net.filter = lose_first_update
    net.gone.add("198.18.7.1")
    sa_a.roam(A_NEW, net.now)
    net.settle()
    assert sa_b.remote != A_NEW and dropped and dropped[0].local == A_NEW
    net.advance(1.5)  # the first retransmission, 1 s later
    assert sa_a.stats["retransmits"] == 1
    assert sa_b.remote == A_NEW and net.a.of_type(AddressesUpdated)


def test_a_lost_answer_is_answered_again_along_the_new_path() -> None:
    net = connected({"retransmit": FAST})
    sa_a, sa_b = net.a.sa(), net.b.sa()
    lost: list[OutgoingDatagram] = []

    def lose_first_answer(direction: str, d: OutgoingDatagram) -> bool:
        if direction == "b->a" and not lost:
            lost.append(d)
            return False
        return True

    net.filter = lose_first_answer
    sa_a.roam(A_NEW, net.now)
    net.settle()
    assert lost and lost[0].remote == A_NEW and not net.a.of_type(AddressesUpdated)
    net.advance(1.5)
    assert sa_b.stats["duplicate_request_answered"] == 1
    assert net.a.of_type(AddressesUpdated) == [AddressesUpdated(A_NEW, B, False)]
    assert len(net.b.of_type(AddressesUpdated)) == 1  # the duplicate moved nothing again


def test_a_nat_on_the_new_path_moves_ike_and_esp_to_udp_4500() -> None:
    net = connected()
    sa_a, sa_b = net.a.sa(), net.b.sa()
    assert not sa_a.udp_encap
    net.behind_nat.add(A_NEW.host)
    sa_a.roam(A_NEW, net.now)
    net.settle()
    assert sa_b.nat_remote and sa_a.nat_local  # NAT detection ran again on the new path
    (update_a,) = net.a.of_type(AddressesUpdated)
    assert update_a.udp_encap and update_a.local.port == NATT_PORT and update_a.remote.port == NATT_PORT
    assert net.b.of_type(AddressesUpdated)[0].udp_encap
    # A floated after the answer; B follows with A's next message (from the NAT's 4500 mapping).
    sa_a.check_liveness(net.now)
    net.settle()
    assert sa_b.remote.host == NAT_PUBLIC and sa_b.local.port == NATT_PORT
    assert sa_a.next_timer() is not None  # NAT keepalives now (A is behind the NAT)


def test_no_nats_allowed_refuses_a_nat_on_the_new_path() -> None:
    net = connected({"mobike_no_nats": True})
    sa_a, sa_b = net.a.sa(), net.b.sa()
    old_a, old_b = (sa_a.local, sa_a.remote), (sa_b.local, sa_b.remote)
    net.behind_nat.add(A_NEW.host)
    sa_a.roam(A_NEW, net.now)
    net.settle()
    (failed,) = net.a.of_type(AddressUpdateFailed)
    assert failed.code is FailureReason.UNEXPECTED_NAT_DETECTED
    assert failed.code.notify_type is NotifyType.UNEXPECTED_NAT_DETECTED
    assert (sa_a.local, sa_a.remote) == old_a and (sa_b.local, sa_b.remote) == old_b
    assert not net.b.of_type(AddressesUpdated) and sa_b.stats["address_update_nat_refused"] == 1
    # Without a NAT the same strict update goes through.
    sa_a.roam(A_NEW, net.now)
    net.behind_nat.clear()
    net.settle()
    assert sa_b.remote == A_NEW


def test_peer_without_mobike_gets_no_update() -> None:
    net = connected(b_kw={"mobike": False})
    sa_a = net.a.sa()
    sa_a.roam(A_NEW, net.now)
    assert net.a.table.datagrams_to_send() == []  # nothing sent at all
    net.settle()
    (failed,) = net.a.of_type(AddressUpdateFailed)
    assert failed.code is FailureReason.MOBIKE_NOT_NEGOTIATED
    assert sa_a.local.host == "198.18.7.1" and sa_a.stats["address_update_without_mobike"] == 1


def test_an_unanswered_update_fails_the_sa_after_the_retransmit_schedule() -> None:
    net = connected({"retransmit": FAST})
    sa_a = net.a.sa()
    net.filter = lambda direction, d: direction != "a->b"
    sa_a.roam(A_NEW, net.now)
    net.advance(20)
    assert [e.code for e in net.a.of_type(AddressUpdateFailed)] == [FailureReason.TIMEOUT]
    (failed,) = net.a.of_type(IkeSaFailed)
    assert failed.code is FailureReason.TIMEOUT and sa_a.stats["retransmits"] == 3


def test_roaming_twice_quickly_ends_on_the_newest_address() -> None:
    net = connected()
    sa_a, sa_b = net.a.sa(), net.b.sa()
    newest = Address("198.18.7.12", 500)
    sa_a.roam(A_NEW, net.now)
    sa_a.roam(newest, net.now)  # before the first was answered
    net.settle()
    assert sa_b.remote == newest and sa_a.local == newest


def test_the_original_responder_announces_its_new_address() -> None:
    net = connected()
    sa_a, sa_b = net.a.sa(), net.b.sa()
    b_new = Address("198.18.7.22", 500)
    sa_b.roam(b_new, net.now)  # B may not send UPDATE_SA_ADDRESSES (RFC 4555 3.4)
    net.settle()
    assert sa_b.local == b_new and sa_a.remote == b_new
    assert net.b.of_type(AddressesUpdated) == [AddressesUpdated(b_new, Address("198.18.7.1", 500), False)]
    assert sa_a.peer_additional == ()  # NO_ADDITIONAL_ADDRESSES: the new one is its only address


def test_a_resumed_sa_still_knows_mobike_was_negotiated() -> None:
    net = connected()
    sa_a = net.a.sa()
    doc = to_dict(sa_a, net.now)
    resumed = from_dict(doc, sa_a.config, net.now, 0, rnd=net.a.rnd)
    assert resumed.mobike
    doc.pop("mobike")  # written before MOBIKE existed
    assert not from_dict(doc, sa_a.config, net.now, 0, rnd=net.a.rnd).mobike
