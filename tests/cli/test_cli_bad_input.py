"""Bad input: one `error:` line, a non-zero exit code, no traceback, nothing half-written."""

import json
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from ldmtool.data.phantoms import write_demo_dataset
from ldmtool.io import Volume, write_nifti

TINY = ("--config", Path(__file__).resolve().parents[2] / "examples" / "tiny.yaml")
AFFINE = np.diag([2.0, 2.0, 3.0, 1.0])


def _nifti(path, array, affine=AFFINE):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def _missing(tmp):
    return tmp / "no_such_folder"


def _text_as_nifti(tmp):
    p = tmp / "x.nii.gz"
    p.write_text("this is not a NIfTI file\n")
    return p


def _truncated_case(tmp):
    root = write_demo_dataset(tmp / "nnunet", n_cases=3, shape=(16, 16, 8))
    victim = root / "imagesTr" / "phantom_001_0000.nii.gz"
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    return root


def _two_d(tmp):
    return _nifti(tmp / "flat.nii.gz", np.zeros((16, 16), np.float32))


def _nan_voxels(tmp):
    """Every voxel NaN (a few NaN voxels are missing data, which training accepts)."""
    a = np.full((16, 16, 8), np.nan, np.float32)
    return _nifti(tmp / "nan.nii.gz", a)


def _inf_voxels(tmp):
    a = np.random.default_rng(0).random((16, 16, 8)).astype(np.float32)
    a[3, 4, 5] = np.inf
    return _nifti(tmp / "inf.nii.gz", a)


def _label_shape(tmp):
    root = tmp / "mismatch"
    write_nifti(
        Volume(np.random.default_rng(0).random((16, 16, 8)).astype(np.float32), AFFINE, {}),
        root / "imagesTr" / "case_000_0000.nii.gz",
    )
    write_nifti(Volume(np.zeros((16, 16, 4), np.uint8), AFFINE, {}), root / "labelsTr" / "case_000.nii.gz")
    (root / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {"0": "MR"},
                "labels": {"background": 0, "lesion": 1},
                "numTraining": 1,
                "file_ending": ".nii.gz",
            }
        )
    )
    return root


def _empty(tmp):
    (tmp / "empty").mkdir()
    return tmp / "empty"


def _two_dicom_series(tmp, files):
    root = tmp / "dicom"
    root.mkdir()
    for series in ("CT5N", "CT2N"):
        for f in (files / "dicomdirtests" / "98892001" / series).iterdir():
            shutil.copy(f, root / f"{series}_{f.name}")
    return root


BAD_DATA = {
    "missing folder": (_missing, "does not exist"),
    "text file named .nii.gz": (_text_as_nifti, ""),
    "truncated case": (_truncated_case, "phantom_001"),
    "2D NIfTI": (_two_d, "2D"),
    "all voxels NaN": (_nan_voxels, "every voxel of the image is missing"),
    "infinite voxels": (_inf_voxels, "infinite"),
    "label shape": (_label_shape, "shape"),
    "empty folder": (_empty, "no volumes"),
    "two DICOM series": (_two_dicom_series, "series"),
}


def _check_one_line_error(r, code=1, contains=""):
    assert r.code == code, r.both
    lines = r.error_lines()
    assert len(lines) == 1, r.err
    assert "error" in lines[0].lower()
    assert contains in lines[0]
    assert "internal error" not in lines[0]
    assert "Traceback" not in r.both


@pytest.mark.parametrize("case", sorted(BAD_DATA))
def test_train_ae_bad_data(cli, tmp_path, dicom_test_files, case):
    make, contains = BAD_DATA[case]
    src = tmp_path / "src"
    src.mkdir()
    data = make(src, dicom_test_files) if make is _two_dicom_series else make(src)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    r = cli("train-ae", data, "--out", out, *TINY)
    _check_one_line_error(r, contains=contains)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]  # nothing half-written


def test_train_ae_new_out_folder_not_created(cli, tmp_path):
    r = cli("train-ae", _empty(tmp_path), "--out", tmp_path / "fresh", *TINY)
    _check_one_line_error(r, contains="no volumes")
    assert not (tmp_path / "fresh").exists()


def test_train_ldm_bad_data(cli, tmp_path, trained):
    out = tmp_path / "out"
    r = cli("train-ldm", _nan_voxels(tmp_path), "--ae", trained.ae, "--out", out, *TINY)
    _check_one_line_error(r, contains="missing")
    assert not out.exists()


def test_train_ldm_with_ldm_as_autoencoder(cli, tmp_path, trained):
    out = tmp_path / "out"
    r = cli("train-ldm", trained.data, "--ae", trained.ldm, "--out", out, *TINY)
    _check_one_line_error(r, contains="expected an autoencoder checkpoint")
    assert not out.exists()


def test_sample_missing_checkpoint(cli, tmp_path, trained):
    out = tmp_path / "S"
    r = cli("sample", "--ae", tmp_path / "nope", "--ldm", trained.ldm, "--out", out, "--n", 1, "--steps", 2)
    _check_one_line_error(r, contains="does not exist")
    assert not out.exists()
    empty = _empty(tmp_path)
    r = cli("sample", "--ae", trained.ae, "--ldm", empty, "--out", out, "--n", 1, "--steps", 2)
    _check_one_line_error(r, contains="no checkpoint")
    assert not out.exists()


def test_sample_autoencoder_as_ldm(cli, tmp_path, trained):
    out = tmp_path / "S"
    r = cli("sample", "--ae", trained.ae, "--ldm", trained.ae / "model.safetensors", "--out", out, "--n", 1)
    _check_one_line_error(r, contains="expected a latent-diffusion checkpoint")
    assert not out.exists()


def test_sample_corrupt_checkpoint(cli, tmp_path, trained):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(np.random.default_rng(1).bytes(2048))
    out = tmp_path / "S"
    r = cli("sample", "--ae", trained.ae, "--ldm", bad, "--out", out, "--n", 1)
    _check_one_line_error(r, contains="not a readable safetensors checkpoint")
    assert not out.exists()


def test_sample_mismatched_autoencoder(cli, tmp_path, trained):
    from ldmtool.models.checkpoint import load_checkpoint, save_checkpoint

    tensors, config = load_checkpoint(trained.ae)
    key = next(iter(tensors))
    tensors[key] = tensors[key] + 0.01  # another autoencoder of the same architecture
    other = save_checkpoint(tmp_path / "AE2" / "model.safetensors", tensors, config)
    out = tmp_path / "S"
    r = cli("sample", "--ae", other, "--ldm", trained.ldm, "--out", out, "--n", 1)
    _check_one_line_error(r, contains="different autoencoder")
    assert not out.exists()


@pytest.mark.parametrize(
    "args,contains",
    [
        (("--steps", "0"), "--steps"),
        (("--sampler", "euler"), "--sampler"),
        (("--format", "png"), "--format"),
        (("--n", "0"), "--n"),
        (("--batch-size", "0"), "--batch-size"),
    ],
)
def test_sample_bad_options(cli, tmp_path, trained, args, contains):
    out = tmp_path / "S"
    r = cli("sample", "--ae", trained.ae, "--ldm", trained.ldm, "--out", out, *args)
    _check_one_line_error(r, contains=contains)
    assert not (out / "provenance").exists() or not any((out / "provenance").iterdir())


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("command", ["sample", "train-ae"])
def test_device_cuda_without_gpu(cli, tmp_path, trained, command):
    out = tmp_path / "out"
    if command == "sample":
        r = cli("--device", "cuda", "sample", "--ae", trained.ae, "--ldm", trained.ldm, "--out", out, "--n", 1)
    else:
        r = cli("--device", "cuda", "train-ae", trained.data, "--out", out, *TINY)
    _check_one_line_error(r, contains="CUDA")
    assert not out.exists()


def test_bad_device_name(cli, tmp_path, trained):
    r = cli("--device", "tpu", "sample", "--ae", trained.ae, "--ldm", trained.ldm, "--out", tmp_path / "o")
    _check_one_line_error(r, contains="--device")


def test_usage_errors(cli, tmp_path):
    r = cli("train-ae", tmp_path, "--out", tmp_path / "o", "--epochs", "many")
    assert r.code == 2 and "Traceback" not in r.both and "error" in r.both.lower()
    r = cli("sample", "--ae", tmp_path)  # --ldm and --out missing
    assert r.code == 2 and "Traceback" not in r.both and "missing" in r.both.lower()
    assert not (tmp_path / "o").exists()


def test_bad_config_file(cli, tmp_path):
    data = write_demo_dataset(tmp_path / "d", n_cases=2, shape=(16, 16, 8))
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("autoencoder:\n  channels: [8, 16]\n  norm_num_groups: 4\n  colour: blue\n")
    r = cli("train-ae", data, "--out", tmp_path / "o", "--config", cfg)
    _check_one_line_error(r, contains="colour")
    assert not (tmp_path / "o").exists()


def test_demo_data_refuses_foreign_folder(cli, tmp_path):
    (tmp_path / "mine.txt").write_text("keep")
    r = cli("demo-data", tmp_path, "--n", 1, "--shape", "16,16,8")
    _check_one_line_error(r, contains="not empty")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]
    r = cli("demo-data", tmp_path / "d", "--shape", "16,16")
    _check_one_line_error(r, contains="--shape")


def _options(command):
    import typer

    from ldmtool.cli.main import app

    cmd = typer.main.get_command(app).commands[command]
    return {opt for p in cmd.params for opt in p.opts}


def test_error_suggests_only_existing_flags(cli, tmp_path, dicom_test_files):
    data = _two_dicom_series(tmp_path, dicom_test_files)
    r = cli("train-ae", data, "--out", tmp_path / "o", *TINY)
    _check_one_line_error(r, contains="series")
    suggested = set(re.findall(r"(--[a-z][a-z-]+)", r.err))
    assert suggested <= _options("train-ae"), suggested - _options("train-ae")


@pytest.mark.parametrize(
    "command,args,contains",
    [
        ("train-ldm", ("--steps", "0"), "steps must be ≥ 1"),  # not silently 200 steps
        (
            "train-ae",
            ("--max-minutes", "0"),
            "max_minutes must be > 0",
        ),  # not a results table naming a missing checkpoint
        ("train-ae", ("--max-minutes", "-1"), "max_minutes must be > 0"),
        ("train-seg", ("--lr", "0"), "lr must be > 0"),
        ("train-seg", ("--batch-size", "0"), "batch_size must be ≥ 1"),
        ("train-ae", ("--val-fraction", "1"), "val_fraction must be in [0, 1)"),
    ],
)
def test_train_settings_out_of_range(cli, tmp_path, trained, command, args, contains):
    extra = ("--ae", trained.ae) if command == "train-ldm" else ()
    r = cli(command, trained.data, *extra, "--out", tmp_path / "o", *TINY, *args)
    _check_one_line_error(r, contains=contains)
    assert not (tmp_path / "o").exists()


def test_train_config_field_of_another_trainer_is_an_error(cli, tmp_path, trained):
    cfg = tmp_path / "ae.yaml"
    cfg.write_text("ae_train:\n  epochs: 1\n  ema_decay: 0.99\n")  # the autoencoder keeps no EMA
    r = cli("train-ae", trained.data, "--out", tmp_path / "o", "--config", cfg)
    _check_one_line_error(r, contains="ema_decay")
