"""meshctl's failures, each carrying the exit code a script can rely on.

0 ok, 1 the request was refused (validation, not found, conflict), 2 usage, 3 controller unreachable,
4 the controller failed in an unexpected way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

EXIT_OK = 0
EXIT_USER = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_SERVER = 4


class MeshctlError(Exception):
    exit_code = EXIT_USER

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageError(MeshctlError):
    exit_code = EXIT_USAGE


class UserError(MeshctlError):
    """The controller (or meshctl itself) refused the request; fixing the input fixes it."""

    exit_code = EXIT_USER


class UnreachableError(MeshctlError):
    exit_code = EXIT_UNREACHABLE


class ServerError(MeshctlError):
    exit_code = EXIT_SERVER


@dataclass(frozen=True)
class Problem:
    """One validation problem, located like ``lab.yaml: document 3 (Node/dc1-gw1): spec.site``."""

    where: str
    path: str
    message: str

    def __str__(self) -> str:
        location = f"{self.where}: {self.path}" if self.path else self.where
        return f"{location}: {self.message}"


class ValidationFailed(UserError):
    def __init__(self, problems: Sequence[Problem], *, hint: str = "") -> None:
        self.problems = list(problems)
        count = len(self.problems)
        head = f"{count} validation error{'s' if count != 1 else ''}; nothing was applied"
        super().__init__(head + "".join(f"\n  {p}" for p in self.problems), hint=hint)
