"""Incomplete data: missing voxels through preprocessing and data set preparation; masked losses."""

import nibabel as nib
import numpy as np
import pytest
import torch

from ldmtool.data.prepared import prepare_dataset
from ldmtool.data.preprocess import PreprocessConfig, preprocess_case
from ldmtool.errors import LdmError
from ldmtool.io.volume import Volume
from ldmtool.train.autoencoder import masked_l1


def test_missing_voxels_follow_the_geometry_and_leave_the_intensity_range_alone():
    rng = np.random.default_rng(0)
    arr = rng.random((8, 10, 6)).astype(np.float32) * 100
    missing = np.zeros(arr.shape, dtype=bool)
    missing[:, :, 2] = True  # one whole slice
    arr[:, :, 2] = np.nan
    arr[0, 0, 2] = 1e6  # a huge value in a missing voxel does not count for the intensity range
    affine = np.diag([-2.0, 2.0, 3.0, 1.0])  # LAS: reorienting flips the first axis
    cfg = PreprocessConfig(orientation="RAS", spacing=(2.0, 2.0, 1.5), intensity="percentile")
    pc = preprocess_case(Volume(arr, affine), None, cfg, missing)
    known = np.delete(arr, 2, axis=2)
    assert pc.intensity_range == pytest.approx(tuple(np.percentile(known, cfg.percentiles)), rel=1e-5)
    gone = pc.missing.array.astype(bool)
    assert gone.shape == pc.image.array.shape == (8, 10, 12)
    assert np.allclose(pc.missing.affine, pc.image.affine)
    # new slice i samples old slice 0.5 i − 0.25 (same field of view, centred); linear
    # interpolation touches the missing old slice 2 for 0.5 i − 0.25 in (1, 3): i = 3..6
    slices = sorted(set(np.nonzero(gone)[2].tolist()))
    assert slices == [3, 4, 5, 6] and gone[:, :, 3:7].all()
    assert np.isfinite(pc.image.array).all()
    with pytest.raises(LdmError, match="outside the missing"):
        preprocess_case(Volume(arr, affine), None, cfg, np.zeros(arr.shape, dtype=bool))
    with pytest.raises(LdmError, match="shape"):
        preprocess_case(Volume(arr, affine), None, cfg, missing[:, :, :3])


def _write(root, name, arr, affine=np.eye(4)):
    nib.save(nib.Nifti1Image(arr, affine), root / name)


def test_prepare_dataset_reads_masks_nan_voxels_and_simulates_mcar(tmp_path):
    root = tmp_path / "ds"
    for d in ("imagesTr", "masksTr"):
        (root / d).mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(3):
        a = rng.random((8, 8, 4)).astype(np.float32)
        if i == 1:
            a[0:2, 0:2, 0] = np.nan
        _write(root / "imagesTr", f"c{i}_0000.nii.gz", a)
    m = np.zeros((8, 8, 4), np.uint8)
    m[..., 3] = 1
    _write(root / "masksTr", "c0.nii.gz", m)
    pre = PreprocessConfig(orientation="none")
    data = prepare_dataset(root, pre)
    assert data.observed is not None and data.observed.shape == data.images.shape
    obs = data.observed.bool()
    assert not obs[0, 3].any() and obs[0, :3].all()  # slice 3 of case 0 (slices first)
    assert int((~obs[1]).sum()) == 4 and obs[2].all()
    assert (data.images[~obs] == 0).all()
    sim = prepare_dataset(root, pre, missing_rate=0.5, seed=3)
    assert 0.45 < sim.missing_fraction < 0.65
    assert torch.equal(prepare_dataset(root, pre, missing_rate=0.5, seed=3).observed, sim.observed)  # seeded
    assert prepare_dataset(root / "imagesTr" / "c2_0000.nii.gz", pre).observed is None  # complete: no mask
    _write(root / "masksTr", "c0.nii.gz", m * 3)
    with pytest.raises(LdmError, match="0 .observed. and 1"):
        prepare_dataset(root, pre)
    _write(root / "masksTr", "zz.nii.gz", m)
    with pytest.raises(LdmError, match="has no image"):
        prepare_dataset(root, pre)


def test_masked_l1_ignores_missing_voxels():
    pred, target = torch.rand(2, 1, 4, 4), torch.rand(2, 1, 4, 4)
    obs = (torch.rand(2, 1, 4, 4) > 0.5).float()
    other = torch.where(obs.bool(), target, torch.rand_like(target) * 100)
    assert masked_l1(pred, target, obs) == masked_l1(pred, other, obs)
    expect = ((pred - target).abs() * obs).sum() / obs.sum()
    torch.testing.assert_close(masked_l1(pred, target, obs), expect)
    torch.testing.assert_close(masked_l1(pred, target, None), (pred - target).abs().mean())


def test_interpolate_missing_along_the_slice_axis():
    from ldmtool.data.missing import interpolate_missing

    rng = np.random.default_rng(1)
    a, b = rng.random((1, 5, 4)), rng.random((1, 5, 4))
    ramp = (a + b * np.arange(9.0)[:, None, None]).astype(np.float32)  # linear along the slices
    missing = np.zeros(ramp.shape, dtype=bool)
    missing[1::2] = True  # every other slice
    missing[8, 0, 0] = True  # beyond the last observed voxel of its column
    holed = np.where(missing, np.nan, ramp)  # what a missing voxel holds never enters
    out = interpolate_missing(holed, missing)
    assert out.dtype == ramp.dtype and np.isfinite(out).all()
    assert np.array_equal(out[~missing], ramp[~missing])
    inner = missing.copy()
    inner[7:, 0, 0] = False
    np.testing.assert_allclose(out[inner], ramp[inner], rtol=1e-5)
    assert out[7, 0, 0] == out[8, 0, 0] == ramp[6, 0, 0]  # past the last observed voxel: its value

    # a column with no observed voxel (a hole through every slice; a 2D image's only slice):
    # filled from its neighbours in the plane
    flat = np.full((3, 6, 6), 2.0, dtype=np.float32)
    flat[:, :, 3:] = 4.0
    hole = np.zeros(flat.shape, dtype=bool)
    hole[:, 1, 1] = hole[:, 4, 4] = True
    filled = interpolate_missing(np.where(hole, np.nan, flat), hole)
    assert abs(filled[0, 1, 1] - 2.0) < 0.2 and abs(filled[0, 4, 4] - 4.0) < 0.2
    with pytest.raises(LdmError, match="no observed voxel"):
        interpolate_missing(flat, np.ones(flat.shape, dtype=bool))
