"""Volume sets of different shapes: centre pad/crop on the reference voxel grid, resize off it."""

from __future__ import annotations

import nibabel as nib
import numpy as np

from ldmtool.evaluate.volumes import load_volume_set


def _write(folder, name, shape, spacing, value):
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    img = np.zeros(shape, np.float32)
    lab = np.zeros(shape, np.uint8)
    c = tuple(s // 2 for s in shape)
    img[c[0] - 2 : c[0] + 2, c[1] - 2 : c[1] + 2, c[2] - 2 : c[2] + 2] = value
    lab[c[0] - 2 : c[0] + 2, c[1] - 2 : c[1] + 2, c[2] - 2 : c[2] + 2] = 1
    affine = np.diag([*spacing, 1.0])
    nib.save(nib.Nifti1Image(img, affine), folder / "imagesTr" / f"{name}_0000.nii.gz")
    nib.save(nib.Nifti1Image(lab, affine), folder / "labelsTr" / f"{name}.nii.gz")


def test_real_set_of_different_shapes_is_padded_to_its_largest_extent(tmp_path):
    _write(tmp_path / "real", "a", (12, 14, 10), (1, 1, 1), 5.0)
    _write(tmp_path / "real", "b", (16, 10, 12), (1, 1, 1), 1e6)
    vs = load_volume_set(tmp_path / "real", "real")
    assert vs.shape == (16, 14, 12) and vs.spacing == (1.0, 1.0, 1.0)
    # padded, not stretched: each cube keeps its 4×4×4 = 64 voxels
    assert [int((lab == 1).sum()) for lab in vs.labels] == [64, 64]
    assert vs.images.min() >= 0 and vs.images.max() <= 1


def test_set_on_another_voxel_size_is_resized(tmp_path):
    _write(tmp_path / "real", "a", (16, 16, 12), (1, 1, 1), 1.0)
    _write(tmp_path / "syn", "s", (8, 8, 6), (2, 2, 2), 1.0)
    real = load_volume_set(tmp_path / "real", "real")
    syn = load_volume_set(tmp_path / "syn", "synthetic", shape=real.shape, spacing=real.spacing)
    assert syn.shape == (16, 16, 12)
    # resized ×2 per axis: the 4-voxel cube becomes 8 voxels wide
    assert int((syn.labels[0] == 1).sum()) == 8 * 8 * 8


def test_image_reads_skip_label_maps_unless_a_tap_wants_the_case(sets_dir, monkeypatch, tmp_path):
    """`volume(i)` reads only the image file; a case a tap still wants is read whole, and a
    CaseStore that has kept every case of a set stops wanting its cases."""
    from ldmtool.evaluate.cases import CaseStore
    from ldmtool.evaluate.volumes import open_volume_set
    from ldmtool.io import dataset

    vs = open_volume_set(sets_dir / "train", "train")
    assert vs.has_labels
    whole = [vs.read(i) for i in range(len(vs))]
    real_read_aligned = dataset.read_aligned
    labels_read = []

    def counting(path, *a, **kw):
        labels_read.append(path)
        return real_read_aligned(path, *a, **kw)

    monkeypatch.setattr(dataset, "read_aligned", counting)
    for i in range(len(vs)):
        assert np.array_equal(vs.volume(i), whole[i][0])
        assert vs.volume(i).flags["C_CONTIGUOUS"]
    assert labels_read == []
    with CaseStore(tmp_path) as store:
        store.watch(vs)
        vs.volume(0)  # the store wants case 0 whole
        assert len(labels_read) == 1
        for i in range(len(vs)):
            vs.volume(i)
        assert len(labels_read) == len(vs)  # each case once: the store then has it
        vs.volume(2)
        assert len(labels_read) == len(vs)
        cases = store.get(vs)
        assert np.array_equal(np.asarray(cases.case(3)[1]), whole[3][1])
