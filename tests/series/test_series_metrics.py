"""Series scores: AUROC, CRPS, the LOCF/linear baselines, stay features and the mortality regression."""

from __future__ import annotations

import numpy as np

from ldmtool.series.metrics import auroc, crps, cv_auroc, linear, locf, mae, stay_features


def test_auroc():
    assert auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75
    assert auroc(np.array([1.0, 1.0]), np.array([0, 1])) == 0.5  # ties count half
    assert np.isnan(auroc(np.array([0.1, 0.2]), np.array([1, 1])))


def test_crps_of_a_point_estimate_is_the_normalised_absolute_error():
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(3, 4, 2)) + 5
    pred = truth + rng.normal(size=truth.shape)
    mask = rng.random(truth.shape) < 0.5
    expected = np.abs(pred - truth)[mask].sum() / np.abs(truth[mask]).sum()
    assert np.isclose(crps(pred[:, None], truth, mask), expected)
    assert crps(np.repeat(truth[:, None], 5, 1), truth, mask) == 0.0
    assert mae(pred, truth, mask) > 0


def test_locf_and_linear():
    v = np.array([[[np.nan], [1.0], [np.nan], [3.0], [np.nan]], [[np.nan]] * 5])
    fill = np.array([9.0])
    assert locf(v, fill)[:, :, 0].tolist() == [[1, 1, 1, 3, 3], [9] * 5]
    assert linear(v, fill)[:, :, 0].tolist() == [[1, 1, 2, 3, 3], [9] * 5]


def test_mortality_regression_finds_the_signal():
    rng = np.random.default_rng(0)
    n = 200
    y = (rng.random(n) < 0.3).astype(float)
    values = rng.normal(size=(n, 6, 2))
    values[:, :, 0] += 1.5 * y[:, None]
    values[rng.random(values.shape) < 0.3] = np.nan
    x = stay_features(values, rng.normal(size=(n, 1)))
    assert x.shape == (n, 5 * 2 + 1)
    assert cv_auroc(x, y) > 0.8
