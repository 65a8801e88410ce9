"""Make-before-break reauthentication: a complete new IKE SA (fresh IKE_SA_INIT and IKE_AUTH,
every CHILD_SA) is built next to the old one, which is deleted only after the new one finished
all its setup exchanges. No INITIAL_CONTACT, so the peer keeps the old SAs meanwhile."""

from __future__ import annotations

from meshsec.agent.ike.events import (
    ChildSaEstablished,
    IkeSaDeleted,
    IkeSaEstablished,
    InitialContactReceived,
)

from .lifecycle import B, Net
from .peers import child, ike_config


def test_reauthentication_replaces_the_ike_sa_and_all_children() -> None:
    a_children = (child("net"), child("web", local="198.19.3.0/24", remote="198.19.4.0/24"))
    b_children = (child("net", local="198.19.2.0/24", remote="198.19.1.0/24"),
                  child("web", local="198.19.4.0/24", remote="198.19.3.0/24"))  # fmt: skip
    a = ike_config(children=a_children, reauth_time=100)
    b = ike_config(local_id="bob.example", remote_id="alice.example", children=b_children)
    net = Net([a], [b])
    net.a.connect(a, B, net.now)
    net.settle()
    first = net.a.sa()
    old_spis = set(first.children)
    net.traffic.clear()
    net.advance(110)
    new = net.a.sa()
    assert new is not first and first.closed and new.established
    assert first.stats["reauthenticated"] == 1
    assert len(net.a.of_type(IkeSaEstablished)) == 2 and len(net.b.of_type(IkeSaEstablished)) == 2
    assert len(net.a.of_type(ChildSaEstablished)) == 4  # both children again
    assert not set(new.children) & old_spis
    # The old SA was deleted by us, after the new one had both CHILD_SAs.
    assert net.a.of_type(IkeSaDeleted) == [IkeSaDeleted(by_peer=False)]
    assert net.b.of_type(IkeSaDeleted) == [IkeSaDeleted(by_peer=True)]
    assert len(net.b.of_type(InitialContactReceived)) == 1  # only from the very first IKE_AUTH
    net.assert_mirrored(pairs=2)
    # A->B never loses a packet: B (responder) installs before answering. B->A may lose the
    # packets sent within the IKE_AUTH round trip (B switches at once, as any IKE responder).
    assert net.traffic["lost"] <= 2 and net.traffic["miskeyed"] == 0, net.traffic
    net.traffic.clear()
    net.advance(5)
    net.assert_no_loss()


def test_only_the_side_that_set_the_connection_up_reauthenticates() -> None:
    a = ike_config(reauth_time=50, rekey_time=20, rand_time=0)
    b = ike_config(local_id="bob.example", remote_id="alice.example", reauth_time=50,
                   children=(child(local="198.19.2.0/24", remote="198.19.1.0/24"),))  # fmt: skip
    net = Net([a], [b])
    net.a.connect(a, B, net.now)
    net.settle()
    net.advance(60)  # IKE rekeys at 20 and 40 s do not hand the reauth duty to anyone else
    assert sum(sa.stats["reauthenticated"] for sa in net.a.events_sas()) == 1
    assert sum(sa.stats["reauthenticated"] for sa in net.b.events_sas()) == 0
    assert len(net.a.sas()) == 1 and len(net.b.sas()) == 1
    net.assert_mirrored()
