"""A CHILD_SA as the engine keeps it: the negotiated pair of SAs, its lifetimes and where it
stands in a rekey or replacement (make-before-break, RFC 7296 2.8)."""

from __future__ import annotations

from dataclasses import dataclass

from meshsec.agent.ike.config import ChildConfig
from meshsec.agent.ike.keys import DirectionKeys
from meshsec.agent.ike.proposals import Chosen
from meshsec.agent.ike.states import CHILD_TRANSITIONS, ChildState, check
from meshsec.agent.ike.ts import Ts


@dataclass(slots=True)
class ChildSa:
    name: str
    config: ChildConfig | None
    protocol: int
    spi_in: int
    spi_out: int
    mode: str
    ts_local: tuple[Ts, ...]
    ts_remote: tuple[Ts, ...]
    keys_in: DirectionKeys
    keys_out: DirectionKeys
    chosen: Chosen
    _state: ChildState = ChildState.INSTALLED
    rekey_at: float | None = None  # soft lifetime (jittered)
    expire_at: float | None = None  # hard lifetime
    replaced_by: int | None = None  # spi_in of the successor
    # The successor's outbound SA is not in use yet (we answered the rekey; the initiator's
    # DELETE of this pair tells us it has its new inbound SA).
    outbound_pending: bool = False
    # While we answered the peer's rekey of this CHILD_SA and ours was in flight (RFC 7296
    # 2.8.1): (the peer's new CHILD_SA, the lower nonce of that exchange).
    peer_rekey: tuple[int, bytes] | None = None
    rekey_attempts: int = 0

    @property
    def state(self) -> ChildState:
        return self._state

    def move_to(self, new: ChildState) -> None:
        """The one way to change state: refuses edges states.py does not declare."""
        check(CHILD_TRANSITIONS, self._state, new, f"CHILD_SA {self.name} {self.spi_in:08x}")
        self._state = new
