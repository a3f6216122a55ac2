"""Label maps as conditions: into model space and back, names remapped, seeded deformations."""

from __future__ import annotations

import numpy as np
import pytest

from ldmtool.data.label_maps import deform_label_map, label_to_model_space, remap_labels
from ldmtool.data.preprocess import PreprocessConfig
from ldmtool.errors import LdmError
from ldmtool.io.volume import Volume


def _map() -> np.ndarray:
    lab = np.zeros((24, 24, 12), np.uint8)
    lab[4:20, 4:20, 2:10] = 1
    lab[8:12, 10:14, 4:7] = 2
    return lab


def test_model_space_geometry():
    lab = _map()
    affine = np.diag([-1.0, 1.0, 2.0, 1.0])  # LAS: reoriented to RAS
    out, model_affine = label_to_model_space(Volume(lab, affine, {}), PreprocessConfig(orientation="RAS"), (24, 24, 16))
    assert out.shape == (24, 24, 16) and out.dtype == np.uint8
    ijk = np.array([9, 11, 5, 1.0])  # a lesion voxel of the input lands on a lesion voxel of the output
    target = np.linalg.inv(model_affine) @ affine @ ijk
    assert out[tuple(np.rint(target[:3]).astype(int))] == 2


def test_deformations_are_seeded_and_keep_labels():
    lab = _map()
    a = [deform_label_map(lab, seed=s) for s in (5, 6)]
    b = [deform_label_map(lab, seed=s) for s in (5, 6)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], a[1]) and not np.array_equal(a[0], lab)
    for d in a:
        assert d.shape == lab.shape and d.dtype == lab.dtype and set(np.unique(d)) <= {0, 1, 2}
        assert 0.5 < (d > 0).sum() / (lab > 0).sum() < 1.5


def test_remap_by_name():
    lab = _map()
    out = remap_labels(lab, {"background": 0, "lesion": 1, "head": 2}, {"background": 0, "head": 1, "lesion": 2}, "x")
    assert (out[lab == 1] == 2).all() and (out[lab == 2] == 1).all()
    with pytest.raises(LdmError, match="'tumour' is not one of the model's labels"):
        remap_labels(lab, {"background": 0, "tumour": 1}, {"background": 0, "lesion": 1}, "x")
