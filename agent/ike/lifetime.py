"""When SAs rekey: the soft lifetime minus a random share of the jitter window, drawn from the
injected random source (RFC 7296 2.8 asks for randomised rekey times so that two peers, or a
whole mesh set up at once, do not all rekey in the same second)."""

from __future__ import annotations

from meshsec.agent.ike.random import Random


def jittered(soft: float, spread: float, rnd: Random) -> float:
    """`soft` reduced by a uniform fraction of `spread` (kept below `soft`)."""
    if soft <= 0:
        return 0.0
    spread = max(0.0, min(spread, soft * 0.99))
    fraction = int.from_bytes(rnd.bytes(4), "big") / 2**32
    return float(soft - spread * fraction)


def backoff(attempt: int, rnd: Random, base: float = 2.0, cap: float = 60.0) -> float:
    """Delay before retrying a rekey the peer refused with TEMPORARY_FAILURE (or that lost a
    collision race): exponential with full jitter, so both peers do not retry in step."""
    ceiling = min(cap, base * 2**attempt)
    fraction = int.from_bytes(rnd.bytes(4), "big") / 2**32
    return float(ceiling / 2 + ceiling / 2 * fraction)
