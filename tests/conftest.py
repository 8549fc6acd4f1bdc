"""Shared fixtures: a tiny prepared dataset written once per test session (tests/tiny_data.py)."""
from __future__ import annotations

import pytest

from tests.tiny_data import make_tiny_shards


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory):
    """A read-only tiny prepared directory: 4 classes, 40 train images in 3 uneven shards, 12 val.

    Tests must not modify it; a test that needs to damage data makes its own copy.
    """
    return make_tiny_shards(tmp_path_factory.mktemp("tiny_shards"))
