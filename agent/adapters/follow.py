"""Address following: the IKE SA moved, and its CHILD_SAs' outer addresses, ESP-in-UDP ports
and encapsulation must follow. It moves when authenticated IKE traffic comes from a new address
or port (RFC 7296 2.23: a NAT mapping changed, the peer floated to 4500), and with MOBIKE (RFC
4555) when an UPDATE_SA_ADDRESSES is accepted or answered (then NAT detection on the new path
may also switch UDP encapsulation on or off). Pure: which CHILD_SAs are left behind and the
event each is reinstalled from; the adapter moves them in the data plane."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

from meshsec.agent.adapters.install import ChildKey
from meshsec.agent.adapters.records import ChildRecord
from meshsec.agent.ike import Address, ChildSaEstablished


@dataclass(frozen=True, slots=True)
class Move:
    child: ChildRecord
    old_key: ChildKey  # where the installer knows it now
    event: ChildSaEstablished  # the child's event with the IKE SA's encapsulation now


def left_behind(
    children: Iterable[ChildRecord], local: Address, remote: Address, udp_encap: bool | None = None
) -> list[Move]:
    """`udp_encap` None: encapsulation stays as each CHILD_SA negotiated it."""
    moves = []
    for c in children:
        encap = c.event.udp_encap if udp_encap is None else udp_encap
        if (c.local, c.remote, c.event.udp_encap) != (local, remote, encap):
            moves.append(Move(c, c.key, dataclasses.replace(c.event, udp_encap=encap)))
    return moves
