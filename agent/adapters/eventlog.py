"""One log line per engine event (docs/agent-standalone.md, "Logs"): SPIs, identities,
selectors and algorithms, never keys. Logged under the adapter's logger name."""

from __future__ import annotations

import logging

from meshsec.agent.adapters.names import algorithm_text, protocol_name
from meshsec.agent.ike import (
    ChildSaDeleted,
    ChildSaEstablished,
    ChildSaFailed,
    ChildSaRekeyed,
    Event,
    IkeSa,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaFailed,
    InitialContactReceived,
    PeerDead,
)

log = logging.getLogger("meshsec.agent.adapters.ike")


class SpiText:
    """`<SPIi>_i <SPIr>_r`, formatted only if a log line is actually emitted."""

    __slots__ = ("sa",)

    def __init__(self, sa: IkeSa) -> None:
        self.sa = sa

    def __str__(self) -> str:
        return f"{self.sa.spi_i.hex()}_i {self.sa.spi_r.hex()}_r"


def log_event(name: str, sa: IkeSa, ev: Event) -> None:
    if isinstance(ev, IkeSaEstablished | ChildSaEstablished) and not log.isEnabledFor(logging.INFO):
        return  # formatting selectors is not free at 1000s of SAs/s
    if isinstance(ev, IkeSaEstablished):
        log.info(
            "%s: IKE SA %s ESTABLISHED %s %s <-> %s %s [%s]%s",
            name, SpiText(sa), sa.local, ev.local_id, sa.remote, ev.remote_id,
            algorithm_text(ev.algorithms), " udp-encap" if ev.udp_encap else "",
        )  # fmt: skip
    elif isinstance(ev, ChildSaEstablished):
        log.info(
            "%s: CHILD_SA %s INSTALLED %s %s spi %08x_i %08x_o %s === %s [%s]",
            name, ev.name, protocol_name(ev.protocol), ev.mode, ev.spi_in, ev.spi_out,
            ",".join(map(str, ev.ts_local)), ",".join(map(str, ev.ts_remote)),
            algorithm_text(ev.algorithms),
        )  # fmt: skip
    elif isinstance(ev, ChildSaDeleted):
        log.info(
            "%s: CHILD_SA %s DELETED spi %08x_i %08x_o%s",
            name, ev.name, ev.spi_in, ev.spi_out, " by peer" if ev.by_peer else "",
        )  # fmt: skip
    elif isinstance(ev, ChildSaRekeyed):
        log.info("%s: CHILD_SA %s REKEYED spi %08x_i -> %08x_i", name, ev.name, ev.old_spi_in, ev.new_spi_in)
    elif isinstance(ev, ChildSaFailed):
        log.warning("%s: CHILD_SA %s FAILED: %s", name, ev.name, ev.reason)
    elif isinstance(ev, IkeSaFailed):
        log.warning("%s: IKE SA %s FAILED: %s", name, SpiText(sa), ev.reason)
    elif isinstance(ev, IkeSaDeleted):
        log.info("%s: IKE SA %s DELETED%s", name, SpiText(sa), " by peer" if ev.by_peer else "")
    elif isinstance(ev, PeerDead):
        log.warning(
            "%s: IKE SA %s: peer %s is DEAD (silent for the retransmit schedule), action %s",
            name, SpiText(sa), sa.remote, ev.action,
        )  # fmt: skip
    elif isinstance(ev, InitialContactReceived):
        log.info("%s: INITIAL_CONTACT from %s", name, ev.remote_id)
