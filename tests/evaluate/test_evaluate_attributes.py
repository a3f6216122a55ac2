"""Radiomic attributes, FRD, SaD and PaD: known answers."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from ldmtool.evaluate import attributes as at
from ldmtool.evaluate.radiomics import attribute_names, radiomic_features
from ldmtool.evaluate.volumes import normalise01


def _reference_frechet(a: np.ndarray, b: np.ndarray) -> float:
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(ca @ cb).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(ca + cb - 2 * root))


def test_frd_of_a_set_with_itself_is_zero_and_matches_a_reference_computation():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(60, 6)) * [1, 2, 3, 1, 5, 1] + [0, 1, 2, 3, 4, 5]
    syn = rng.normal(size=(50, 6)) * [1.5, 2, 1, 1, 5, 2] + [1, 1, 2, 2, 4, 5]
    assert at.frd(real, real) == pytest.approx(0.0, abs=1e-8)
    r, s = at.standardise(real, syn)
    assert at.frd(real, syn) == pytest.approx(_reference_frechet(r, s), rel=0.01)


def test_frd_equals_frd_score_on_the_same_features(make_phantoms):
    """The reference implementation (frd-score, `pip install -e '.[bench]'`): its v1 pipeline
    (z-score against the first set, mean/covariance, its Fréchet distance) on ldmtool's
    radiomic attributes of two phantom sets gives ldmtool's FRD within 1 %."""
    frd_ref = pytest.importorskip("frd_score.frd")
    tables = []
    for seed, gamma in ((1, 1.0), (2, 1.4)):
        images, labels = make_phantoms(24, seed=seed)
        names = {"tissue": 1, "lesion": 2}
        rows = [
            radiomic_features(normalise01(im) ** gamma, lab.astype(np.uint8), names, 2)[1]
            for im, lab in zip(images, labels)
        ]
        tables.append(np.asarray(rows, dtype=np.float64))
    real, syn = tables
    cols = at._usable(real, syn)
    normed = [
        frd_ref.z_score_normalize(t[:, cols], new_min=0, new_max=1, base_distribution=real[:, cols])
        for t in (real, syn)
    ]
    mu, sigma = [n.mean(0) for n in normed], [np.cov(n, rowvar=False) for n in normed]
    reference = frd_ref.calculate_frechet_distance(mu[0], sigma[0], mu[1], sigma[1])
    assert at.frd(real, syn) == pytest.approx(reference, rel=0.01)


def test_sad_ranks_the_shifted_attribute_first_and_pad_the_decorrelated_pair():
    rng = np.random.default_rng(1)
    names = ["a", "b", "c", "d", "e"]
    base = rng.normal(size=(200, 5))
    real = base.copy()
    real[:, 4] = real[:, 3] + 0.2 * rng.normal(size=200)  # d and e go together in real data
    syn = rng.normal(size=(200, 5))
    syn[:, 2] += 1.5  # c is shifted
    syn[:, 4] = -syn[:, 3] + 0.2 * rng.normal(size=200)  # d and e: same marginals, relation flipped
    rep = at.attribute_report(names, real, syn, pad_on=5)
    assert rep["most_different"][0]["attribute"] == "c"
    assert sorted(rep["most_different_pairs"][0]["attributes"]) == ["d", "e"]
    same = at.attribute_report(names, real, real, pad_on=5)
    assert same["sad"] < 0.01 and same["frd"] == pytest.approx(0, abs=1e-8) and same["pad"] < 1e-6


def test_radiomic_features_of_phantoms(make_phantoms):
    images, labels = make_phantoms(2, seed=3)
    names, vals = radiomic_features(normalise01(images[0]), labels[0].astype(np.uint8), {"tissue": 1, "lesion": 2}, 2)
    assert names == attribute_names({"tissue": 1, "lesion": 2}, 2) and len(vals) == len(names)
    d = dict(zip(names, vals))
    assert 0 < d["shape:volume_fraction"] <= 1 and d["region:lesion:count"] >= 0
    assert 0 <= d["firstorder:mean"] <= 1 and d["glcm:joint_energy"] <= 1
    _, no_labels = radiomic_features(normalise01(images[1]), None, {"tissue": 1, "lesion": 2}, 2)
    assert np.isnan(no_labels[-5:]).all() and np.isfinite(no_labels[:-5]).all()
