"""Shared fixtures. Tests use the real reference data in ../shared/data when it exists."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("KILOLAYER_DATA", REPO.parent / "shared" / "data"))

torch.set_flush_denormal(True)  # deep narrow nets produce denormals; 6x slower on CPU without this


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The reference data folder; tests that need it are skipped where it does not exist."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"reference data not found at {SHARED_DATA} (set KILOLAYER_DATA)")
    return SHARED_DATA
