"""Interop tests use the namespace prefix "io-"; ``root`` is the strongSwan 6.1 chroot."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness.strongswan import pq_root


@pytest.fixture
def netns_prefix() -> str:
    return "io-"


@pytest.fixture
def root() -> Path:
    """The strongSwan 6.1 (ML-KEM) chroot that scripts/install.sh builds; missing is a failure,
    not a skip, since the install scripts provide it on every machine."""
    found = pq_root()
    if found is None:
        pytest.fail("the strongSwan 6.1 chroot is not built: run scripts/install.sh")
    return found
