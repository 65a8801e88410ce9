import pytest


@pytest.fixture
def netns_prefix() -> str:
    return "ht-"
