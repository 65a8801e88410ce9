"""The mesh index as the running controller needs it: bulk load, validation without side effects,
and counting tunnels without computing them.

`MeshIndex.apply` computes every affected tunnel before and after a change, which is what the
watch loop needs (deltas) but not what a bulk load at start-up (no subscriber has a "before") or a
validation before a store write (the write comes back through the watch) need. Both here reuse the
index's own single-change mutation so there is one definition of what a change does.
"""

from __future__ import annotations

from collections.abc import Iterable

from meshsec.controller.mesh import Change, MeshIndex, Upsert
from meshsec.controller.resources import FieldError, ValidationError
from meshsec.controller.resources.model import Resource, Scope, Topology
from meshsec.controller.resources.validate import Touched, validate_touched


class ControllerIndex(MeshIndex):
    def load(self, resources: Iterable[Resource]) -> None:
        """Bulk load into an empty index: indices only, no tunnels computed, no validation."""
        self.apply_quietly(Upsert(r) for r in resources)

    def apply_quietly(self, changes: Iterable[Change]) -> None:
        """Apply a batch (already validated) without computing any tunnel or delta."""
        for change in changes:
            self._apply_one(change, None, Touched())

    def check(self, changes: Iterable[Change]) -> list[FieldError]:
        """The validation errors the batch would cause; the index is left exactly as it was."""
        batch = list(changes)
        seen: set[object] = set()
        errors: list[FieldError] = []
        for change in batch:
            if change.key in seen:
                errors.append(
                    FieldError(change.key[0].value, change.key[1], "", "appears more than once in the batch")
                )
            seen.add(change.key)
        if errors:
            return errors
        touched = Touched()
        undo: list[Change] = []
        try:
            for change in batch:
                undo.append(self._inverse(change))
                self._apply_one(change, None, touched)
            return validate_touched(self, touched)
        finally:
            for change in reversed(undo):
                self._apply_one(change, None, Touched())

    def check_or_raise(self, changes: Iterable[Change]) -> None:
        errors = self.check(changes)
        if errors:
            raise ValidationError(errors)

    def tunnel_count(self) -> int:
        """Desired tunnels mesh-wide, from the membership sets alone: O(members), not O(tunnels)."""
        total = 0
        for name in (p.metadata.name for p in self.all_policies()):
            m = self._members[name]
            node_scope = m.policy.spec.scope is Scope.NODE

            def weight(unit: str, node_scope: bool = node_scope) -> int:
                return 1 if node_scope else len(self.gateways_of(unit))

            topology = m.policy.spec.topology
            if topology is Topology.FULL_MESH:
                weights = [weight(u) for u in m.units]
                total += (sum(weights) ** 2 - sum(w * w for w in weights)) // 2
            elif topology is Topology.HUB_AND_SPOKE:
                hubs = [weight(u) for u in m.units if u in m.hubs]
                spokes = sum(weight(u) for u in m.units if u not in m.hubs)
                total += (sum(hubs) ** 2 - sum(w * w for w in hubs)) // 2 + sum(hubs) * spokes
            else:
                total += sum(weight(u) * weight(p) for u in m.units for p in m.peers(u)) // 2
        for eg in self.all_external_gateways():
            total += sum(len(self.gateways_of(s)) for s in eg.spec.sites)
        return total
