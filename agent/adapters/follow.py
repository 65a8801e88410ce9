"""Address following (RFC 7296 2.23): authenticated IKE traffic from a new address or port moved
the IKE SA, and its CHILD_SAs' outer addresses and ESP-in-UDP ports must follow. Pure: which
CHILD_SAs are left behind; the adapter moves them in the data plane."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from meshsec.agent.adapters.install import ChildKey
from meshsec.agent.adapters.records import ChildRecord
from meshsec.agent.ike import Address


@dataclass(frozen=True, slots=True)
class Move:
    child: ChildRecord
    old_key: ChildKey  # where the installer knows it now


def left_behind(children: Iterable[ChildRecord], local: Address, remote: Address) -> list[Move]:
    return [Move(c, c.key) for c in children if (c.local, c.remote) != (local, remote)]
