"""Descriptors of synthetic stays: drawn from a copula, never a copy of a training stay's row."""

from __future__ import annotations

import json

import numpy as np

from ldmtool.series.descriptors import descriptor_model, draw_descriptors


def _training(n=400, seed=0):
    rng = np.random.default_rng(seed)
    age = rng.normal(65, 12, n)
    height = 170 + 0.0 * age + rng.normal(0, 8, n) - 0.3 * (age - 65)  # taller when younger
    sex = (rng.random(n) < 0.55).astype(float)
    icu = rng.integers(1, 5, n).astype(float)
    height[rng.random(n) < 0.3] = np.nan  # often unknown
    outcome = (rng.random(n) < 0.15 + 0.005 * (age - 65)).astype(float)
    return np.stack([age, sex, height, icu], 1), outcome


def test_copula_keeps_marginals_correlation_and_levels_without_rows():
    static, outcome = _training()
    model = descriptor_model(static, outcome)
    json.dumps(model)  # stored in the checkpoint config
    text = json.dumps(model)
    assert f"{np.nanmax(static[:, 0])!r}"[:8] not in text  # the oldest patient's exact age is not kept
    draws = draw_descriptors(model, np.full(4000, np.nan), np.random.default_rng(1))
    assert abs(np.nanmean(draws[:, 0]) - np.nanmean(static[:, 0])) < 1.5
    assert abs(np.isnan(draws[:, 2]).mean() - 0.3) < 0.05
    assert set(np.unique(draws[:, 1])) <= {0.0, 1.0} and set(np.unique(draws[:, 3])) <= {1.0, 2.0, 3.0, 4.0}
    known = ~np.isnan(draws[:, 2])
    assert np.corrcoef(draws[known, 0], draws[known, 2])[0, 1] < -0.2  # the age–height relation survives
    rows = {tuple(np.round(r, 6)) for r in static}
    assert not any(tuple(np.round(r, 6)) in rows for r in draws if not np.isnan(r).any())


def test_outcome_groups_and_seeded():
    static, outcome = _training()
    model = descriptor_model(static, outcome)
    assert set(model) == {"all", "0", "1"}
    a = draw_descriptors(model, np.ones(50), np.random.default_rng(3))
    b = draw_descriptors(model, np.ones(50), np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    small = descriptor_model(static[:30], outcome[:30])
    assert "1" not in small  # too few deaths for their own group: drawn from all stays
    assert draw_descriptors(small, np.ones(5), np.random.default_rng(0)).shape == (5, 4)
