"""Dice / IoU / HD95 per class (ldmtool.metrics) on label maps with known answers, and the one
rule for a class absent from a map."""

import math

import numpy as np
import pytest
import torch

from ldmtool.metrics import dice_per_class, segmentation_metrics


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


def test_known_answer_on_a_small_map():
    truth = np.array([[0, 1, 1, 1], [0, 0, 2, 2]])
    pred = np.array([[0, 1, 1, 0], [0, 2, 2, 0]])
    # class 1: |P∩T| = 2, |P| = 2, |T| = 3; class 2: |P∩T| = 1, |P| = 2, |T| = 2
    assert dice_per_class(pred, truth, 3) == pytest.approx([2 * 2 / 5, 2 * 1 / 4])
    assert segmentation_metrics(pred, truth, 3, metrics=("iou",))["iou"] == pytest.approx([2 / 3, 1 / 3])


def test_class_absent_from_both_maps_scores_one(truth):
    no_lesion = np.where(truth == 2, 1, truth)
    m = segmentation_metrics(no_lesion, no_lesion, 3)
    assert m["dice"][1] == m["iou"][1] == 1.0
    assert math.isnan(m["hd95"][1])
    assert dice_per_class(np.zeros((4, 4)), np.zeros((4, 4)), 3) == [1.0, 1.0]


def test_class_absent_from_the_prediction_only_scores_zero(truth):
    m = segmentation_metrics(np.zeros_like(truth), truth, 3)
    assert m["dice"] == [0.0, 0.0] and m["iou"] == [0.0, 0.0]
    assert all(math.isnan(v) for v in m["hd95"])


def test_class_absent_from_the_truth_only_scores_zero(truth):
    no_lesion = np.where(truth == 2, 1, truth)
    m = segmentation_metrics(truth, no_lesion, 3)
    assert m["dice"][1] == m["iou"][1] == 0.0
    assert math.isnan(m["hd95"][1])


def test_tensors_and_arrays_agree(truth):
    pred = truth.copy()
    pred[0:3, 0:3, 0:3] = 2
    assert dice_per_class(torch.from_numpy(pred), torch.from_numpy(truth), 3) == dice_per_class(pred, truth, 3)


def test_shape_mismatch_and_unknown_metric_are_errors(truth):
    with pytest.raises(ValueError, match="differ in shape"):
        segmentation_metrics(truth[:, :, :5], truth, 3)
    with pytest.raises(ValueError, match="unknown metric"):
        segmentation_metrics(truth, truth, 3, metrics=("dcie",))


def test_class_index_equals_argmax_with_ties():
    """Class maps from logits: the same indices as argmax, ties to the lowest class."""
    from ldmtool.runtime import class_index

    g = torch.Generator().manual_seed(0)
    logits = torch.randint(0, 3, (2, 4, 9, 7), generator=g).float()  # many ties
    for dim in (0, 1, 3):
        assert torch.equal(class_index(logits, dim), logits.argmax(dim))
    logits[0, :, 0, 0] = torch.tensor([1.0, 5.0, 5.0, 0.0])
    assert int(class_index(logits, 1)[0, 0, 0]) == 1
