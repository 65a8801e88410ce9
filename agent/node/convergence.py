"""The reconciler's rules for one tunnel, pure: whether an IKE SA still fits the tunnel's plan,
which of two duplicate IKE SAs stays, and which CHILD_SAs to delete or replace after a change of
their configuration. Inputs are the runtime's frozen views (ike_port.py)."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, MutableMapping, Sequence
from dataclasses import dataclass, field

from meshsec.agent.ike import ChildConfig, IkeConfig
from meshsec.agent.node.ike_port import ChildPhase, ChildView, SaView
from meshsec.agent.node.translate import TunnelPlan


def without_ic(actual: IkeConfig, desired: IkeConfig) -> IkeConfig:
    """`desired` as we would have initiated it: INITIAL_CONTACT is per attempt, not config, and
    a renewed node certificate is for the next IKE SAs (an established SA is not torn down for
    it, only for a change of the CAs it trusts)."""
    changes: dict[str, object] = {}
    if actual.send_initial_contact != desired.send_initial_contact:
        changes["send_initial_contact"] = actual.send_initial_contact
    ours, wanted = actual.credentials, desired.credentials
    if ours is not None and wanted is not None and ours is not wanted and ours.trusted == wanted.trusted:
        changes["credentials"] = ours
    return dataclasses.replace(desired, **changes) if changes else desired  # type: ignore[arg-type]


def matches(sa: SaView, p: TunnelPlan | None) -> bool:
    return p is not None and sa.config == without_ic(sa.config, p.ike)


def child_only_change(sa: SaView, p: TunnelPlan) -> bool:
    """The IKE SA can stay: established, and only CHILD_SA settings of the same named children
    differ (anything else, e.g. the peer, IDs, auth or IKE proposals, needs a new IKE SA)."""
    actual = sa.config
    desired = without_ic(actual, p.ike)
    if actual == desired or not sa.is_established:
        return False
    names = sorted(c.name for c in actual.children)
    return names == sorted(c.name for c in desired.children) and dataclasses.replace(
        actual, children=()
    ) == dataclasses.replace(desired, children=())


def duplicates_to_delete(
    sas: Sequence[SaView], designated_initiator: bool
) -> tuple[SaView | None, list[SaView]]:
    """Two or more established IKE SAs of one tunnel: the one to keep and the others. Both ends
    sort the same SAs the same way: "created by the designated initiator" is
    `initiator == designated_initiator` seen from either end (this settles simultaneous
    initiation); between SAs from the same end the newest wins (after a restart); the shared
    SPIi breaks exact ties."""
    established = [s for s in sas if s.is_established]
    if len(established) < 2:
        return None, []
    keep = min(
        established,
        key=lambda s: (s.initiator != designated_initiator, -(s.established_at or 0.0), s.spi_i),
    )
    return keep, [s for s in established if s is not keep]


@dataclass
class ChildSteps:
    """What to do about the CHILD_SAs of one established IKE SA."""

    delete: list[tuple[ChildView, ChildView]] = field(default_factory=list)  # (doomed, kept)
    replace: list[ChildConfig] = field(default_factory=list)
    wait: float | None = None  # seconds until a held-back replacement is due


def child_steps(
    sa: SaView,
    *,
    designated: bool,
    stale_since: MutableMapping[str, float],
    deleting: Collection[int],
    now: float,
    grace: float,
) -> ChildSteps:
    """CHILD_SAs negotiated with an older config of their name are replaced make-before-break:
    a new one is asked for, and the old one deleted once the new one carries traffic. The
    designated initiator does that at once, the other end only after `grace` (the peer
    negotiated before this end had the change; acting at once would race the peer's own
    replacement). Should both ends replace it at once, both keep the pair with the lowest SPI.
    `stale_since` (name -> when first seen stale) is updated; `deleting`: inbound SPIs whose
    DELETE we asked for already."""
    steps = ChildSteps()
    in_flight = sa.child_exchange_in_flight
    for cfg in sa.config.children:
        mine = [c for c in sa.children if c.name == cfg.name]
        stale = [c for c in mine if c.config != cfg]
        # Not a rekey's loser or predecessor, installed and carrying outbound traffic.
        ready = [c for c in mine if c.config == cfg and c.phase is ChildPhase.ACTIVE and c.ready]
        if ready:  # the new pair carries the traffic: the old one can go
            keep = min(ready, key=lambda c: (min(c.spi_in, c.spi_out), max(c.spi_in, c.spi_out)))
            doomed = [*stale, *(c for c in ready if c is not keep)]
            steps.delete += [
                (c, keep) for c in doomed if c.phase is ChildPhase.ACTIVE and c.spi_in not in deleting
            ]
        if not stale:
            stale_since.pop(cfg.name, None)
            continue
        if ready or len(stale) < len(mine) or cfg.name in sa.replacing:
            continue  # the new one is on its way (or held until the peer deletes the old one)
        if in_flight:  # one CREATE_CHILD_SA at a time; the next pass asks for the next one
            continue
        since = stale_since.setdefault(cfg.name, now)
        if not designated and now - since < grace:
            due = since + grace - now
            steps.wait = due if steps.wait is None else min(steps.wait, due)
            continue
        steps.replace.append(cfg)
        in_flight = True
    return steps
