"""Metrics every meshsec process exports."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge

from meshsec.common.version import VERSION


def register_build_info(registry: CollectorRegistry) -> None:
    """`meshsec_build_info{version}` 1: joins any series with the version that exported it."""
    Gauge("meshsec_build_info", "The meshsec version of this process", ["version"], registry=registry).labels(
        VERSION
    ).set(1)
