"""Why an IKE SA or CHILD_SA of a tunnel failed, as the reason a status report and the
`ike_failures` metric show (docs/agent.md, docs/api.md): a notify name the operator can act on,
TIMEOUT, DPD_TIMEOUT, or IKE_FAILED for anything else. From the engine's typed `code`."""

from __future__ import annotations

from meshsec.agent.ike import ChildSaFailed, FailureReason, IkeSaFailed
from meshsec.agent.node.metrics import NOTIFY_FAILURES

_TIMEOUTS = {FailureReason.TIMEOUT: "TIMEOUT", FailureReason.HALF_OPEN_TIMEOUT: "TIMEOUT",
             FailureReason.DPD_TIMEOUT: "DPD_TIMEOUT"}  # fmt: skip


def failure_reason(ev: IkeSaFailed | ChildSaFailed) -> str:
    if ev.code.value in NOTIFY_FAILURES:
        return ev.code.value
    return _TIMEOUTS.get(ev.code, "IKE_FAILED")
