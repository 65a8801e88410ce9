"""Why an IKE SA or CHILD_SA of a tunnel failed, as the reason a status report and the
`ike_failures` metric show (docs/agent.md, docs/api.md): a notify name the operator can act on,
TIMEOUT, DPD_TIMEOUT, or IKE_FAILED for anything else."""

from __future__ import annotations

from meshsec.agent.ike import ChildSaFailed, IkeSaFailed
from meshsec.agent.node.metrics import NOTIFY_FAILURES


def failure_reason(ev: IkeSaFailed | ChildSaFailed) -> str:
    # The engine's failure events carry no typed reason yet: its text is all there is.
    return _from_text(ev.reason)


def _from_text(text: str) -> str:
    upper = text.upper()
    for known in NOTIFY_FAILURES:
        if known in upper:
            return known
    if "dead peer detection" in text:
        return "DPD_TIMEOUT"
    if "timeout" in text.lower() or "retransmi" in text.lower():
        return "TIMEOUT"
    return "IKE_FAILED"
