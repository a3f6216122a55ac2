"""Shared fixtures for the io tests: small synthetic volumes and packaged test-data folders."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nibabel
import numpy as np
import pytest

# Make the package importable when it is not installed (plain `pytest` from the repo root).
_REPO_ROOT = str(Path(__file__).resolve().parents[2])
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

from ldmtool.io import Volume  # noqa: E402


@pytest.fixture
def pydicom_files(dicom_test_files) -> Path:
    """pydicom's bundled test_files folder (no download); the name the io tests use."""
    return dicom_test_files


@pytest.fixture
def nibabel_files() -> Path:
    """nibabel's bundled tests/data folder."""
    return Path(os.path.dirname(nibabel.__file__)) / "tests" / "data"


def _affine(spacing=(1.0, 1.5, 2.0), flip_x=False, origin=(-10.0, 20.0, 5.5)) -> np.ndarray:
    affine = np.diag([*spacing, 1.0])
    if flip_x:
        affine[0, 0] = -affine[0, 0]
    affine[:3, 3] = origin
    return affine


@pytest.fixture
def make_volume():
    """Factory: make_volume(shape, dtype=float32, flip_x=False, seed=0, spacing=..., affine=None)."""

    def make(
        shape=(6, 5, 4), dtype=np.float32, flip_x=False, seed=0, spacing=(1.0, 1.5, 2.0), affine=None, low=0, high=3
    ) -> Volume:
        rng = np.random.default_rng(seed)
        if np.issubdtype(np.dtype(dtype), np.integer):
            array = rng.integers(low, high, size=shape).astype(dtype)
        else:
            array = (rng.standard_normal(shape) * 100.0).astype(dtype)
        return Volume(array, _affine(spacing, flip_x) if affine is None else affine, {})

    return make
