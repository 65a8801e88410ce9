"""Validation errors that name the resource, the field path and the reason."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True, order=True)
class FieldError:
    kind: str
    name: str
    path: str
    reason: str

    def __str__(self) -> str:
        where = f"{self.kind}/{self.name}" if self.name else self.kind
        return f"{where}: {self.path}: {self.reason}" if self.path else f"{where}: {self.reason}"


class ValidationError(ValueError):
    """One or more field errors; the message lists every one so nothing is hidden behind the first."""

    def __init__(self, errors: Iterable[FieldError]) -> None:
        self.errors: tuple[FieldError, ...] = tuple(sorted(set(errors)))
        super().__init__("; ".join(str(e) for e in self.errors) or "invalid resources")
