"""Interop tests use the namespace prefix "io-"."""

from __future__ import annotations

import pytest


@pytest.fixture
def netns_prefix() -> str:
    return "io-"
