"""meshsec's version, read once from the installed distribution's metadata.

pyproject.toml is the one place the version is written; every command (`--version`), the agent's
enrollment facts and the controller's GetVersion answer report this value, so they cannot disagree
within one installation.
"""

from __future__ import annotations

from importlib import metadata

DISTRIBUTION = "meshsec"


def _installed_version() -> str:
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        # Imported from a source tree that was never installed (not even editable): say so
        # rather than invent a number.
        return "0+unknown"


VERSION = _installed_version()


def describe(program: str) -> str:
    """The `--version` line of a command."""
    return f"{program} {VERSION}"


__all__ = ["DISTRIBUTION", "VERSION", "describe"]
