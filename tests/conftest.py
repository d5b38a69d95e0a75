"""Shared fixtures. Tests that need the real data read ../shared/data and skip cleanly when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PNEUMO_SHARED_DATA", REPO.parent / "shared" / "data"))


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not present at {path} (set PNEUMO_SHARED_DATA to run this test)")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, or skip."""
    return _need(SHARED_DATA)


@pytest.fixture(scope="session")
def kermany_train() -> Path:
    """The Kermany training split (5,216 images), or skip."""
    return _need(SHARED_DATA / "chest_xray" / "train")


@pytest.fixture(scope="session")
def fullres_dir() -> Path:
    """The 16 original-size images, or skip."""
    return _need(SHARED_DATA / "chest_xray_fullres" / "val")


@pytest.fixture(scope="session")
def dicom_dir() -> Path:
    """Real DICOM files, or skip."""
    return _need(SHARED_DATA / "dicom")
