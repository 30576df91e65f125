"""Shared fixtures: the real CT files in ../shared/realdata (skipped with a message when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CT_BUNDLES_SHARED", REPO.parent / "shared"))
REALDATA = SHARED / "realdata"


@pytest.fixture(scope="session")
def realdata() -> Path:
    """Folder of the real CT test files; skips the test when ../shared/realdata is not beside the checkout."""
    if not REALDATA.is_dir():
        pytest.skip(f"real CT files not found at {REALDATA} (expected ../shared/realdata beside the checkout)")
    return REALDATA
