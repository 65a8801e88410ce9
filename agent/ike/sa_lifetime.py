"""The IKE SA's own clocks (RFC 7296 2.8, 2.4): the jittered rekey time and its retries, the
hard expiry (rekey never succeeded, or a replaced SA the peer never deleted), make-before-break
reauthentication, and dead peer detection. The CHILD_SAs' clocks live on each ChildSa."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from meshsec.agent.ike.exchanges.ike_rekey import IkeRekey
from meshsec.agent.ike.exchanges.informational import Liveness
from meshsec.agent.ike.lifetime import backoff, jittered
from meshsec.agent.ike.states import State

if TYPE_CHECKING:
    from meshsec.agent.ike.sa import IkeSa

log = logging.getLogger(__name__)

REKEYED_GRACE = 30.0  # seconds a replaced IKE SA waits for the peer's DELETE before deleting itself


class IkeLifetime:
    def __init__(self, sa: IkeSa) -> None:
        self._sa = sa
        self.rekey_at: float | None = None
        self.expire_at: float | None = None
        self.rekey_attempts = 0
        self.reauth_at: float | None = None

    def start(self, now: float) -> None:
        """Arms rekey (jittered), hard expiry and reauthentication; called when established."""
        sa, cfg = self._sa, self._sa.config
        sa.last_inbound = max(sa.last_inbound, now)
        if cfg.reauth_time > 0 and sa.originator:
            # Only the end that set the connection up reauthenticates, else both peers would
            # build a new SA each and keep two.
            self.reauth_at = now + jittered(cfg.reauth_time, cfg.reauth_time / 10, sa.rnd)
        if cfg.rekey_time <= 0:
            return
        spread = cfg.rand_time if cfg.rand_time is not None else cfg.rekey_time / 10
        self.rekey_at = now + jittered(cfg.rekey_time, spread, sa.rnd)
        over = cfg.over_time if cfg.over_time is not None else max(1, cfg.rekey_time // 10)
        self.expire_at = now + cfg.rekey_time + over

    def retry_rekey(self, now: float) -> float:
        """Our rekey was refused: the next try after a jittered back-off; returns the delay."""
        self.rekey_attempts += 1
        delay = backoff(self.rekey_attempts, self._sa.rnd)
        self.rekey_at = now + delay
        return delay

    def replaced(self, now: float) -> None:
        """A successor took over: no rekey or reauthentication of this SA any more, and a peer
        that never deletes it must not keep it alive for ever."""
        self.rekey_at = None
        self.reauth_at = None
        self.expire_at = now + REKEYED_GRACE

    def deadlines(self) -> list[float]:
        return [
            at for at in (self.rekey_at, self.expire_at, self.dpd_due(), self.reauth_at) if at is not None
        ]

    def dpd_due(self) -> float | None:
        sa = self._sa
        if sa.config.dpd_delay <= 0 or sa.state is not State.ESTABLISHED or sa.successor is not None:
            return None
        if sa.tasks.busy:
            return None  # a request is under way: its retransmissions test liveness already
        return sa.last_inbound + sa.config.dpd_delay

    def on_timer(self, now: float) -> None:
        """Called while the SA is ESTABLISHED."""
        sa = self._sa
        if self.expire_at is not None and now >= self.expire_at:
            self.expire_at = None
            log.info("IKE SA %s: lifetime over (rekey never succeeded, or replaced); deleting",
                     sa.local_spi.hex())  # fmt: skip
            sa.delete(now)
            return
        if self.rekey_at is not None and now >= self.rekey_at and sa.successor is None:
            self.rekey_at = None
            sa.start_task(IkeRekey(), now)
        if self.reauth_at is not None and now >= self.reauth_at and sa.successor is None:
            self.reauth_at = None
            sa.reauthenticate(now)
        due = self.dpd_due()
        if due is not None and now >= due:
            sa.stats["dpd_probes"] += 1
            sa.start_task(Liveness(dpd=True), now)
