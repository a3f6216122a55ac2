"""Several channels per case: contrast phantoms, per-channel preprocessing and the channel axis of
the prepared data."""

import numpy as np
import pytest
import torch

from ldmtool.data.phantoms import CONTRASTS, make_phantom, write_demo_dataset
from ldmtool.data.prepared import prepare_dataset, slices_to_volume, volume_to_slices
from ldmtool.data.preprocess import PreprocessConfig, preprocess_case
from ldmtool.errors import LdmError
from ldmtool.io import Volume, read_volume


def test_contrast_phantoms_share_the_anatomy_and_differ_in_contrast():
    shape = (32, 32, 16)
    names = ("t1", "t2", "flair")
    checked = 0
    for i in range(6):
        image, label = make_phantom(np.random.default_rng([5, i]), shape, contrasts=names)
        _, grey_label = make_phantom(np.random.default_rng([5, i]), shape)
        assert image.shape == (*shape, 3) and np.array_equal(label, grey_label)  # the same head and lesions
        lesion, brain = label == 2, label == 1
        if lesion.sum() < 20:
            continue
        t1, t2, flair = (image[..., c] for c in range(3))
        assert t1[lesion].mean() < t1[brain].mean()  # lesions dark in T1
        assert flair[lesion].mean() > flair[brain].mean() + 0.2  # bright in FLAIR
        assert t2[lesion].mean() > t2[brain].mean()
        checked += 1
    assert checked >= 3
    with pytest.raises(LdmError, match="unknown contrast 'pd'"):
        make_phantom(np.random.default_rng(0), shape, contrasts=("t1", "pd"))
    assert set(CONTRASTS) >= set(names)


def test_channels_are_preprocessed_alone_and_stacked(tmp_path):
    """Each channel of a prepared case equals that channel file preprocessed by itself: the same
    geometry for every channel, each normalised with its own intensity range."""
    root = write_demo_dataset(tmp_path / "d", n_cases=3, shape=(16, 16, 8), contrasts=("t1", "flair"))
    cfg = PreprocessConfig(shape=(16, 12, 8))
    data = prepare_dataset(root, cfg)
    assert tuple(data.images.shape) == (3, 8, 2, 16, 12) and data.channels == 2
    assert data.channel_names == ["t1", "flair"] and data.grid == (8, 16, 12) and data.volume_shape == (16, 12, 8)
    assert data.case(1).shape == (8, 2, 16, 12) and data.slices(torch.tensor([0, 2]), torch.tensor([3, 5])).shape == (
        2,
        2,
        16,
        12,
    )
    for i in range(3):
        for c in range(2):
            alone = preprocess_case(read_volume(root / "imagesTr" / f"phantom_{i:03d}_{c:04d}.nii.gz"), None, cfg)
            np.testing.assert_array_equal(volume_to_slices(alone.image.array), data.images[i, :, c].numpy())
            assert data.channel_ranges[i][c] == pytest.approx(alone.intensity_range)
    assert data.channel_ranges[0][0] != data.channel_ranges[0][1]
    sub = data.subset([2])
    assert sub.channel_names == ["t1", "flair"] and sub.channel_ranges == [data.channel_ranges[2]]


def test_channel_axis_round_trips_and_a_channel_missing_altogether():
    rng = np.random.default_rng(0)
    vol = rng.random((6, 5, 4, 3)).astype(np.float32)
    assert volume_to_slices(vol).shape == (4, 3, 6, 5)
    np.testing.assert_array_equal(slices_to_volume(volume_to_slices(vol)), vol)
    missing = np.zeros(vol.shape, bool)
    missing[..., 1] = True  # channel 1 not acquired
    pc = preprocess_case(Volume(vol, np.eye(4), {}), None, PreprocessConfig(orientation="none"), missing)
    assert pc.missing.array[..., 1].all() and not pc.missing.array[..., [0, 2]].any()
    assert np.isnan(pc.intensity_ranges[1]).all() and np.isfinite(pc.intensity_ranges[2]).all()
    assert (pc.image.array[..., 1] == 0).all()
    with pytest.raises(LdmError, match="every voxel of the image is missing"):
        preprocess_case(Volume(vol, np.eye(4), {}), None, PreprocessConfig(), np.ones(vol.shape, bool))
