"""Our own address went away (MOBIKE, RFC 4555, initiator side): which IKE SAs must move, and
to where. Pure; the adapter polls the host's addresses and calls IkeSa.roam.

Only SAs that negotiated MOBIKE move this way: for any other, an UPDATE_SA_ADDRESSES would not
be understood (RFC 4555 3.2), and the peer notices the loss by DPD or reauthentication."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass

from meshsec.agent.adapters.records import SaRecord
from meshsec.agent.ike import Address

SourceFor = Callable[[str], str]  # the address the host sends from towards a peer (raises OSError)


@dataclass(frozen=True, slots=True)
class Roam:
    record: SaRecord
    local: Address


def roams(records: Iterable[SaRecord], present: Collection[str], source_for: SourceFor) -> list[Roam]:
    """For each established MOBIKE SA whose local address is no longer among `present`: the
    address the host would now use towards its peer (same port: 4500 stays 4500). A peer no
    longer routable, or a source address not (yet) among `present`, waits for the next poll."""
    out: list[Roam] = []
    for record in records:
        sa = record.sa
        if not sa.established or not sa.mobike or sa.local.host in present:
            continue
        try:
            host = source_for(sa.remote.host)
        except OSError:
            continue
        if host in present and host != sa.local.host:
            out.append(Roam(record, Address(host, sa.local.port)))
    return out
