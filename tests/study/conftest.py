"""Fixtures shared by the study tests."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="module")
def study_cache(tmp_path_factory):
    """One tokenizer/shard cache per test module; the cells' processes inherit it through the environment."""
    previous = os.environ.get("KILOLAYER_CACHE")
    os.environ["KILOLAYER_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if previous is None:
        del os.environ["KILOLAYER_CACHE"]
    else:
        os.environ["KILOLAYER_CACHE"] = previous
