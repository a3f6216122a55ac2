"""Slice-position features: shape, range, distinctness, and the n_features=0 case."""

import math

import pytest
import torch

from ldmtool.models.position import position_features, slice_positions


@pytest.mark.parametrize("n_features", [2, 4, 8])
def test_shape_and_range(n_features):
    pos = torch.linspace(0, 1, 17)
    feats = position_features(pos, n_features)
    assert feats.shape == (17, n_features)
    assert feats.dtype == pos.dtype
    assert torch.all(feats >= -1.0) and torch.all(feats <= 1.0)
    assert torch.isfinite(feats).all()


def test_values_are_sin_cos_pairs():
    pos = torch.tensor([0.0, 0.25, 0.6])
    feats = position_features(pos, 6)
    for k in range(3):
        freq = math.pi * 2**k
        torch.testing.assert_close(feats[:, k], torch.sin(pos * freq))
        torch.testing.assert_close(feats[:, 3 + k], torch.cos(pos * freq))


@pytest.mark.parametrize("n_features", [2, 4, 8])
def test_distinct_positions_give_distinct_features(n_features):
    depth = 32
    feats = position_features(slice_positions(depth), n_features)
    dist = torch.cdist(feats, feats)
    off_diag = dist[~torch.eye(depth, dtype=torch.bool)]
    assert off_diag.min() > 1e-3  # no two slices of the volume share a feature vector
    # the first and the last slice differ too (position 0 and 1 are not aliased)
    assert not torch.allclose(feats[0], feats[-1])


def test_zero_features():
    pos = torch.rand(5)
    feats = position_features(pos, 0)
    assert feats.shape == (5, 0)


def test_slice_positions():
    torch.testing.assert_close(slice_positions(5), torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]))
    assert slice_positions(1).tolist() == [0.0]
    assert slice_positions(7).shape == (7,)
