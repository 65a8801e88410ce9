"""Standalone-agent tests share the interop prefix "io-" (same owner, same cleanup rules)."""

from __future__ import annotations

import pytest


@pytest.fixture
def netns_prefix() -> str:
    return "io-"
