"""Which optional extra each role needs, and a clear refusal when it is not installed.

`pip install meshsec` gives the base every role shares (meshctl needs nothing more); a role adds
its extra: `meshsec[agent]`, `meshsec[controller]` (only for the etcd store), `meshsec[operator]`.
A command started without its extra stops with the pip command that fixes it instead of an
ImportError traceback from deep inside. tests/release checks this table against pyproject.toml.
"""

from __future__ import annotations

import importlib.util
import sys

# extra -> the top-level modules of the distributions it adds (each named like its distribution).
EXTRAS: dict[str, tuple[str, ...]] = {
    "agent": ("pyroute2",),
    "controller": ("etcd3aio",),
    "operator": ("kubernetes", "kopf"),
}

EXIT_MISSING_EXTRA = 2


def missing_modules(extra: str) -> list[str]:
    return [name for name in EXTRAS[extra] if importlib.util.find_spec(name) is None]


def refusal(extra: str, program: str, missing: list[str]) -> str:
    return (
        f"{program}: {', '.join(missing)} not installed; this needs meshsec's '{extra}' extra: "
        f"pip install 'meshsec[{extra}]'"
    )


def require(extra: str, program: str) -> None:
    """Stop `program` with a clear message (exit status 2) unless `extra`'s modules are importable."""
    missing = missing_modules(extra)
    if missing:
        sys.stderr.write(refusal(extra, program, missing) + "\n")
        raise SystemExit(EXIT_MISSING_EXTRA)


__all__ = ["EXIT_MISSING_EXTRA", "EXTRAS", "missing_modules", "refusal", "require"]
