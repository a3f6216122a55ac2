"""`ldmtool train-seg` and `ldmtool segment` end to end on the tiny config: train LDSeg (and the UNet
baseline), segment a NIfTI in another orientation and a DICOM series, and check every output has
the input's exact geometry; resume; bad input."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest

from ldmtool.cli.main import main
from ldmtool.io import read_volume
from ldmtool.io.dicom_write import write_dicom_series

TINY_YAML = Path(__file__).resolve().parents[2] / "examples" / "tiny.yaml"


def _must(*args) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        assert main(["--quiet", *[str(a) for a in args]]) == 0, args


@pytest.fixture(scope="module")
def seg_model(trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("seg") / "LDSEG"
    _must("train-seg", trained.data, "--out", out, "--config", TINY_YAML)
    return out


def test_train_seg_writes_a_checkpoint_with_per_epoch_validation_dice(seg_model):
    history = json.loads((seg_model / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2]
    for row in history:
        assert 0.0 <= row["dice_head"] <= 1.0 and 0.0 <= row["dice_lesion"] <= 1.0
    config = json.loads((seg_model / "config.json").read_text())
    assert config["kind"] == "segmenter" and config["model"]["arch"] == "ldseg"
    assert config["label_names"] == {"background": 0, "head": 1, "lesion": 2}
    assert (seg_model / "model.safetensors").is_file()


def test_rerun_of_a_finished_run_says_so(trained, seg_model, cli):
    r = cli("train-seg", trained.data, "--out", seg_model, "--config", TINY_YAML)
    assert r.code == 0 and "already holds a finished run" in r.out


def test_longer_rerun_resumes_where_the_first_stopped(trained, cli, tmp_path):
    out = tmp_path / "R"
    r = cli("--quiet", "train-seg", trained.data, "--out", out, "--config", TINY_YAML, "--arch", "unet", "--epochs", 1)
    assert r.code == 0, r.both
    first = json.loads((out / "state.json").read_text())["step"]
    r = cli("train-seg", trained.data, "--out", out, "--config", TINY_YAML, "--arch", "unet", "--epochs", 2)
    assert r.code == 0, r.both
    assert "resumed from step" in r.out
    history = json.loads((out / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2] and history[1]["step"] == 2 * first
    r = cli(
        "train-seg", trained.data, "--out", out, "--config", TINY_YAML, "--arch", "unet", "--epochs", 2, "--lr", 0.1
    )
    assert r.code == 1 and "different settings" in r.err


def test_segment_nifti_in_another_orientation_and_dicom_keeps_their_geometry(trained, seg_model, cli, tmp_path):
    src = nib.load(trained.data / "imagesTr" / "phantom_000_0000.nii.gz")
    # LPS-like axes with the first two swapped: segment must map its result back into them
    odd = src.as_reoriented(np.array([[1, -1], [0, -1], [2, 1]]))
    assert nib.aff2axcodes(odd.affine) != ("R", "A", "S")
    odd_path = tmp_path / "odd.nii.gz"
    nib.save(odd, odd_path)
    dicom_dir = tmp_path / "series"
    write_dicom_series(read_volume(trained.data / "imagesTr" / "phantom_001_0000.nii.gz"), dicom_dir, modality="MR")
    out = tmp_path / "seg"
    r = cli("segment", odd_path, dicom_dir, "--model", seg_model, "--out", out, "--samples", 2, "--steps", 2)
    assert r.code == 0, r.both
    for name, source in (("odd", read_volume(odd_path)), ("series", read_volume(dicom_dir))):
        seg = nib.load(out / f"{name}_seg.nii.gz")
        assert seg.shape == source.shape
        np.testing.assert_allclose(seg.affine, source.affine, atol=1e-4)
        assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2}
        prob = nib.load(out / f"{name}_prob.nii.gz")
        assert prob.shape == (*source.shape, 3)
        np.testing.assert_allclose(np.asarray(prob.dataobj).sum(-1), 1.0, atol=1e-4)
        unc = nib.load(out / f"{name}_uncertainty.nii.gz")
        assert unc.shape == source.shape and np.asarray(unc.dataobj).min() >= 0
    # the label map of the reoriented input is the segmentation of the original (same seed, same
    # settings: the same z_T draws on the same RAS array), only in the input's axes
    r = cli(
        "segment",
        trained.data / "imagesTr" / "phantom_000_0000.nii.gz",
        "--model",
        seg_model,
        "--out",
        tmp_path / "orig",
        "--samples",
        2,
        "--steps",
        2,
    )
    assert r.code == 0, r.both
    orig = nib.load(tmp_path / "orig" / "phantom_000_seg.nii.gz")
    back = nib.load(out / "odd_seg.nii.gz").as_reoriented(nib.orientations.io_orientation(odd.affine))
    np.testing.assert_allclose(back.affine, orig.affine, atol=1e-4)
    agree = (np.asarray(back.dataobj) == np.asarray(orig.dataobj)).mean()
    assert agree > 0.999, agree
    report = json.loads((out / "segment.json").read_text())
    assert [c["label"] for c in report["cases"]] == ["odd_seg.nii.gz", "series_seg.nii.gz"]
    # the DICOM input also gets a DICOM SEG on the source instances, equal to the NIfTI label map
    assert report["cases"][1]["dicom_seg"] == "series_seg.dcm" and "dicom_seg" not in report["cases"][0]
    assert not (out / "odd_seg.dcm").exists()
    label = np.asarray(nib.load(out / "series_seg.nii.gz").dataobj)
    seg = hd.seg.segread(out / "series_seg.dcm")
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["head", "lesion"]
    sources = read_volume(dicom_dir).meta["slice_sources"]
    for k, (file, _) in enumerate(sources):
        uid = pydicom.dcmread(file, stop_before_pixels=True).SOPInstanceUID
        pixels = seg.get_pixels_by_source_instance([uid], segment_numbers=[1, 2])[0]
        np.testing.assert_array_equal(pixels[..., 0], (label[:, :, k] == 1).T)
        np.testing.assert_array_equal(pixels[..., 1], (label[:, :, k] == 2).T)
    r = cli("segment", dicom_dir, "--model", seg_model, "--out", tmp_path / "noseg", "--no-dicom-seg")
    assert r.code == 0, r.both
    assert (tmp_path / "noseg" / "series_seg.nii.gz").is_file() and not (tmp_path / "noseg" / "series_seg.dcm").exists()
    assert (
        report["steps"] == 2 and json.loads((tmp_path / "noseg" / "segment.json").read_text())["steps"] == 1
    )  # default: 1


def test_segment_a_real_ct_series(seg_model, cli, dicom_test_files, tmp_path):
    # pydicom's five-slice CT (16×16, HU): a 2D model segments it in its own grid; NIfTI + SEG
    folder = dicom_test_files / "dicomdirtests" / "98892001" / "CT5N"
    r = cli("segment", folder, "--model", seg_model, "--out", tmp_path / "ct")
    assert r.code == 0, r.both
    source = read_volume(folder)
    label = nib.load(tmp_path / "ct" / "CT5N_seg.nii.gz")
    assert label.shape == source.shape
    np.testing.assert_allclose(label.affine, source.affine, atol=1e-4)
    seg = hd.seg.segread(tmp_path / "ct" / "CT5N_seg.dcm")
    first = pydicom.dcmread(source.meta["slice_sources"][0][0], stop_before_pixels=True)
    assert seg.StudyInstanceUID == first.StudyInstanceUID and seg.Rows == first.Rows
    assert {ref.ReferencedSOPInstanceUID for ref in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence} == {
        pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f, _ in source.meta["slice_sources"]
    }


def test_unet_baseline_trains_and_segments_a_folder(trained, cli, tmp_path):
    model = tmp_path / "UNET"
    r = cli("--quiet", "train-seg", trained.data, "--out", model, "--config", TINY_YAML, "--arch", "unet")
    assert r.code == 0, r.both
    assert json.loads((model / "config.json").read_text())["model"]["arch"] == "unet"
    r = cli("segment", trained.data, "--model", model, "--out", tmp_path / "seg")
    assert r.code == 0, r.both
    assert len(list((tmp_path / "seg").glob("*_seg.nii.gz"))) == 6
    # all six volumes through the network in one batch: the same label map for each, in its own geometry
    r = cli("segment", trained.data, "--model", model, "--out", tmp_path / "one", "--batch-size", 1000)
    assert r.code == 0, r.both
    for src in sorted((trained.data / "imagesTr").glob("*.nii.gz")):
        name = src.name.replace("_0000.nii.gz", "_seg.nii.gz")
        a, b = nib.load(tmp_path / "seg" / name), nib.load(tmp_path / "one" / name)
        assert a.shape == b.shape == nib.load(src).shape and np.allclose(b.affine, nib.load(src).affine)
        assert np.array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj)), name
    r = cli("segment", trained.data, "--model", model, "--out", tmp_path / "seg2", "--samples", 3)
    assert r.code == 1 and "needs an LDSeg model" in r.err


def _one_line_error(r, *words):
    assert r.code != 0
    lines = r.error_lines()
    assert len(lines) == 1, r.err
    assert "Traceback" not in r.both
    for w in words:
        assert w in lines[0], lines[0]


def test_bad_input(trained, seg_model, cli, tmp_path):
    # a 2D file for a 3D model
    model3 = tmp_path / "LDSEG3"
    r = cli("--quiet", "train-seg", trained.data, "--out", model3, "--config", TINY_YAML, "--dims", 3, "--epochs", 1)
    assert r.code == 0, r.both
    flat = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.random.rand(32, 32, 1).astype(np.float32), np.eye(4)), flat)
    _one_line_error(cli("segment", flat, "--model", model3, "--out", tmp_path / "o1"), "2D", "3D model")
    # image/label shape mismatch
    bad = tmp_path / "bad"
    shutil.copytree(trained.data, bad)
    lab = nib.load(bad / "labelsTr" / "phantom_002.nii.gz")
    nib.save(nib.Nifti1Image(np.asarray(lab.dataobj)[:, :, :8], lab.affine), bad / "labelsTr" / "phantom_002.nii.gz")
    _one_line_error(cli("train-seg", bad, "--out", tmp_path / "o2", "--config", TINY_YAML), "phantom_002", "shape")
    # label values that dataset.json does not list
    shutil.rmtree(bad)
    shutil.copytree(trained.data, bad)
    arr = np.asarray(lab.dataobj).copy()
    arr[0, 0, 0] = 7
    nib.save(nib.Nifti1Image(arr, lab.affine), bad / "labelsTr" / "phantom_002.nii.gz")
    _one_line_error(cli("train-seg", bad, "--out", tmp_path / "o3", "--config", TINY_YAML), "[7]")
    # missing input, NaN voxels, not a segmenter checkpoint
    _one_line_error(
        cli("segment", tmp_path / "nope.nii.gz", "--model", seg_model, "--out", tmp_path / "o4"), "does not exist"
    )
    nan = np.random.rand(32, 32, 16).astype(np.float32)
    nan[3, 3, 3] = np.nan
    nib.save(nib.Nifti1Image(nan, np.eye(4)), tmp_path / "nan.nii.gz")
    _one_line_error(cli("segment", tmp_path / "nan.nii.gz", "--model", seg_model, "--out", tmp_path / "o5"), "NaN")
    _one_line_error(cli("segment", flat, "--model", trained.ae, "--out", tmp_path / "o6"), "autoencoder", "segmenter")
    assert not (tmp_path / "o5").exists() or not list((tmp_path / "o5").glob("*.nii.gz"))


def _uneven_folder(root: Path) -> Path:
    """Labelled cases of different shapes without dataset.json; label values 0, 3, 7."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    for i, shape in enumerate([(20, 18, 6), (16, 22, 5), (18, 14, 7), (22, 20, 4)]):
        img = rng.random(shape).astype(np.float32) * (255 if i % 2 else 1e6)
        lab = np.where(img > 0.7 * img.max(), 3, 0) + np.where(img > 0.9 * img.max(), 4, 0)
        nib.save(
            nib.Nifti1Image(img.astype(np.uint8) if i % 2 else img, np.eye(4)), root / "imagesTr" / f"c{i}_0000.nii.gz"
        )
        nib.save(nib.Nifti1Image(lab.astype(np.uint8), np.eye(4)), root / "labelsTr" / f"c{i}.nii.gz")
    return root


def test_train_seg_on_shapes_that_differ_with_labels_merged(cli, tmp_path):
    data = _uneven_folder(tmp_path / "data")
    out = tmp_path / "M"
    r = cli(
        "train-seg",
        data,
        "--out",
        out,
        "--config",
        TINY_YAML,
        "--arch",
        "unet",
        "--steps",
        "2",
        "--labels",
        "bright=3,7",
    )
    assert r.code == 0, r.err
    config = json.loads((out / "config.json").read_text())
    assert config["label_names"] == {"background": 0, "bright": 1}
    assert config["preprocess"]["labels"] == {"bright": [[3, 3], [7, 7]]}
    seg = tmp_path / "S"
    big = tmp_path / "big.nii.gz"  # larger than the training patch: tiled
    nib.save(nib.Nifti1Image(np.random.default_rng(1).random((40, 35, 3)).astype(np.float32), np.eye(4)), big)
    r = cli("segment", data / "imagesTr", big, "--model", out, "--out", seg)
    assert r.code == 0, r.err
    for name, shape in [("c0", (20, 18, 6)), ("c1", (16, 22, 5)), ("big", (40, 35, 3))]:
        out_img = nib.load(seg / f"{name}_seg.nii.gz")
        assert out_img.shape == shape and set(np.unique(np.asarray(out_img.dataobj))) <= {0, 1}


def test_train_seg_infers_labels_without_dataset_json(cli, tmp_path):
    data = _uneven_folder(tmp_path / "data")
    r = cli("train-seg", data, "--out", tmp_path / "M", "--config", TINY_YAML, "--arch", "unet", "--steps", "1")
    assert r.code == 0, r.err
    assert "no dataset.json labels" in " ".join(r.out.split()) and "--labels" in r.out
    config = json.loads((tmp_path / "M" / "config.json").read_text())
    assert config["label_names"] == {"background": 0, "label_3": 3, "label_7": 7}


def test_bad_labels_flag_is_one_line(cli, tmp_path):
    data = _uneven_folder(tmp_path / "data")
    r = cli("train-seg", data, "--out", tmp_path / "M", "--config", TINY_YAML, "--labels", "3-7")
    assert r.code == 1 and "must start with a class name" in r.err and r.err.strip().count("\n") == 0
