"""Reading pyproject.toml's ranges and the lock files' pins, for the packaging tests."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
LOCKS = REPO / "requirements"
ROLES = ("agent", "controller", "operator", "all", "dev")  # build.txt: tools only, see test_pins
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)", re.MULTILINE)


def project() -> dict[str, object]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]  # type: ignore[no-any-return]


def base_requirements() -> list[Requirement]:
    return [Requirement(r) for r in project()["dependencies"]]  # type: ignore[attr-defined]


def extra_requirements(extra: str) -> list[Requirement]:
    """The extra's own requirements, with meshsec[x] self-references expanded."""
    found: list[Requirement] = []
    for text in project()["optional-dependencies"][extra]:  # type: ignore[index]
        req = Requirement(text)
        if canonicalize_name(req.name) == "meshsec":
            for inner in sorted(req.extras):
                found.extend(extra_requirements(inner))
        else:
            found.append(req)
    return found


def lock_pins(role: str) -> dict[str, str]:
    text = (LOCKS / f"{role}.txt").read_text()
    return {canonicalize_name(name): version for name, version in _PIN.findall(text)}
