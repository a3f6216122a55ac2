"""benchmarks/conditional.py --quick: the whole chain (train, mask-to-image, segment, inpaint) runs and reports."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_conditional_benchmark_quick(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "conditional.py"), "--quick", "--work", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "## Mask-to-image: segmenter Dice" in proc.stdout and "## Lesion insertion" in proc.stdout
    assert "| repaint | 2/2 |" in proc.stdout and "| guidance | 2/2 |" in proc.stdout  # outside bit-exact


def test_ixi_tissue_maps_are_majority_classes_on_the_4mm_grid(tmp_path):
    """`conditional.py --ixi` data: DLMUSE ids merged to tissue classes, 2×2×2 blocks → one voxel
    whose label is the block's most frequent class and whose intensity is the block's mean, in RAS."""
    import json

    import nibabel as nib
    import numpy as np

    from benchmarks.conditional import ixi_tissues

    src = tmp_path / "ixi"
    for sub in ("imagesTr", "labelsTr"):
        (src / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    ras = np.zeros((4, 6, 8), np.int16)  # labels in RAS voxel order; blocks of 2×2×2
    ras[0:2, 0:2, 0:2] = 100  # grey matter (cortex)…
    ras[0, 0, 0:2] = 1  # …with 2 of 8 voxels outer CSF: still grey matter
    ras[2:4, 0:2, 0:2] = 81  # white matter, 4 of 8 voxels…
    ras[2:4, 0, 0:2] = 51  # …and 4 of 8 ventricle: a tie goes to the first class named (csf)
    ras[0:2, 2:4, 0:2] = 59  # thalamus: deep grey, 5 of 8 voxels
    ras[0:2, 2:4, 0] = [[59, 0], [0, 0]]
    image = rng.random(ras.shape).astype(np.float32)
    # stored PSR like the real files: array axes (P, S, R) = RAS axes (1 reversed, 2, 0)
    psr = np.transpose(ras, (1, 2, 0))[::-1]
    img_psr = np.transpose(image, (1, 2, 0))[::-1]
    affine = np.array([[0, 0, 2, -3], [-2, 0, 0, 10], [0, 2, 0, -7], [0, 0, 0, 1]], float)
    nib.save(nib.Nifti1Image(img_psr.copy(), affine), src / "imagesTr" / "IXI001_0000.nii.gz")
    nib.save(nib.Nifti1Image(psr.copy(), affine), src / "labelsTr" / "IXI001.nii.gz")

    out = ixi_tissues(src, tmp_path / "out", ["IXI001"])
    lab = nib.load(out / "labelsTr" / "IXI001.nii.gz")
    img = nib.load(out / "imagesTr" / "IXI001_0000.nii.gz")
    names = json.loads((out / "dataset.json").read_text())["labels"]
    assert names == {"background": 0, "csf": 1, "grey_matter": 2, "white_matter": 3, "deep_grey": 4}
    got = np.asarray(lab.dataobj)
    assert got.shape == (2, 3, 4) and nib.aff2axcodes(lab.affine) == ("R", "A", "S")
    assert np.allclose(np.abs(np.diag(lab.affine)[:3]), 4.0)
    assert got[0, 0, 0] == names["grey_matter"] and got[1, 0, 0] == names["csf"]
    assert got[0, 1, 0] == names["deep_grey"] and got[1, 1, 0] == 0 and got[0, 0, 1] == 0
    assert np.isclose(np.asarray(img.dataobj)[1, 2, 3], image[2:4, 4:6, 6:8].mean(), atol=1e-6)
    # the output voxel's centre is the mean of its block's input voxel centres
    block = nib.as_closest_canonical(nib.load(src / "imagesTr" / "IXI001_0000.nii.gz")).affine
    centres = [block @ np.array([i, j, k, 1.0]) for i in (2, 3) for j in (4, 5) for k in (6, 7)]
    assert np.allclose(img.affine @ np.array([1, 2, 3, 1.0]), np.mean(centres, axis=0))
