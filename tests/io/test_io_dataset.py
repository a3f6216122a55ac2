"""Data set discovery (nnU-Net, plain folder, single file) and per-case consistency checks."""

import json

import numpy as np
import pytest

from ldmtool.errors import LdmError
from ldmtool.io import Case, Dataset, Volume, load_dataset, read_case, write_dicom_series, write_nifti

LABELS = {"background": 0, "head": 1, "lesion": 2}


def _nnunet(root, make_volume, cases=("case_001", "case_002"), labels=LABELS, with_json=True):
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for i, cid in enumerate(cases):
        image = make_volume(seed=i)
        write_nifti(image, root / "imagesTr" / f"{cid}_0000.nii.gz")
        write_nifti(make_volume(dtype=np.uint8, seed=10 + i, high=3), root / "labelsTr" / f"{cid}.nii.gz")
    if with_json:
        info = {"channel_names": {"0": "MRI"}, "labels": labels, "numTraining": len(cases), "file_ending": ".nii.gz"}
        (root / "dataset.json").write_text(json.dumps(info))
    return root


def test_nnunet_layout(tmp_path, make_volume):
    ds = load_dataset(_nnunet(tmp_path / "Dataset001_Test", make_volume))
    assert isinstance(ds, Dataset) and ds.layout == "nnunet"
    assert [c.case_id for c in ds.cases] == ["case_001", "case_002"]
    assert ds.has_labels and ds.label_names == LABELS and ds.channel_names == {"0": "MRI"}
    case = ds.cases[0]
    assert case.image.name == "case_001_0000.nii.gz" and case.label.name == "case_001.nii.gz"
    image, label = ds.read(case)
    assert image.shape == label.shape == (6, 5, 4)
    assert np.issubdtype(label.array.dtype, np.integer)
    _, label2 = read_case(case, LABELS)
    np.testing.assert_array_equal(label2.array, label.array)


def test_nnunet_v1_style_labels(tmp_path, make_volume):
    root = _nnunet(tmp_path / "d", make_volume, labels={"0": "background", "1": "head", "2": "lesion"})
    assert load_dataset(root).label_names == LABELS


def test_nnunet_missing_label(tmp_path, make_volume):
    root = _nnunet(tmp_path / "d", make_volume)
    (root / "labelsTr" / "case_002.nii.gz").unlink()
    with pytest.raises(LdmError, match="case case_002 has no label"):
        load_dataset(root)


def test_nnunet_label_without_image(tmp_path, make_volume):
    root = _nnunet(tmp_path / "d", make_volume)
    (root / "imagesTr" / "case_001_0000.nii.gz").unlink()
    with pytest.raises(LdmError, match="has no image"):
        load_dataset(root)


def test_nnunet_channels_read_as_one_image(tmp_path, make_volume):
    root = _nnunet(tmp_path / "d", make_volume)
    for i, cid in enumerate(("case_001", "case_002")):
        write_nifti(make_volume(seed=20 + i), root / "imagesTr" / f"{cid}_0001.nii.gz")
    info = json.loads((root / "dataset.json").read_text())
    info["channel_names"] = {"0": "T1", "1": "FLAIR"}
    (root / "dataset.json").write_text(json.dumps(info))
    ds = load_dataset(root)
    assert ds.channels == 2 and ds.channel_list == ["T1", "FLAIR"]
    assert [p.name for p in ds.cases[1].channel_files] == ["case_002_0000.nii.gz", "case_002_0001.nii.gz"]
    image, label = ds.read(ds.cases[1])
    assert image.shape == (6, 5, 4, 2) and label.shape == (6, 5, 4)
    np.testing.assert_array_equal(image.array[..., 0], make_volume(seed=1).array)
    np.testing.assert_array_equal(image.array[..., 1], make_volume(seed=21).array)


def test_nnunet_channel_mismatch(tmp_path, make_volume):
    root = _nnunet(tmp_path / "d", make_volume)  # dataset.json: one channel
    write_nifti(make_volume(), root / "imagesTr" / "case_001_0001.nii.gz")
    with pytest.raises(LdmError, match=r"case case_001 has a channel 0001 file .* lists 1 channel"):
        load_dataset(root)
    root2 = _nnunet(tmp_path / "d2", make_volume)
    info = json.loads((root2 / "dataset.json").read_text())
    info["channel_names"] = {"0": "T1", "1": "T2"}
    (root2 / "dataset.json").write_text(json.dumps(info))
    with pytest.raises(LdmError, match=r"no case has a channel 0001 \(T2\) file .* lists 2 channels"):
        load_dataset(root2)
    # a case without a channel's file lacks that contrast: read as all missing (NaN) where missing
    # voxels are allowed (the trainers), an error elsewhere
    write_nifti(make_volume(seed=5), root2 / "imagesTr" / "case_002_0001.nii.gz")
    lacking = load_dataset(root2)
    case = next(c for c in lacking.cases if c.case_id == "case_001")
    assert case.absent == (1,) and case.channel_files[1] is None and lacking.channels == 2
    with pytest.raises(LdmError, match=r"case case_001 has no channel 0001 \(T2\) file; this command needs every"):
        lacking.read(case)
    image, _ = lacking.read(case, allow_nan=True)
    assert image.array.shape[-1] == 2 and np.isnan(image.array[..., 1]).all() and np.isfinite(image.array[..., 0]).all()
    assert lacking.absent_summary().startswith("1 of 2 cases lack a channel's file (T2 of 1 case, e.g. case_001)")
    # without dataset.json: the channels any case has are those of every case
    root3 = _nnunet(tmp_path / "d3", make_volume, with_json=False)
    write_nifti(make_volume(), root3 / "imagesTr" / "case_002_0001.nii.gz")
    assert [c.absent for c in load_dataset(root3).cases] == [(1,), ()]
    # a channel on another grid
    write_nifti(make_volume(shape=(6, 5, 3)), root3 / "imagesTr" / "case_001_0001.nii.gz")
    ds = load_dataset(root3)
    with pytest.raises(LdmError, match="channel 0001 of case_001 has shape"):
        ds.read(ds.cases[0])


def test_nnunet_json_missing_or_malformed(tmp_path, make_volume):
    root = _nnunet(tmp_path / "d", make_volume, with_json=False)
    ds = load_dataset(root)  # labelled without dataset.json: names are inferred when the labels are read
    assert ds.has_labels and ds.labels_inferred and ds.label_names == {}
    (root / "dataset.json").write_text("{not json")
    with pytest.raises(LdmError, match="not valid JSON"):
        load_dataset(root)
    (root / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "tumour": [1, 2]}}))
    with pytest.raises(LdmError, match="region-based"):
        load_dataset(root)


def test_label_shape_mismatch(tmp_path, make_volume):
    root = _nnunet(tmp_path / "d", make_volume)
    write_nifti(make_volume(shape=(6, 5, 3), dtype=np.uint8), root / "labelsTr" / "case_001.nii.gz")
    ds = load_dataset(root)
    with pytest.raises(LdmError, match=r"label of case_001 has shape \(6, 5, 3\) but its image has shape \(6, 5, 4\)"):
        ds.read(ds.cases[0])


def test_label_values_and_alignment(tmp_path, make_volume):
    root = _nnunet(tmp_path / "d", make_volume)
    ds = load_dataset(root)
    write_nifti(make_volume(dtype=np.uint8, high=6), ds.cases[0].label)
    with pytest.raises(LdmError, match=r"values \[3, 4, 5\] not listed"):
        ds.read(ds.cases[0])
    shifted = make_volume(dtype=np.uint8)
    shifted.affine[0, 3] += 0.5
    write_nifti(shifted, ds.cases[1].label)
    with pytest.raises(LdmError, match="not aligned"):
        ds.read(ds.cases[1])
    float_label = make_volume().with_array(np.full((6, 5, 4), 0.5, np.float32))
    write_nifti(float_label, ds.cases[1].label)
    with pytest.raises(LdmError, match="non-integer"):
        ds.read(ds.cases[1])


def test_plain_folder(tmp_path, make_volume):
    root = tmp_path / "plain"
    write_nifti(make_volume(seed=1), root / "b.nii.gz")
    write_nifti(make_volume(seed=2), root / "a.nii")
    write_dicom_series(make_volume(seed=3), root / "c_dicom")
    (root / "notes.txt").write_text("ignored")
    (root / "empty_sub").mkdir()
    ds = load_dataset(root)
    assert ds.layout == "folder" and not ds.has_labels and ds.label_names == {}
    assert [c.case_id for c in ds.cases] == ["a", "b", "c_dicom"]
    assert all(c.label is None for c in ds.cases)
    image, label = read_case(ds.cases[2])
    assert image.shape == (6, 5, 4) and label is None


def test_folder_that_is_one_dicom_series(tmp_path, make_volume):
    out = write_dicom_series(make_volume(), tmp_path / "series")
    ds = load_dataset(out)
    assert len(ds.cases) == 1 and ds.cases[0].image == out


def test_single_file(tmp_path, make_volume):
    path = write_nifti(make_volume(), tmp_path / "one.nii.gz")
    ds = load_dataset(path)
    assert ds.layout == "file" and ds.cases == [Case("one", path, None)]
    assert isinstance(read_case(ds.cases[0])[0], Volume)


def test_empty_and_missing(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(LdmError, match="no volumes found in"):
        load_dataset(tmp_path / "empty")
    with pytest.raises(LdmError, match="does not exist"):
        load_dataset(tmp_path / "missing")


def test_duplicate_case_names(tmp_path, make_volume):
    write_nifti(make_volume(), tmp_path / "d" / "x.nii")
    write_nifti(make_volume(), tmp_path / "d" / "x.nii.gz")
    with pytest.raises(LdmError, match="two volumes named x"):
        load_dataset(tmp_path / "d")


@pytest.mark.parametrize(
    "values",
    [
        np.array([[0, 2], [2, 7]], dtype=np.uint8),
        np.asfortranarray(np.array([[[-3, 0], [5, 5]], [[9, -3], [0, 1]]], dtype=np.int16)),
        np.array([True, False, True]),
        np.array([4_000_000_000, 4_000_000_002], dtype=np.uint32),
        np.array([0, 2**31 - 1], dtype=np.int32),
        np.array([], dtype=np.uint8),
        np.array([3.0, 1.0, 3.0]),
    ],
)
def test_label_values_as_numpy_unique(values):
    from ldmtool.io._util import label_values

    assert label_values(values) == np.unique(values).tolist()
