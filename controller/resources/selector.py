"""Kubernetes-style label selectors (matchLabels plus matchExpressions)."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass


class Operator(enum.Enum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    operator: Operator
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator is Operator.EXISTS:
            return self.key in labels
        if self.operator is Operator.DOES_NOT_EXIST:
            return self.key not in labels
        present = self.key in labels and labels[self.key] in self.values
        return present if self.operator is Operator.IN else not present


@dataclass(frozen=True, slots=True)
class LabelSelector:
    """An empty selector selects everything, as in Kubernetes."""

    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.match_labels) and all(
            r.matches(labels) for r in self.match_expressions
        )

    def __str__(self) -> str:
        parts = [f"{k}={v}" for k, v in self.match_labels]
        for r in self.match_expressions:
            values = ",".join(r.values)
            parts.append(
                f"{r.key} {r.operator.value} ({values})" if r.values else f"{r.key} {r.operator.value}"
            )
        return ", ".join(parts) or "<everything>"
