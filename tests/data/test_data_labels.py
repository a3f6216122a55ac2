"""Label names inferred from label maps, --labels merging/renaming, volumes of different shapes,
per-case intensity normalisation over very different ranges: tiny synthetic folders in tmp_path."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from rich.console import Console

from ldmtool.data.labels import infer_label_names, parse_labels
from ldmtool.data.prepared import choose_shape, prepare_dataset
from ldmtool.data.preprocess import PreprocessConfig, preprocess_case
from ldmtool.errors import LdmError
from ldmtool.io.volume import Volume


def _folder(root, shapes, values=(0, 4, 11, 200), json_labels=None, dtypes=None):
    """An nnU-Net folder of cases with the given shapes; label maps hold `values`."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    for i, shape in enumerate(shapes):
        dtype = (dtypes or [np.float32] * len(shapes))[i]
        image = (rng.random(shape) * (255 if dtype == np.uint8 else 1e6)).astype(dtype)
        label = np.asarray(values, dtype=np.uint8)[rng.integers(0, len(values), shape)]
        nib.save(nib.Nifti1Image(image, np.eye(4)), root / "imagesTr" / f"c{i}_0000.nii.gz")
        nib.save(nib.Nifti1Image(label, np.eye(4)), root / "labelsTr" / f"c{i}.nii.gz")
    if json_labels is not None:
        (root / "dataset.json").write_text(json.dumps({"labels": json_labels, "channel_names": {"0": "MR"}}))
    return root


def _console():
    return Console(record=True, width=400)


def test_parse_label_specs(tmp_path):
    m = parse_labels("brain=1-255")
    assert m.label_names == {"background": 0, "brain": 1}
    assert m.apply(np.array([0, 1, 7, 255, 256])).tolist() == [0, 1, 1, 1, 0]
    m = parse_labels("anterior=1,posterior=2")
    assert m.label_names == {"background": 0, "anterior": 1, "posterior": 2}
    m = parse_labels("csf=4,11,46; gm=100-102,7")
    assert m.to_dict() == {"csf": [[4, 4], [11, 11], [46, 46]], "gm": [[100, 102], [7, 7]]}
    assert m.apply(np.array([4, 7, 46, 101, 3])).tolist() == [1, 2, 1, 2, 0]
    assert m.describe() == "csf=4,11,46; gm=100-102,7"
    (tmp_path / "m.json").write_text(json.dumps({"wm": ["1-3", 9], "gm": [[4, 5]]}))
    assert parse_labels(str(tmp_path / "m.json")).label_names == {"background": 0, "wm": 1, "gm": 2}
    (tmp_path / "m.yaml").write_text("wm: [1, 2]\n")
    assert parse_labels(str(tmp_path / "m.yaml")).to_dict() == {"wm": [[1, 1], [2, 2]]}
    assert parse_labels(parse_labels("a=1").to_dict()).to_dict() == {"a": [[1, 1]]}  # stored form round trip


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("1-255", "must start with a class name"),
        ("a=1-5,b=5", "value 5 is listed for both 'a' and 'b'"),
        ("a=0-5", "0 is the background"),
        ("a=x", "not a value or a range"),
        ("a=5-1", "must run upwards"),
        ("a=1;a=2", "named twice"),
        ("a=", "lists no label values"),
        ("missing.json", "does not exist"),
    ],
)
def test_bad_label_specs_are_one_line(spec, match):
    with pytest.raises(LdmError, match=match) as err:
        parse_labels(spec)
    assert "\n" not in str(err.value)


def test_infer_label_names():
    assert infer_label_names([0, 11, 4, 4]) == {"background": 0, "label_4": 4, "label_11": 11}


def test_labels_inferred_without_dataset_json(tmp_path):
    root = _folder(tmp_path / "d", [(6, 6, 4)] * 3)
    console = _console()
    data = prepare_dataset(root, PreprocessConfig(), console=console)
    assert data.label_names == {"background": 0, "label_4": 4, "label_11": 11, "label_200": 200}
    assert data.num_classes == 201
    text = console.export_text()
    assert "no dataset.json labels: 3 label value(s)" in text and "--labels" in text


def test_label_mapping_applied_and_stored(tmp_path):
    root = _folder(tmp_path / "d", [(6, 6, 4)] * 2, json_labels={"background": 0, "a": 4, "b": 11, "c": 200})
    cfg = PreprocessConfig(labels=parse_labels("brain=1-255").to_dict())
    console = _console()
    data = prepare_dataset(root, cfg, console=console)
    assert data.label_names == {"background": 0, "brain": 1} and data.num_classes == 2
    assert set(np.unique(data.labels.numpy()).tolist()) == {0, 1}
    assert "warning" not in console.export_text()
    stored = PreprocessConfig.from_dict(data.preprocess.to_dict())
    assert stored.labels == {"brain": [[1, 255]]}
    # renaming keeps the voxels, merging the rest into background
    data = prepare_dataset(root, PreprocessConfig(labels=parse_labels("x=11;y=200").to_dict()))
    raw = np.stack([np.moveaxis(np.asarray(nib.load(c).dataobj), 2, 0) for c in sorted((root / "labelsTr").iterdir())])
    assert np.array_equal(data.labels.numpy(), np.select([raw == 11, raw == 200], [1, 2], 0))


def test_mapping_that_matches_nothing(tmp_path):
    """A class whose values occur in no label map is a warning; a mapping that matches no voxel at
    all (everything background) stops with one line naming the values the maps do hold."""
    root = _folder(tmp_path / "d", [(6, 6, 4)] * 2)  # values 0, 4, 11, 200
    console = _console()
    data = prepare_dataset(
        root, PreprocessConfig(labels=parse_labels("csf=4;tumour=300-400").to_dict()), console=console
    )
    assert data.label_names == {"background": 0, "csf": 1, "tumour": 2}
    out = " ".join(console.export_text().split())
    assert "warning: --labels: no voxel in any of the 2 label maps belongs to tumour=300-400" in out
    assert "csf" not in out
    with pytest.raises(LdmError) as err:
        prepare_dataset(root, PreprocessConfig(labels=parse_labels("brain=300-400").to_dict()))
    msg = str(err.value)
    assert "\n" not in msg and "brain=300-400 matches no voxel in any of the 2 label maps" in msg
    assert msg.endswith("c0's label map holds 3 value(s) besides 0: 4, 11, 200")


def test_default_preprocess_dict_unchanged():
    assert "labels" not in PreprocessConfig().to_dict()


def test_different_shapes_same_policy_is_one_summarised_line(tmp_path):
    shapes = [(6 + i % 5, 6 + i % 3, 4 + i % 2) for i in range(12)]
    root = _folder(tmp_path / "d", shapes, json_labels={"background": 0, "a": 4, "b": 11, "c": 200})
    with pytest.raises(LdmError) as err:
        prepare_dataset(root, PreprocessConfig())
    msg = str(err.value)
    assert "\n" not in msg and "12 volumes in" in msg and "different shapes, e.g." in msg and len(msg) < 300


def test_different_shapes_auto_and_pad(tmp_path):
    shapes = [(6, 7, 4), (5, 9, 3), (7, 6, 5)]
    root = _folder(tmp_path / "d", shapes, json_labels={"background": 0, "a": 4, "b": 11, "c": 200})
    console = _console()
    data = prepare_dataset(root, PreprocessConfig(), console=console, shapes="auto", multiple=(4, 4, 2))
    assert choose_shape(shapes, (4, 4, 2)) == (8, 12, 6)
    assert data.volume_shape == (8, 12, 6) and data.preprocess.shape == (8, 12, 6) and data.shapes is None
    assert "training shape (8, 12, 6) chosen from the data" in console.export_text()
    # every labelled voxel is kept (padding only)
    raw = [np.asarray(nib.load(c).dataobj) for c in sorted((root / "labelsTr").iterdir())]
    assert [int((data.labels[i] > 0).sum()) for i in range(3)] == [int((r > 0).sum()) for r in raw]

    data = prepare_dataset(root, PreprocessConfig(), shapes="pad")
    assert data.shapes == [(4, 6, 7), (3, 5, 9), (5, 7, 6)]  # (D, H, W) = (K, I, J)
    assert tuple(data.images.shape) == (3, 5, 7, 9)
    assert data.case_size(1) == (3, 5, 9) and float(data.images[1, 3:].abs().sum()) == 0.0
    sub = data.subset([2])
    assert sub.shapes == [(5, 7, 6)]


@pytest.mark.parametrize(
    ("dtype", "scale"),
    [(np.uint8, 255), (np.float32, 1e6), (np.float64, 1e30), (np.float16, 6e4), (np.int16, -3e4), (np.float32, 1e-6)],
)
def test_per_case_normalisation_is_robust(dtype, scale):
    rng = np.random.default_rng(1)
    arr = (rng.random((8, 8, 6)) * scale).astype(dtype)
    pc = preprocess_case(Volume(arr, np.eye(4), {}), None, PreprocessConfig())
    out = pc.image.array
    assert out.dtype == np.float32 and np.isfinite(out).all()
    assert 0.0 <= out.min() and out.max() <= 1.0 and out.max() - out.min() > 0.9
    lo, hi = pc.intensity_range
    assert np.isfinite([lo, hi]).all() and hi > lo


def test_normalisation_per_case_uint8_and_huge_float_cases_alike(tmp_path):
    """One case uint8 up to 255, one float up to ~1e6 (as MSD hippocampus): both map to [0, 1]."""
    root = _folder(
        tmp_path / "d",
        [(6, 6, 4)] * 2,
        json_labels={"background": 0, "a": 4, "b": 11, "c": 200},
        dtypes=[np.uint8, np.float32],
    )
    data = prepare_dataset(root, PreprocessConfig())
    for i in range(2):
        img = data.images[i]
        assert float(img.min()) == 0.0 and float(img.max()) == 1.0
    assert data.intensity_ranges[0][1] <= 255 and data.intensity_ranges[1][1] > 1e5


def test_nan_voxels_do_not_set_the_range():
    arr = np.random.default_rng(2).random((8, 8, 6)).astype(np.float32) * 1e6
    missing = np.zeros(arr.shape, bool)
    missing[0] = True
    arr[missing] = np.nan
    pc = preprocess_case(Volume(arr, np.eye(4), {}), None, PreprocessConfig(), missing)
    assert np.isfinite(pc.image.array).all() and np.isfinite(pc.intensity_range).all()


def test_label_values_over_255_need_a_mapping():
    lab = np.zeros((4, 4, 4), np.int32)
    lab[0] = 300
    image = Volume(np.random.default_rng(0).random((4, 4, 4)).astype(np.float32), np.eye(4), {})
    with pytest.raises(LdmError, match="--labels"):
        preprocess_case(image, Volume(lab, np.eye(4), {}), PreprocessConfig())
    pc = preprocess_case(image, Volume(lab, np.eye(4), {}), PreprocessConfig(labels={"big": ["256-400"]}))
    assert pc.label.array.max() == 1
