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


# Duplicates established within this many seconds of each other come from one race (both ends
# initiating at once: both SAs come up within a round trip or a retransmission of each other, and
# the two ends may see them in either order); an SA older than that is stale (its peer restarted
# and made a new one, often only seconds later), and both ends see the same order.
SAME_RACE_S = 2.0


def duplicates_to_delete(sas: Sequence[SaView]) -> tuple[SaView | None, list[SaView]]:
    """Two or more established IKE SAs of one tunnel: the one to keep and the others. Both ends
    must pick the same one, or each deletes the other's and the tunnel goes down (and, both
    initiating again, can do so for ever). So the rule uses only what both ends see alike: the
    newest SA wins over one established more than SAME_RACE_S before it (after a restart); within
    one race the lowest shared SPIi wins. Which end is the designated initiator is no input: after
    a controller flip both ends believe they are, and each would keep its own SA."""
    established = [s for s in sas if s.is_established]
    if len(established) < 2:
        return None, []
    newest = max(s.established_at or 0.0 for s in established)
    race = [s for s in established if newest - (s.established_at or 0.0) <= SAME_RACE_S]
    keep = min(race, key=lambda s: s.spi_i)
    return keep, [s for s in established if s is not keep]


@dataclass
class ChildSteps:
    """What to do about the CHILD_SAs of one established IKE SA."""

    delete: list[tuple[ChildView, ChildView]] = field(default_factory=list)  # (stale, its successor)
    replace: list[tuple[ChildView, ChildConfig]] = field(default_factory=list)  # (stale, new config)
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
    """A CHILD_SA negotiated with an older config of its name is replaced (the engine's
    `replace_child`: make-before-break, the old pair deleted once the new one carries traffic).
    The designated initiator asks at once, the other end only after `grace` (the peer
    negotiated before this end had the change; acting at once would race the peer's own
    replacement, and crossing replacements are the engine's 2.8.1 collision). A stale pair
    that still carries traffic next to a current one the engine did not link to it is deleted.
    `stale_since` (name -> when first seen stale) is updated; `deleting`: inbound SPIs whose
    DELETE we asked for already."""
    steps = ChildSteps()
    in_flight = sa.child_exchange_in_flight
    for cfg in sa.config.children:
        mine = [c for c in sa.children if c.name == cfg.name and c.phase is not ChildPhase.RETIRING]
        stale = [c for c in mine if c.config != cfg]
        current = [c for c in mine if c.config == cfg]
        ready = [c for c in current if c.phase is ChildPhase.ACTIVE and c.ready]
        if ready:
            steps.delete += [
                (c, ready[0]) for c in stale if c.phase is ChildPhase.ACTIVE and c.spi_in not in deleting
            ]
        if not stale:
            stale_since.pop(cfg.name, None)
            continue
        if current or cfg.name in sa.replacing:
            continue  # the new one is on its way (or held until the peer deletes the old one)
        if in_flight:  # one CREATE_CHILD_SA at a time; the next pass asks for the next one
            continue
        since = stale_since.setdefault(cfg.name, now)
        if not designated and now - since < grace:
            due = since + grace - now
            steps.wait = due if steps.wait is None else min(steps.wait, due)
            continue
        active = [c for c in stale if c.phase is ChildPhase.ACTIVE]
        if active:
            steps.replace.append((active[0], cfg))
            in_flight = True
    return steps
