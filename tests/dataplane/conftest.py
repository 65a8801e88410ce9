from __future__ import annotations

import pytest


@pytest.fixture
def netns_prefix() -> str:
    return "ud-"
