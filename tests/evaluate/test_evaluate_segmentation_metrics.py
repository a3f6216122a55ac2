"""Dice / IoU / HD95 per class on label maps with known answers."""

import math

import numpy as np
import pytest

from ldmtool.evaluate.segmentation import segmentation_metrics


@pytest.fixture
def truth():
    a = np.zeros((20, 20, 10), dtype=np.uint8)
    a[5:15, 5:15, 2:8] = 1
    a[8:10, 8:10, 4:6] = 2
    return a


def test_identical_maps(truth):
    m = segmentation_metrics(truth, truth, 3)
    assert m == {"dice": [1.0, 1.0], "iou": [1.0, 1.0], "hd95": [0.0, 0.0]}


def test_one_extra_column_of_class_one(truth):
    pred = truth.copy()
    pred[5:15, 15, 2:8] = 1  # 60 extra voxels on a class of 600 − 8 (the lesion) voxels
    m = segmentation_metrics(pred, truth, 3, spacing=(1.0, 1.0, 2.0))
    assert m["dice"][0] == pytest.approx(2 * 592 / (592 + 652), abs=1e-6)
    assert m["iou"][0] == pytest.approx(592 / 652, abs=1e-6)
    assert m["hd95"][0] == pytest.approx(1.0)
    assert m["dice"][1] == m["iou"][1] == 1.0


def test_missing_class_gives_zero_overlap_and_no_distance(truth):
    m = segmentation_metrics(np.zeros_like(truth), truth, 3)
    assert m["dice"] == [0.0, 0.0] and m["iou"] == [0.0, 0.0]
    assert all(math.isnan(v) for v in m["hd95"])


def test_shape_mismatch_is_an_error(truth):
    with pytest.raises(ValueError, match="differ in shape"):
        segmentation_metrics(truth[:, :, :5], truth, 3)
