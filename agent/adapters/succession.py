"""Which CHILD_SA a new one succeeds, and what the data plane does with it: the reqid it shares
(a rekey or a changed configuration keeps the policies' reqid, so traffic on selectors both
pairs have keeps flowing) and whether its outbound SA waits for the old pair's DELETE.

Pure functions over the adapter's ChildRecords; `agent/adapters/ike.py` carries them out."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping

from meshsec.agent.adapters.install import ChildKey
from meshsec.agent.adapters.records import ChildRecord
from meshsec.agent.ike import ChildSaEstablished


def held_for(
    ev: ChildSaEstablished, children: Mapping[int, ChildRecord], replacing: Collection[str]
) -> int | None:
    """The inbound SPI of the same-named CHILD_SA a new one was made by the peer to replace (a
    changed configuration): not a rekey and not one we asked for. Its outbound SA waits until
    that pair is deleted, as for a rekey we answered."""
    if ev.replaces is not None or ev.name in replacing:
        return None
    return next((spi for spi, c in children.items() if c.event.name == ev.name), None)


def released_by(deleted_spi_in: int, children: Mapping[int, ChildRecord]) -> list[int]:
    """Inbound SPIs of the CHILD_SAs held for `deleted_spi_in`: their outbound SAs go live now."""
    return [spi for spi, c in children.items() if c.holds_for == deleted_spi_in]


def shared_reqid(
    child: ChildRecord, children: Mapping[int, ChildRecord], reqid_of: Callable[[ChildKey], int | None]
) -> int | None:
    """The reqid a new CHILD_SA installs with: its rekeyed predecessor's, else that of an
    installed same-named pair it replaces (a changed configuration), else a fresh one (None)."""
    ev = child.event
    if ev.replaces is not None:
        return reqid_of((child.local.host, ev.protocol, ev.replaces))
    for spi, c in children.items():
        if spi != ev.spi_in and c.event.name == ev.name and c.installed:
            return reqid_of(c.key)
    return None
