"""Metrics every meshsec process exports."""

from __future__ import annotations

from importlib import metadata

from prometheus_client import CollectorRegistry, Gauge


def version() -> str:
    """The installed meshsec distribution's version ("unknown" when run from a bare tree)."""
    try:
        return metadata.version("meshsec")
    except metadata.PackageNotFoundError:
        return "unknown"


def register_build_info(registry: CollectorRegistry) -> None:
    """`meshsec_build_info{version}` 1: joins any series with the version that exported it."""
    Gauge("meshsec_build_info", "The meshsec version of this process", ["version"], registry=registry).labels(
        version()
    ).set(1)
