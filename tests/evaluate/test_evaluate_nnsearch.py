"""Two-stage nearest training volume: copies are found (recall 1), unrelated volumes are not flagged."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ldmtool.evaluate import nnsearch as nn
from ldmtool.evaluate.privacy import max_ssim_to_set, ssim_window
from ldmtool.evaluate.volumes import normalise01


def _norm(vols):
    return np.stack([normalise01(v) for v in vols])


def test_shift_and_add_filter_equals_conv3d():
    x = torch.rand(2, 9, 10, 8)
    taps = nn.gaussian_taps(5)
    g = torch.tensor(taps)
    ref = x[:, None]
    for shape in ((1, 1, 5, 1, 1), (1, 1, 1, 5, 1), (1, 1, 1, 1, 5)):
        ref = torch.nn.functional.conv3d(ref, g.reshape(shape))
    assert torch.allclose(nn.gaussian_filter_valid(x, taps), ref[:, 0], atol=1e-6)


def test_copies_are_found_with_recall_one_and_unrelated_are_not_flagged(make_phantoms):
    train = _norm(make_phantoms(12, seed=30)[0])
    other = _norm(make_phantoms(4, seed=31)[0])
    rng = np.random.default_rng(0)
    picks = [7, 2, 11, 0, 5]
    copies = np.clip(train[picks] + rng.normal(scale=0.01, size=train[picks].shape), 0, 1).astype(np.float32)
    index = nn.SSIMIndex.from_volumes(train, ssim_window(train.shape[1:]), k=3)
    found = [index.search(v) for v in copies]
    assert [j for _, j in found] == picks
    assert all(s > 0.95 for s, _ in found)
    assert index.pairs == len(picks)  # a near-copy stands out in the coarse stage: one exact pair each
    rec = nn.recall_vs_exhaustive(
        index, lambda i: copies[i], np.array([j for _, j in found]), np.array([s for s, _ in found]), 5
    )
    assert rec["recall"] == 1.0 and rec["checked"] == 5 and rec["max_ssim_shortfall"] == pytest.approx(0, abs=1e-9)
    s_other = [index.search(v)[0] for v in other]
    assert max(s_other) < 0.9


def test_two_stage_equals_exhaustive_search(make_phantoms):
    train = _norm(make_phantoms(10, seed=40)[0])
    queries = _norm(make_phantoms(6, seed=41)[0])
    exact, where = max_ssim_to_set(queries, train)
    two, where2 = max_ssim_to_set(queries, train, candidates=4)
    # exact SSIM of the same pair: identical where the nearest neighbour was among the candidates
    hit = where == where2
    assert hit.mean() >= 5 / 6
    assert np.allclose(two[hit], exact[hit], atol=1e-5)
    assert (two <= exact + 1e-6).all()


def test_stats_cache_is_bounded(make_phantoms):
    train = _norm(make_phantoms(6, seed=50)[0])
    one = nn.ssim_stats(train[0], nn.gaussian_taps(11), torch.device("cpu")).nbytes
    index = nn.SSIMIndex.from_volumes(train, 11, k=6, margin=None, cache_bytes=2 * one)
    index.search(train[3])
    assert len(index._cache) == 2 and index.pairs == 6
    assert index.exhaustive(train[4]) == (pytest.approx(1.0, abs=1e-5), 4)


def _counting_index(train, cached: int, **kw):
    """An index (window 11, no pooling) whose cache holds `cached` volumes, and the list of the
    training volumes it loads."""
    loads = []

    def load(j):
        loads.append(j)
        return train[j]

    one = nn.ssim_stats(train[0], nn.gaussian_taps(11), torch.device("cpu")).nbytes
    desc = np.stack([nn.volume_descriptor(v, 1) for v in train])
    return nn.SSIMIndex(desc, load, 11, 1, cache_bytes=cached * one, **kw), loads


def test_exhaustive_pass_reads_each_training_volume_once(make_phantoms):
    """Several recall queries share one pass over a training set larger than the cache: every
    volume loaded once (a query-by-query scan would load each once per query), same answers."""
    train = _norm(make_phantoms(8, seed=60)[0])
    queries = _norm(make_phantoms(3, seed=61)[0])
    index, loads = _counting_index(train, cached=3, k=2)
    many = index.exhaustive_many(list(queries))
    assert sorted(loads) == list(range(8))
    assert index.pairs == 3 * 8
    ref = nn.SSIMIndex.from_volumes(train, 11, k=8, margin=None)
    for q, (s, j) in zip(queries, many):
        s_ref, j_ref = ref.exhaustive(q)
        assert j == j_ref and s == pytest.approx(s_ref, abs=1e-6)
        assert j == int(np.argmax(ref.ssim_to(q, range(8))))


def test_locality_order_reads_fewer_training_volumes():
    """Queries whose candidates overlap, given in an order that alternates between two groups:
    with room for 3 volumes, query order evicts what the next query needs (every pair a read);
    the locality order takes each group together (each volume read once)."""
    groups = [[0, 1, 2], [3, 4, 5]]
    cands = [groups[q % 2] for q in range(8)]

    def reads(order, capacity=3):
        cache, n = [], 0
        for q in order:
            for j in cands[q]:
                if j in cache:
                    cache.remove(j)
                else:
                    n += 1
                cache.append(j)
                cache = cache[-capacity:]
        return n

    order = nn.locality_order(cands, 3)
    assert sorted(order) == list(range(8))
    assert reads(range(8)) == 24 and reads(order) == 6


def test_search_all_equals_search_per_query_with_fewer_loads(make_phantoms):
    train = _norm(make_phantoms(10, seed=70)[0])
    rng = np.random.default_rng(1)
    queries = np.clip(train[[3, 8, 3, 8, 5, 3]] + rng.normal(scale=0.05, size=(6, *train.shape[1:])), 0, 1)
    index, loads = _counting_index(train, cached=2, k=2, margin=None)
    assert index.cache_capacity() == 2
    qd = np.stack([nn.volume_descriptor(v, 1) for v in queries])
    best, where = index.search_all(lambda i: queries[i], qd)
    ref = nn.SSIMIndex.from_volumes(train, 11, k=2, margin=None)
    for i, q in enumerate(queries):
        s, j = ref.search(q)
        assert where[i] == j and best[i] == pytest.approx(s, abs=1e-6)
    assert list(where[[0, 2, 5]]) == [3, 3, 3]
    assert len(loads) < 2 * len(queries)  # query order would read both candidates of every query


def test_2d_images_get_2d_ssim_and_ms_ssim():
    """(I, J, 1) images: SSIM with an in-plane window (not one voxel), equal to MONAI's 2D metrics."""
    from monai.metrics import MultiScaleSSIMMetric, SSIMMetric

    from ldmtool.evaluate.fidelity import ms_ssim_pair, ms_ssim_setting
    from ldmtool.evaluate.privacy import ssim_batch

    rng = np.random.default_rng(0)
    a = rng.random((28, 28, 1)).astype(np.float32)
    b = (0.6 * a + 0.4 * rng.random((28, 28, 1))).astype(np.float32)
    assert ssim_window(a.shape) == 11 and nn.coarse_factor(a.shape) == 1
    taps = nn.gaussian_taps(11)
    cpu = torch.device("cpu")
    ours = nn.ssim_pair(nn.ssim_stats(a, taps, cpu), nn.ssim_stats(b, taps, cpu), taps)
    ta, tb = torch.from_numpy(a[None, None, ..., 0]), torch.from_numpy(b[None, None, ..., 0])
    monai = float(SSIMMetric(spatial_dims=2, data_range=1.0, win_size=11)(ta, tb))
    assert ours == pytest.approx(monai, abs=1e-5) and ours < 0.95
    assert float(ssim_batch(a[None], b[None])[0]) == pytest.approx(monai, abs=1e-5)
    scales, win = ms_ssim_setting(a.shape)
    weights = (0.5,) * scales
    ms = MultiScaleSSIMMetric(spatial_dims=2, data_range=1.0, kernel_size=win, weights=weights)
    assert ms_ssim_pair(torch.from_numpy(a), torch.from_numpy(b), win, weights) == pytest.approx(
        float(ms(ta, tb)), abs=1e-4
    )
    desc = nn.volume_descriptor(np.zeros((64, 64, 1), np.float32), 2)
    assert desc.shape == (32, 32, 1)


def test_pairwise_ms_ssim_of_a_volume_set_uses_its_volume_shape():
    """A streamed set's `shape` is already a volume's: MS-SSIM fits its scales to all three axes
    (a set of 45×60×60 volumes once got 5 scales from 60×60 and a NaN from an empty coarsest scale)."""
    from ldmtool.evaluate.fidelity import ms_ssim_setting, pairwise_ms_ssim, pairwise_ssim
    from ldmtool.evaluate.volumes import VolumeSet

    rng = np.random.default_rng(0)
    arr = rng.random((3, 45, 60, 60)).astype(np.float32)
    vs = VolumeSet("x", None, arr, None, ["a", "b", "c"])
    got = pairwise_ms_ssim(vs, pairs=3)
    assert (got["scales"], got["window"]) == ms_ssim_setting((45, 60, 60)) and np.isfinite(got["value"])
    assert got["value"] == pytest.approx(pairwise_ms_ssim(arr, pairs=3)["value"])
    assert pairwise_ssim(vs, pairs=3) == pytest.approx(pairwise_ssim(arr, pairs=3))


def test_pictures_are_drawn_without_a_coronal_row():
    """Montages and privacy pairs show a 2D image (I, J, 1) as itself; volumes get axial + coronal."""
    from ldmtool.evaluate.figures import _mid_views
    from ldmtool.pipelines.montage import montage

    picture, volume = np.zeros((16, 12, 1)), np.zeros((16, 12, 8))
    assert montage([(picture, None)], scale=1).shape[:2] == (12 + 2, 16 + 2)
    assert montage([(volume, None)], scale=1).shape[:2] == (12 + 2 + 8 + 2, 16 + 2)
    assert _mid_views(picture).shape == (12, 16) and _mid_views(volume).shape == (12, 16 + 1 + 16)


def test_slabs_give_the_whole_volume_values(monkeypatch):
    """Moments and SSIM filtered in slabs of a few planes equal those of the whole volume, for
    one pair and for a query against a batch (the CPU path of brain-sized volumes)."""
    rng = np.random.default_rng(0)
    v = rng.random((40, 24, 18), dtype=np.float32)
    refs = [np.clip(v + 0.3 * rng.random(v.shape, dtype=np.float32), 0, 1), 1 - v, v]
    taps, cpu = nn.gaussian_taps(7), torch.device("cpu")

    def compute():
        a = nn.ssim_stats(v, taps, cpu)
        pairs = [nn.ssim_pair(a, nn.ssim_stats(r, taps, cpu), taps) for r in refs]
        batch = nn.ssim_batch_stats(nn.ssim_stats(v[None], taps, cpu), nn.ssim_stats(np.stack(refs), taps, cpu), taps)
        return a, pairs, batch

    monkeypatch.setattr(nn, "SLAB_VOXELS", 10**9)
    whole, pairs_whole, batch_whole = compute()
    monkeypatch.setattr(nn, "SLAB_VOXELS", 3 * 24 * 18)  # slabs of 3 planes, the last one shorter
    assert len(nn._slabs(torch.zeros(v.shape), len(taps) - 1)) == 12
    slab, pairs_slab, batch_slab = compute()
    assert torch.equal(whole.mu, slab.mu) and torch.equal(whole.var, slab.var)
    np.testing.assert_allclose(pairs_slab, pairs_whole, rtol=0, atol=1e-12)
    np.testing.assert_allclose(batch_slab, batch_whole, rtol=0, atol=1e-12)
    np.testing.assert_allclose(batch_slab, pairs_slab, rtol=0, atol=1e-12)
    assert pairs_slab[2] == pytest.approx(1.0)
