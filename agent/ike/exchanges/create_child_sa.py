"""The peer's CREATE_CHILD_SA request (RFC 7296 1.3): a new CHILD_SA (or the replacement of
a same-named one), a CHILD_SA rekey (N(REKEY_SA)) or an IKE SA rekey (no TS payloads), each
answered by its own module; none while the previous one's IKE_FOLLOWUP_KE exchanges are due."""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshsec.agent.ike.constants import NotifyType, PayloadType
from meshsec.agent.ike.exchanges.child_rekey import respond_child_rekey
from meshsec.agent.ike.exchanges.child_replace import respond_new_child
from meshsec.agent.ike.exchanges.ike_followup import drop_followup
from meshsec.agent.ike.exchanges.ike_rekey import respond_ike_rekey
from meshsec.agent.ike.payloads import Message, NotifyPayload, Payload

if TYPE_CHECKING:
    from meshsec.agent.ike.sa import IkeSa


def respond_create_child_sa(sa: IkeSa, msg: Message, now: float) -> list[Payload]:
    if sa.followup is not None:
        if not sa.followup.expired(now):
            # The peer's previous CREATE_CHILD_SA still has IKE_FOLLOWUP_KE exchanges to run
            # (RFC 9370 2.2.4): what it makes must exist before anything else changes.
            sa.stats["followup_pending_temporary_failure"] += 1
            return [NotifyPayload(NotifyType.TEMPORARY_FAILURE)]
        drop_followup(sa)
    rekey = msg.notify(NotifyType.REKEY_SA)
    if rekey is None and msg.find(PayloadType.TSi) is None:
        return respond_ike_rekey(sa, msg, now)  # no REKEY_SA, no TS: an IKE SA rekey (RFC 7296 1.3.2)
    if sa.rekeying_ike():
        # New CHILD_SAs would have to move to the successor IKE SA mid-flight (2.25.2).
        return [NotifyPayload(NotifyType.TEMPORARY_FAILURE)]
    if rekey is not None:
        return respond_child_rekey(sa, msg, rekey, now)
    return respond_new_child(sa, msg, now)
