"""Which members a policy has and what role each plays, kept up to date one member at a time.

A member ("unit") is a Node in node scope and a Site in site scope. Peers are derived from
these sets on demand, so a full mesh of N members costs N set entries, not N^2 pairs.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from meshsec.controller.resources.model import MeshPolicy, Topology


class Membership:
    __slots__ = ("hubs", "pair_adjacency", "policy", "rule_from", "rule_to", "units")

    def __init__(self, policy: MeshPolicy) -> None:
        self.policy = policy
        self.units: set[str] = set()
        self.hubs: set[str] = set()
        partial = policy.spec.partial
        rules = partial.rules if partial else ()
        self.rule_from: list[set[str]] = [set() for _ in rules]
        self.rule_to: list[set[str]] = [set() for _ in rules]
        self.pair_adjacency: dict[str, set[str]] = {}
        for a, b in partial.pairs if partial else ():
            self.pair_adjacency.setdefault(a, set()).add(b)
            self.pair_adjacency.setdefault(b, set()).add(a)

    def place(self, unit: str, labels: Mapping[str, str] | None) -> bool:
        """(Re)places ``unit`` given its labels (None: it is gone). Returns whether anything moved."""
        spec = self.policy.spec
        member = labels is not None and spec.members.matches(labels)
        hub = member and spec.hubs is not None and labels is not None and spec.hubs.selector.matches(labels)
        changed = _set_flag(self.units, unit, member)
        changed |= _set_flag(self.hubs, unit, hub)
        if spec.partial is not None:
            for rule, from_set, to_set in zip(spec.partial.rules, self.rule_from, self.rule_to, strict=True):
                changed |= _set_flag(
                    from_set, unit, member and labels is not None and rule.from_.matches(labels)
                )
                changed |= _set_flag(to_set, unit, member and labels is not None and rule.to.matches(labels))
        return changed

    def is_hub(self, unit: str) -> bool:
        return unit in self.hubs

    def peers(self, unit: str) -> Iterator[str]:
        """Members that ``unit`` has a tunnel with; symmetric (v in peers(u) iff u in peers(v))."""
        if unit not in self.units:
            return
        topology = self.policy.spec.topology
        if topology is Topology.FULL_MESH or (topology is Topology.HUB_AND_SPOKE and unit in self.hubs):
            # Hubs also mesh among themselves so spokes of different hubs stay reachable.
            yield from (u for u in self.units if u != unit)
        elif topology is Topology.HUB_AND_SPOKE:
            yield from (h for h in self.hubs if h != unit)
        else:
            yield from self._partial_peers(unit)

    def _partial_peers(self, unit: str) -> Iterator[str]:
        seen: set[str] = set()
        for peer in self.pair_adjacency.get(unit, ()):
            if peer in self.units:
                seen.add(peer)
        for from_set, to_set in zip(self.rule_from, self.rule_to, strict=True):
            if unit in from_set:
                seen.update(to_set)
            if unit in to_set:
                seen.update(from_set)
        seen.discard(unit)
        yield from seen

    def has_pair(self, a: str, b: str) -> bool:
        if a == b or a not in self.units or b not in self.units:
            return False
        topology = self.policy.spec.topology
        if topology is Topology.FULL_MESH:
            return True
        if topology is Topology.HUB_AND_SPOKE:
            return a in self.hubs or b in self.hubs
        if b in self.pair_adjacency.get(a, ()):
            return True
        return any(
            (a in f and b in t) or (b in f and a in t)
            for f, t in zip(self.rule_from, self.rule_to, strict=True)
        )


def _set_flag(members: set[str], unit: str, present: bool) -> bool:
    if present:
        if unit in members:
            return False
        members.add(unit)
        return True
    if unit in members:
        members.discard(unit)
        return True
    return False
