"""Procedural head phantoms and the demo dataset writer."""

from __future__ import annotations

import hashlib
import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from ldmtool.data.phantoms import DEMO_DATASET_NAME, make_phantom, write_demo_dataset
from ldmtool.errors import LdmError

SHAPE = (64, 64, 32)


@pytest.fixture(scope="module")
def phantoms() -> list[tuple[np.ndarray, np.ndarray]]:
    return [make_phantom(np.random.default_rng([7, i]), SHAPE) for i in range(40)]


def test_deterministic_given_rng() -> None:
    a_img, a_lab = make_phantom(np.random.default_rng(123))
    b_img, b_lab = make_phantom(np.random.default_rng(123))
    c_img, _ = make_phantom(np.random.default_rng(124))
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_lab, b_lab)
    assert not np.array_equal(a_img, c_img)


# sha256 prefixes of (image bytes, label bytes): phantoms feed the demo data and the regression
# reference, so the same generator state must keep giving the same arrays.
REFERENCE_HASHES = [
    ((7, 0), (64, 64, 32), "0dae5bf325b8c257", "965709cb98b13558"),
    ((7, 1), (32, 32, 16), "4ecbe504954916b9", "47437cd6f172bfd5"),
    ((3, 2), (40, 48, 20), "93d03f91c972e7f2", "254c8064aff73900"),
]


@pytest.mark.parametrize(("seed", "shape", "image_sha", "label_sha"), REFERENCE_HASHES)
def test_reference_phantoms_unchanged(seed, shape, image_sha, label_sha) -> None:
    image, label = make_phantom(np.random.default_rng(list(seed)), shape)
    assert hashlib.sha256(image.tobytes()).hexdigest()[:16] == image_sha
    assert hashlib.sha256(label.tobytes()).hexdigest()[:16] == label_sha


def test_types_shapes_and_label_set(phantoms) -> None:
    for image, label in phantoms:
        assert image.shape == SHAPE and label.shape == SHAPE
        assert image.dtype == np.float32 and label.dtype == np.uint8
        assert set(np.unique(label).tolist()) <= {0, 1, 2}
        assert np.isfinite(image).all()
        assert image.min() >= 0.0 and image.max() < 1.3


def test_head_geometry(phantoms) -> None:
    for image, label in phantoms:
        head = label > 0
        frac = head.mean()
        assert 0.2 < frac < 0.6
        # the head does not touch the edge of the field of view
        assert not head[[0, -1]].any() and not head[:, [0, -1]].any()
        assert not head[:, :, [0, -1]].any()
        # intensity ordering: background ~0, brain ~0.4-0.6
        assert image[~head].mean() < 0.06
        brain_like = image[label == 1]
        assert 0.4 < float(np.median(brain_like)) < 0.65


def test_lesions_inside_brain_not_touching_skull(phantoms) -> None:
    for _, label in phantoms:
        lesion = label == 2
        if not lesion.any():
            continue
        # distance (voxels) from every lesion voxel to the outside of the head: skull (2) + gap (1)
        depth = ndi.distance_transform_edt(label > 0)
        assert depth[lesion].min() > 3.0
        assert not (ndi.binary_dilation(lesion) & (label == 0)).any()


def test_lesion_count_distribution_covers_0_to_3(phantoms) -> None:
    counts = [ndi.label(label == 2)[1] for _, label in phantoms]
    assert set(counts) == {0, 1, 2, 3}


def test_lesion_sizes(phantoms) -> None:
    for _, label in phantoms:
        comps, n = ndi.label(label == 2)
        for k in range(1, n + 1):
            extent = np.ptp(np.argwhere(comps == k)[:, :2], axis=0) + 1
            assert 3 <= extent.max() <= 2 * 7 * 1.3 + 1


def test_lesion_contrast_visible(phantoms) -> None:
    seen = 0
    for image, label in phantoms:
        comps, n = ndi.label(label == 2)
        for k in range(1, n + 1):
            blob = comps == k
            ring = ndi.binary_dilation(blob, iterations=3) & ~ndi.binary_dilation(blob)
            shell = ring & (label == 1)
            contrast = image[blob].mean() - image[shell].mean()
            assert contrast >= 0.15, contrast
            seen += 1
    assert seen > 10


def test_other_shapes_work() -> None:
    image, label = make_phantom(np.random.default_rng(3), (32, 40, 16))
    assert image.shape == label.shape == (32, 40, 16)
    assert (label == 1).any()
    with pytest.raises(LdmError):
        make_phantom(np.random.default_rng(3), (4, 4, 4))


def test_write_demo_dataset_layout_and_affine(tmp_path) -> None:
    shape, spacing = (32, 32, 16), (3.0, 3.0, 4.0)
    out = write_demo_dataset(tmp_path / "demo", n_cases=3, shape=shape, spacing=spacing, seed=1)
    info = json.loads((out / "dataset.json").read_text())
    assert info["name"] == DEMO_DATASET_NAME
    assert info["channel_names"] == {"0": "MR"}
    assert info["labels"] == {"background": 0, "head": 1, "lesion": 2}
    assert info["numTraining"] == 3 and info["file_ending"] == ".nii.gz"
    assert isinstance(info["description"], str)
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == [f"phantom_{i:03d}_0000.nii.gz" for i in range(3)]
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == [f"phantom_{i:03d}.nii.gz" for i in range(3)]
    img = nib.load(out / "imagesTr" / "phantom_001_0000.nii.gz")
    lab = nib.load(out / "labelsTr" / "phantom_001.nii.gz")
    assert img.shape == shape and lab.shape == shape
    assert img.get_data_dtype() == np.float32 and lab.get_data_dtype() == np.uint8
    for aff in (img.affine, lab.affine):
        np.testing.assert_allclose(np.diag(aff)[:3], spacing)
        assert nib.aff2axcodes(aff) == ("R", "A", "S")
        centre = aff @ np.array([*((np.array(shape) - 1) / 2), 1.0])
        np.testing.assert_allclose(centre[:3], 0.0, atol=1e-9)
    data = np.asarray(img.dataobj)
    assert 700 < data.max() < 1500  # MR-like units, not [0, 1]
    assert set(np.unique(np.asarray(lab.dataobj)).tolist()) <= {0, 1, 2}


def test_write_demo_dataset_refuses_foreign_folder_and_rewrites_demo(tmp_path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(LdmError, match="not empty"):
        write_demo_dataset(foreign, n_cases=1, shape=(16, 16, 8))
    assert (foreign / "notes.txt").read_text() == "mine"

    demo = tmp_path / "demo"
    write_demo_dataset(demo, n_cases=3, shape=(16, 16, 8), seed=2)
    first = np.asarray(nib.load(demo / "imagesTr" / "phantom_000_0000.nii.gz").dataobj)
    write_demo_dataset(demo, n_cases=2, shape=(16, 16, 8), seed=2)
    assert len(list((demo / "imagesTr").iterdir())) == 2
    assert len(list((demo / "labelsTr").iterdir())) == 2
    assert json.loads((demo / "dataset.json").read_text())["numTraining"] == 2
    again = np.asarray(nib.load(demo / "imagesTr" / "phantom_000_0000.nii.gz").dataobj)
    np.testing.assert_array_equal(first, again)  # case i depends only on (seed, i)

    with pytest.raises(LdmError):
        write_demo_dataset(tmp_path / "x", n_cases=0)
