"""Validation errors that name the resource, the field path and the reason."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

# What one problem report may repeat of its input: a refused 3 MB label must not come back (or
# be stored in an event) whole. Longer fields are cut, saying how much was left out.
MAX_KIND_SHOWN = 64
MAX_NAME_SHOWN = 253
MAX_PATH_SHOWN = 256
MAX_REASON_SHOWN = 512


def clip(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


@dataclass(frozen=True, slots=True, order=True)
class FieldError:
    kind: str
    name: str
    path: str
    reason: str

    def __post_init__(self) -> None:
        for attribute, limit in (
            ("kind", MAX_KIND_SHOWN),
            ("name", MAX_NAME_SHOWN),
            ("path", MAX_PATH_SHOWN),
            ("reason", MAX_REASON_SHOWN),
        ):
            value = getattr(self, attribute)
            if len(value) > limit:
                object.__setattr__(self, attribute, clip(value, limit))

    def __str__(self) -> str:
        where = f"{self.kind}/{self.name}" if self.name else self.kind
        return f"{where}: {self.path}: {self.reason}" if self.path else f"{where}: {self.reason}"


class ValidationError(ValueError):
    """One or more field errors; the message lists every one so nothing is hidden behind the first."""

    def __init__(self, errors: Iterable[FieldError]) -> None:
        self.errors: tuple[FieldError, ...] = tuple(sorted(set(errors)))
        super().__init__("; ".join(str(e) for e in self.errors) or "invalid resources")
