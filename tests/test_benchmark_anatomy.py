"""benchmarks/real_data.py's whole-head measures: known answers on balls of known sizes."""

from __future__ import annotations

import nibabel as nib
import numpy as np

from benchmarks.real_data import anatomy_measures


def _balls(folder, radii, shift=0, texture=0.0, seed=0):
    rng = np.random.default_rng(seed)
    (folder / "imagesTr").mkdir(parents=True)
    g = np.indices((32, 32, 24)).astype(np.float64)
    for i, r in enumerate(radii):
        d = np.sqrt((g[0] - 16 - shift * i) ** 2 + (g[1] - 16) ** 2 + (g[2] - 12) ** 2)
        v = (d < r).astype(np.float32) * (0.7 + texture * rng.standard_normal(d.shape).astype(np.float32))
        nib.save(nib.Nifti1Image(v, np.eye(4)), folder / "imagesTr" / f"c{i}_0000.nii.gz")
    return folder


def test_sizes_spread_and_detail(tmp_path):
    real = _balls(tmp_path / "real", [6, 8, 10], texture=0.1)
    same = anatomy_measures(real, real)
    g = np.indices((32, 32, 24))
    vol = [(np.sqrt(((g - np.array([16, 16, 12])[:, None, None, None]) ** 2).sum(0)) < r).mean() for r in (6, 8, 10)]
    assert abs(same["head_fraction"] - np.mean(vol)) < 0.01
    assert abs(same["head_fraction_sd"] - np.std(vol)) < 0.01
    assert same["centroid_sd"] < 0.05
    # one size only: no spread; smooth balls: less in-plane detail than textured ones
    flat = anatomy_measures(_balls(tmp_path / "flat", [8, 8, 8]), real)
    assert flat["head_fraction_sd"] < 1e-6 and flat["detail"] < 0.5 * same["detail"]
    # balls moved along I: the centroid spread grows
    moved = anatomy_measures(_balls(tmp_path / "moved", [8, 8, 8], shift=2), real)
    assert moved["centroid_sd"] > 0.4
