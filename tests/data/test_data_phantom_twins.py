"""Lesion-free demo phantoms: the twin of a lesion phantom (same head and noise, no lesions)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from ldmtool.data.phantoms import make_phantom, write_demo_dataset
from ldmtool.errors import LdmError


def test_twin_differs_only_at_the_lesions():
    for i in range(6):
        img, lab = make_phantom(np.random.default_rng([0, i]), (32, 32, 16))
        img0, lab0 = make_phantom(np.random.default_rng([0, i]), (32, 32, 16), lesions=False)
        assert not (lab0 == 2).any() and np.array_equal(lab0, np.where(lab == 2, 1, lab))
        near = ndi.binary_dilation(lab == 2, iterations=3)
        assert np.allclose(img[~near], img0[~near], atol=1e-5)
        if (lab == 2).any():
            return
    pytest.fail("no phantom with a lesion among the first six")


def test_lesion_cases(tmp_path):
    out = write_demo_dataset(tmp_path / "d", n_cases=5, shape=(32, 32, 16), lesion_cases=2)
    labels = [np.asarray(nib.load(p).dataobj) for p in sorted((out / "labelsTr").glob("*.nii.gz"))]
    assert not any((lab == 2).any() for lab in labels[2:])
    assert "first 2 only" in json.loads((out / "dataset.json").read_text())["description"]
    with pytest.raises(LdmError, match="lesion-cases must be in 0..5"):
        write_demo_dataset(tmp_path / "e", n_cases=5, shape=(32, 32, 16), lesion_cases=6)
