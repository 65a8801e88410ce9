"""Our own address went away (MOBIKE, RFC 4555, initiator side): which IKE SAs must move, and
to where. Pure but for `is_local` (can we bind to it: exact, whichever interface holds it) and
the kernel's source address choice; the adapter runs it on address events and calls
IkeSa.roam.

Only SAs that negotiated MOBIKE move this way: for any other, an UPDATE_SA_ADDRESSES would not
be understood (RFC 4555 3.2), and the peer notices the loss by DPD or reauthentication."""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from meshsec.agent.adapters.records import SaRecord
from meshsec.agent.ike import Address

SourceFor = Callable[[str], str]  # the address the host sends from towards a peer (raises OSError)
IsLocal = Callable[[str], bool]


def is_local(host: str) -> bool:
    """The host holds `host` (a UDP socket can bind to it). An IPv6 address still in duplicate
    address detection counts as not yet there."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.bind((host, 0))
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                return False
            raise
    return True


@dataclass(frozen=True, slots=True)
class Roam:
    record: SaRecord
    local: Address


def roams(records: Iterable[SaRecord], local: IsLocal, source_for: SourceFor) -> list[Roam]:
    """For each established MOBIKE SA whose local address the host no longer holds: the
    address the host would now use towards its peer (same port: 4500 stays 4500). A peer no
    longer routable waits for the next address event."""
    out: list[Roam] = []
    for record in records:
        sa = record.sa
        if not sa.established or not sa.mobike or local(sa.local.host):
            continue
        try:
            host = source_for(sa.remote.host)
        except OSError:
            continue
        if host != sa.local.host:
            out.append(Roam(record, Address(host, sa.local.port)))
    return out
