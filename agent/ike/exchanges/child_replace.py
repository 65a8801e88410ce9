"""CHILD_SA replacement: a new pair negotiated with a changed configuration (selectors,
proposals, mode, lifetimes) or after the old one failed to install takes over from the old one,
make-before-break, with the succession rules of a rekey (child_rekey.py).

Initiator (`ChildReplace`): a CREATE_CHILD_SA for a new CHILD_SA, without N(REKEY_SA) since the
selectors may differ (RFC 7296 2.8 keeps them for a rekey). The new pair's ChildSaEstablished
names the pair it `replaces` (install it with that reqid), outbound traffic moves to it at once
(ChildSaRekeyed) and the old pair is deleted. Refused: ChildSaFailed, the old pair stays
INSTALLED and nothing is retried (the caller decides).

Responder (`respond_new_child`): a new CHILD_SA of the same name as one we have INSTALLED is
that pair's replacement: its outbound SA waits (outbound_active False) until the initiator
deletes the old pair, exactly as for a rekey we answered. Both ends replacing (or one rekeying,
one replacing) the same pair at once is a collision of RFC 7296 2.8.1: the lower nonce loses."""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshsec.agent.ike.config import ChildConfig
from meshsec.agent.ike.constants import NONCE_SIZE, NotifyType, PayloadType
from meshsec.agent.ike.exchanges.child_create import ChildCreate, child_answer_payloads
from meshsec.agent.ike.exchanges.child_rekey import ChildRekey
from meshsec.agent.ike.exchanges.child_sa import Succession, respond_child, succeeded_by_peer, supersede
from meshsec.agent.ike.exchanges.informational import ChildDelete
from meshsec.agent.ike.payloads import Message, NoncePayload, NotifyPayload, Payload
from meshsec.agent.ike.proposals import Chosen
from meshsec.agent.ike.states import ChildState

if TYPE_CHECKING:
    from meshsec.agent.ike.child import ChildSa
    from meshsec.agent.ike.sa import IkeSa


class ChildReplace(ChildRekey):
    def finish(self, sa: IkeSa, chosen: Chosen, nonce_r: bytes, secrets: list[bytes], now: float) -> None:
        old = sa.children.get(self.spi_in)
        rival = old.peer_rekey[0] if old is not None and old.peer_rekey is not None else None
        super().finish(sa, chosen, nonce_r, secrets, now)
        won = self.created is not None and self.created.state is not ChildState.DELETING
        pair = sa.children.get(rival) if rival is not None and won else None
        if pair is not None and pair.state is ChildState.INSTALLED:
            # The peer's pair lost the collision. A peer that rekeyed while we replaced cannot
            # tell the two collided (ours carried no REKEY_SA), so it may never delete it: we do.
            pair.move_to(ChildState.DELETING)
            sa.queue(ChildDelete(pair.spi_in))

    def announce(self, old: ChildSa) -> list[Payload]:
        return []  # a new CHILD_SA as far as the peer can tell; same name is what links them

    def _refused(self, sa: IkeSa, old: ChildSa, errors: list[int], now: float) -> None:
        # ChildSaFailed was emitted already (ChildCreate.process).
        sa.stats["replace_refused"] += 1
        if old.peer_rekey is not None:
            supersede(old, old.peer_rekey[0])  # the peer's new pair (rekey or replacement) wins
        elif old.state is ChildState.REKEYING:
            old.move_to(ChildState.INSTALLED)


def _replaceable(sa: IkeSa, name: str) -> ChildSa | None:
    """The pair a new CHILD_SA named `name` from the peer replaces, if any. Not while we are
    creating one of that name ourselves: then both ends made a new pair for the same reason,
    and whoever asked for them decides which stays (as with a plain create_child)."""
    ours = [sa.tasks.active, *sa.tasks.pending()]
    if any(type(t) is ChildCreate and t.config.name == name for t in ours):
        return None
    return next(
        (
            c
            for c in sa.children.values()
            if c.name == name and c.state in (ChildState.INSTALLED, ChildState.REKEYING)
        ),
        None,
    )


def respond_new_child(sa: IkeSa, msg: Message, now: float) -> list[Payload]:
    """A new CHILD_SA (RFC 7296 1.3.1), or the replacement of the same-named one."""
    nonce = msg.find(PayloadType.NONCE)
    if not isinstance(nonce, NoncePayload):
        return [NotifyPayload(NotifyType.INVALID_SYNTAX)]
    nr = sa.rnd.bytes(NONCE_SIZE)
    replaced: list[ChildSa] = []

    def succession(cfg: ChildConfig) -> Succession:
        old = _replaceable(sa, cfg.name)
        if old is None:
            return Succession()
        replaced.append(old)
        return Succession(old.spi_in, outbound_active=False)

    answer = respond_child(sa, msg, nonce.data, nr, now=now, pfs_allowed=True, succession=succession)
    if answer.spi_in is not None and replaced:
        sa.stats["replaced_by_peer"] += 1
        succeeded_by_peer(replaced[0], answer.spi_in, min(nonce.data, nr))
    return child_answer_payloads(answer, nr)
