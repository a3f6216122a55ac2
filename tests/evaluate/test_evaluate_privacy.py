"""Privacy: copies of training volumes score SSIM ≈ 1 and are flagged; the sampling-time filter."""

from __future__ import annotations

import numpy as np
import pytest

from ldmtool.errors import LdmError
from ldmtool.evaluate import privacy as pv
from ldmtool.evaluate.volumes import normalise01


def test_copies_score_one_and_distinct_volumes_do_not(make_phantoms):
    train, _ = make_phantoms(5, seed=10)
    other, _ = make_phantoms(3, seed=11)
    train01 = np.stack([normalise01(v) for v in train])
    other01 = np.stack([normalise01(v) for v in other])
    s_copy, where = pv.max_ssim_to_set(train01[[3, 1]], train01)
    assert s_copy == pytest.approx([1.0, 1.0], abs=1e-5)
    assert where.tolist() == [3, 1]
    s_other, _ = pv.max_ssim_to_set(other01, train01)
    assert (s_other < 0.9).all(), s_other


def test_repeated_mean_caps_q():
    vals = np.array([0.2, 0.4, 0.6, 0.8])
    mean, std, q = pv.repeated_mean(vals, q=100, repeats=10)
    assert q == 4 and mean == pytest.approx(0.5) and std == pytest.approx(0.0)
    mean, std, q = pv.repeated_mean(vals, q=2, repeats=50, seed=1)
    assert q == 2 and 0.3 < mean < 0.7 and std > 0


def test_memorisation_ratio_below_one_for_copies():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(30, 8))
    heldout = rng.normal(size=(20, 8))
    copies = train[:10] + rng.normal(scale=0.01, size=(10, 8))
    m = pv.memorisation(copies, train, heldout)
    assert m["ratio"] < 0.1 and m["share_closer_than_heldout_p5"] == 1.0
    fresh = rng.normal(size=(20, 8))
    assert 0.5 < pv.memorisation(fresh, train, heldout)["ratio"] < 2.0
    assert pv.memorisation(fresh, train, None)["ratio"] is None


def test_memorization_filter_rejects_copies(make_phantoms):
    train, _ = make_phantoms(4, seed=20)
    other, _ = make_phantoms(2, seed=21)
    f = pv.MemorizationFilter(train * 1000.0, threshold=0.95, case_ids=[f"case{i}" for i in range(4)])
    # a copy in another intensity scale, with a little noise, is still a copy
    rng = np.random.default_rng(0)
    near_copy = train[2] * 3.0 + 7.0 + rng.normal(scale=0.003, size=train[2].shape)
    check = f.check(near_copy)
    assert check.reject and check.nearest == "case2" and check.score > 0.95
    assert not f.check(other[0]).reject
    assert f.summary() == {"reject_memorized_threshold": 0.95, "checked": 2, "rejected": 1}
    # another shape is resized to the training shape first
    assert f.score(train[1][::2, ::2, :])[1] == 1


def test_memorization_filter_from_folder(sets_dir):
    from ldmtool.io import read_nifti

    f = pv.MemorizationFilter(sets_dir / "train", threshold=0.9)
    img = read_nifti(sorted((sets_dir / "train" / "imagesTr").glob("*_0000.nii.gz"))[4]).array
    check = f.check(img)
    assert check.reject and check.score == pytest.approx(1.0, abs=1e-5) and check.nearest == f.case_ids[4]


def test_memorization_filter_bad_input():
    with pytest.raises(LdmError):
        pv.MemorizationFilter(np.zeros((3, 8, 8, 8)), threshold=1.5)
    with pytest.raises(LdmError):
        pv.MemorizationFilter(np.zeros((8, 8, 8)))
    f = pv.MemorizationFilter(np.random.default_rng(0).random((2, 8, 8, 8)))
    with pytest.raises(LdmError):
        f.check(np.zeros((8, 8)))
    with pytest.raises(LdmError):
        f.check(np.full((8, 8, 8), np.nan))


def test_one_to_many_ssim_equals_monai_ssim_metric():
    import numpy as np

    from ldmtool.evaluate.privacy import OneToManySSIM, max_ssim_to_set, ssim_batch, ssim_window

    rng = np.random.default_rng(0)
    ref = rng.random((5, 14, 16, 12)).astype(np.float32)
    ref[2] = np.clip(ref[2] * 0.5 + 0.2, 0, 1)
    query = np.clip(ref[3] + 0.05 * rng.standard_normal(ref[3].shape), 0, 1).astype(np.float32)
    win = ssim_window(ref.shape[1:])
    fast = OneToManySSIM(ref, win, batch=2)(query)  # batch 2: chunks of the reference set
    monai = ssim_batch(np.repeat(query[None], len(ref), 0), ref, win_size=win)
    assert np.allclose(fast, monai, atol=1e-5)
    best, where = max_ssim_to_set(query[None], ref)
    assert int(where[0]) == 3 and abs(best[0] - monai[3]) < 1e-5
