"""Preprocessing: geometry keeps anatomy at its world position, intensities are normalised."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from ldmtool.data.preprocess import PreprocessConfig, PreprocessedCase, denormalise, preprocess_case
from ldmtool.errors import LdmError
from ldmtool.io.volume import Volume

GEOMETRY_ONLY = dict(intensity="none")


def world(affine: np.ndarray, index) -> np.ndarray:
    return (affine @ np.array([*index, 1.0]))[:3]


def to_index(affine: np.ndarray, point) -> np.ndarray:
    return (np.linalg.inv(affine) @ np.array([*point, 1.0]))[:3]


def centre_world(vol: Volume) -> np.ndarray:
    return world(vol.affine, (np.array(vol.shape) - 1) / 2.0)


def random_volume(shape, affine, seed=0) -> Volume:
    rng = np.random.default_rng(seed)
    return Volume(rng.uniform(10, 100, size=shape).astype(np.float32), affine)


def las_affine() -> np.ndarray:
    return np.array([[-2.0, 0, 0, 40.0], [0, 3.0, 0, -50.0], [0, 0, 4.0, -30.0], [0, 0, 0, 1]])


def lps_permuted_affine() -> np.ndarray:
    # array axis 0 -> world y (posterior), axis 1 -> world z (superior), axis 2 -> world x (left)
    return np.array([[0, 0, -1.5, 20.0], [-2.0, 0, 0, 35.0], [0, 2.5, 0, -10.0], [0, 0, 0, 1]])


@pytest.mark.parametrize("affine", [las_affine(), lps_permuted_affine()])
def test_orientation_to_ras_keeps_world_positions(affine) -> None:
    vol = random_volume((12, 10, 8), affine)
    bright = (3, 7, 5)
    vol.array[bright] = 1000.0
    point = world(affine, bright)
    lab = Volume(np.zeros(vol.shape, np.uint8), affine)
    lab.array[bright] = 2

    out = preprocess_case(vol, lab, PreprocessConfig(**GEOMETRY_ONLY))
    assert nib.aff2axcodes(out.image.affine) == ("R", "A", "S")
    found = np.unravel_index(np.argmax(out.image.array), out.image.shape)
    np.testing.assert_allclose(world(out.image.affine, found), point, atol=1e-6)
    np.testing.assert_array_equal(np.argwhere(out.label.array == 2)[0], found)
    np.testing.assert_allclose(out.label.affine, out.image.affine)

    # every voxel: the value at a world point is the input's value at that world point
    for idx in np.ndindex(out.image.shape):
        src = np.round(to_index(affine, world(out.image.affine, idx))).astype(int)
        assert out.image.array[idx] == vol.array[tuple(src)]


def test_other_orientation_codes_and_none() -> None:
    vol = random_volume((6, 7, 8), np.diag([1.0, 2.0, 3.0, 1.0]))
    out = preprocess_case(vol, None, PreprocessConfig(orientation="lps", **GEOMETRY_ONLY))
    assert nib.aff2axcodes(out.image.affine) == ("L", "P", "S")
    kept = preprocess_case(Volume(vol.array, las_affine()), None, PreprocessConfig(orientation="none", **GEOMETRY_ONLY))
    np.testing.assert_allclose(kept.image.affine, las_affine())
    np.testing.assert_array_equal(kept.image.array, vol.array)


def test_resampling_shape_extent_and_values() -> None:
    affine = np.array([[2.0, 0, 0, -39.0], [0, 2.0, 0, -29.0], [0, 0, 3.0, -28.5], [0, 0, 0, 1]])
    shape = (40, 30, 20)
    ii, jj, kk = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    # image value = world x + 2 * world z (linear, so linear interpolation reproduces it exactly)
    coords = np.stack([ii, jj, kk, np.ones_like(ii)], axis=-1) @ affine.T
    vol = Volume((coords[..., 0] + 2 * coords[..., 2]).astype(np.float32), affine)

    for target, expected in [((4.0, 4.0, 6.0), (20, 15, 10)), ((1.0, 1.0, 1.5), (80, 60, 40))]:
        out = preprocess_case(vol, None, PreprocessConfig(spacing=target, **GEOMETRY_ONLY))
        assert out.image.shape == expected
        np.testing.assert_allclose(out.image.spacing, target)
        extent_in = np.array(shape) * np.array(vol.spacing)
        extent_out = np.array(out.image.shape) * np.array(out.image.spacing)
        np.testing.assert_allclose(extent_out, extent_in)
        np.testing.assert_allclose(centre_world(out.image), centre_world(vol), atol=1e-9)
        # interior voxels (away from the clamped border) hold the value of their world point
        oi, oj, ok = np.meshgrid(*(np.arange(n) for n in out.image.shape), indexing="ij")
        oc = np.stack([oi, oj, ok, np.ones_like(oi)], axis=-1) @ out.image.affine.T
        expect = oc[..., 0] + 2 * oc[..., 2]
        src = np.stack([oi, oj, ok, np.ones_like(oi)], axis=-1) @ (np.linalg.inv(affine) @ out.image.affine).T
        inside = np.all((src[..., :3] >= 0) & (src[..., :3] <= np.array(shape) - 1), axis=-1)
        np.testing.assert_allclose(out.image.array[inside], expect[inside], atol=1e-3)


def test_label_stays_integer_with_same_label_set() -> None:
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    lab = np.zeros((32, 32, 16), np.uint8)
    lab[4:28, 4:28, 2:14] = 1
    lab[10:18, 12:20, 5:10] = 2
    img = Volume(lab.astype(np.float32) * 100 + 5, affine)
    out = preprocess_case(img, Volume(lab, affine), PreprocessConfig(spacing=(1.7, 1.3, 2.9)))
    assert out.label.array.dtype == np.uint8
    assert set(np.unique(out.label.array).tolist()) == {0, 1, 2}
    assert out.label.shape == out.image.shape
    np.testing.assert_allclose(out.label.affine, out.image.affine)


@pytest.mark.parametrize("target", [(32, 36, 20), (33, 25, 21), (40, 30, 20)])
def test_crop_pad_updates_affine(target) -> None:
    affine = np.array([[0, -2.0, 0, 30.0], [1.5, 0, 0, -20.0], [0, 0, 3.0, 5.0], [0, 0, 0, 1]])
    vol = random_volume((30, 40, 20), affine, seed=3)
    lab = Volume((vol.array > 50).astype(np.uint8), affine)
    cfg = PreprocessConfig(shape=target, **GEOMETRY_ONLY)
    out = preprocess_case(vol, lab, cfg)
    assert out.image.shape == target and out.label.shape == target
    # centre stays put (within half a voxel: odd crop/pad amounts cannot be split evenly)
    ras = preprocess_case(vol, None, PreprocessConfig(**GEOMETRY_ONLY)).image
    diff = np.abs(centre_world(out.image) - centre_world(ras))
    assert np.all(diff <= np.array(out.image.spacing) / 2 + 1e-9)
    inv_in = np.linalg.inv(affine)
    for idx in [(0, 0, 0), tuple(np.array(target) - 1), (5, 17, 9), (16, 20, 10)]:
        src = np.round(inv_in @ np.array([*world(out.image.affine, idx), 1.0]))[:3].astype(int)
        if np.all((src >= 0) & (src < np.array(vol.shape))):
            assert out.image.array[idx] == vol.array[tuple(src)]
            assert out.label.array[idx] == lab.array[tuple(src)]
        else:  # padding: background image value, label 0
            assert out.image.array[idx] == out.image.array.min()
            assert out.label.array[idx] == 0


def test_padding_uses_normalised_background() -> None:
    vol = random_volume((10, 10, 10), np.eye(4), seed=4)
    out = preprocess_case(vol, None, PreprocessConfig(shape=(14, 14, 14), out_range=(-1.0, 1.0)))
    assert out.image.array[0, 0, 0] == pytest.approx(-1.0)


def test_percentile_normalisation_and_denormalise() -> None:
    rng = np.random.default_rng(5)
    arr = rng.gamma(2.0, 200.0, size=(24, 24, 12)).astype(np.float32)
    cfg = PreprocessConfig(percentiles=(1.0, 99.0), out_range=(-1.0, 1.0))
    out = preprocess_case(Volume(arr, np.eye(4)), None, cfg)
    assert isinstance(out, PreprocessedCase)
    assert out.image.array.dtype == np.float32
    lo, hi = out.intensity_range
    np.testing.assert_allclose([lo, hi], np.percentile(arr, [1.0, 99.0]), rtol=1e-5)
    assert out.image.array.min() == pytest.approx(-1.0)
    assert out.image.array.max() == pytest.approx(1.0)
    back = denormalise(out.image.array, out.intensity_range, cfg)
    inside = (arr >= lo) & (arr <= hi)
    np.testing.assert_allclose(back[inside], arr[inside], rtol=1e-4, atol=1e-2)
    np.testing.assert_allclose(back[arr > hi], hi, rtol=1e-5)


def test_ct_window_maps_level_plus_minus_half_width() -> None:
    arr = np.full((8, 8, 8), 40.0, np.float32)
    arr[0, 0, 0], arr[1, 0, 0], arr[2, 0, 0], arr[3, 0, 0] = -160.0, 240.0, -1000.0, 3000.0
    cfg = PreprocessConfig(intensity="ct_window", ct_window=(40.0, 400.0), out_range=(0.0, 1.0))
    out = preprocess_case(Volume(arr, np.eye(4)), None, cfg)
    a = out.image.array
    assert out.intensity_range == (-160.0, 240.0)
    assert a[0, 0, 0] == pytest.approx(0.0) and a[1, 0, 0] == pytest.approx(1.0)
    assert a[2, 0, 0] == pytest.approx(0.0) and a[3, 0, 0] == pytest.approx(1.0)
    assert a[4, 4, 4] == pytest.approx(0.5)
    back = denormalise(a, out.intensity_range, cfg)
    assert back[0, 0, 0] == pytest.approx(-160.0) and back[4, 4, 4] == pytest.approx(40.0)


def test_intensity_none_is_identity() -> None:
    vol = random_volume((6, 6, 6), np.eye(4))
    cfg = PreprocessConfig(intensity="none")
    out = preprocess_case(vol, None, cfg)
    np.testing.assert_array_equal(out.image.array, vol.array)
    np.testing.assert_array_equal(denormalise(out.image.array, out.intensity_range, cfg), vol.array)


def test_phantom_end_to_end() -> None:
    from ldmtool.data.phantoms import make_phantom

    image, label = make_phantom(np.random.default_rng(0))
    affine = np.diag([3.0, 3.0, 4.0, 1.0])
    cfg = PreprocessConfig(spacing=(4.0, 4.0, 4.0), shape=(48, 48, 32))
    out = preprocess_case(Volume(image * 1000, affine), Volume(label, affine), cfg)
    assert out.image.shape == out.label.shape == (48, 48, 32)
    assert 0.0 <= out.image.array.min() and out.image.array.max() <= 1.0
    assert set(np.unique(out.label.array).tolist()) <= {0, 1, 2}


def test_config_round_trip() -> None:
    cfg = PreprocessConfig(
        orientation="LPS",
        spacing=(1.0, 1.5, 2.0),
        shape=(64, 64, 32),
        intensity="ct_window",
        percentiles=(1, 99),
        ct_window=(40, 400),
        out_range=(-1, 1),
    )
    data = json.loads(json.dumps(cfg.to_dict()))
    assert data["spacing"] == [1.0, 1.5, 2.0] and data["shape"] == [64, 64, 32]
    back = PreprocessConfig.from_dict(data)
    assert back == cfg
    assert isinstance(back.spacing, tuple) and isinstance(back.shape, tuple)
    assert PreprocessConfig.from_dict(PreprocessConfig().to_dict()) == PreprocessConfig()
    assert PreprocessConfig.from_dict({}) == PreprocessConfig()
    assert PreprocessConfig(spacing=2).spacing == (2.0, 2.0, 2.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(orientation="RAR"),
        dict(orientation="XYZ"),
        dict(orientation="RA"),
        dict(orientation=3),
        dict(spacing=(1.0, -1.0, 1.0)),
        dict(spacing=(1.0, 1.0)),
        dict(spacing="1,1,1"),
        dict(shape=(0, 10, 10)),
        dict(shape=(10.5, 10, 10)),
        dict(shape=(10, 10)),
        dict(intensity="zscore"),
        dict(percentiles=(99.0, 1.0)),
        dict(percentiles=(-1.0, 50.0)),
        dict(intensity="ct_window"),
        dict(intensity="ct_window", ct_window=(40.0, 0.0)),
        dict(out_range=(1.0, 0.0)),
        dict(out_range=(0.0, float("nan"))),
    ],
)
def test_invalid_config(kwargs) -> None:
    with pytest.raises(LdmError):
        PreprocessConfig(**kwargs)


def test_from_dict_rejects_unknown_keys() -> None:
    with pytest.raises(LdmError, match="allowed"):
        PreprocessConfig.from_dict({"spacing": [1, 1, 1], "zoom": 2})


def test_bad_inputs() -> None:
    arr = np.ones((6, 6, 6), np.float32)
    with pytest.raises(LdmError, match="zero intensity range"):
        preprocess_case(Volume(arr, np.eye(4)), None, PreprocessConfig())
    arr[1, 1, 1] = np.nan
    with pytest.raises(LdmError, match="NaN"):
        preprocess_case(Volume(arr, np.eye(4)), None, PreprocessConfig())
    good = random_volume((6, 6, 6), np.eye(4))
    with pytest.raises(LdmError, match="shape"):
        preprocess_case(good, Volume(np.zeros((6, 6, 5), np.uint8), np.eye(4)), PreprocessConfig())
    with pytest.raises(LdmError, match="affine"):
        moved = Volume(np.zeros((6, 6, 6), np.uint8), 2 * np.eye(4))
        preprocess_case(good, moved, PreprocessConfig())
    with pytest.raises(LdmError, match="3D"):
        preprocess_case(Volume(np.ones((6, 6)), np.eye(4)), None, PreprocessConfig())
