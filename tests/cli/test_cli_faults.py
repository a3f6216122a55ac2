"""Bad input and faults, through the CLI: each case exits non-zero with exactly one clear error line,
no traceback, and leaves every file written before it bit for bit as it was.

The corpus is generated here: damaged and unreadable DICOM slices, a NIfTI header declaring far
more voxels than its file holds, bad YAML, tampered checkpoints, output folders made unwritable or
full (simulated: the tests run as root), and an existing data set as `--out`.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import json
import os
import shutil
import struct
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from ldmtool.cli.main import main
from ldmtool.io import Volume, read_volume, write_nifti
from ldmtool.io.dicom_write import write_dicom_series

TINY = ("--config", Path(__file__).resolve().parents[2] / "examples" / "tiny.yaml")


def _must(*args) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        assert main(["--quiet", *[str(a) for a in args]]) == 0, args


def _hashes(*roots: Path) -> dict[str, str]:
    """sha256 of every file under the roots (a file root: itself)."""
    out = {}
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for p in files:
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _refused(r, *contains: str) -> str:
    """Exit code non-zero, exactly one `error:` line on stderr, no traceback; returns the line."""
    assert r.code != 0, r.both
    lines = r.error_lines()
    assert len(lines) == 1, r.err
    line = lines[0]
    assert line.startswith("error:") and "Traceback" not in r.both and "internal error" not in line, line
    for text in contains:
        assert text in line, line
    return line


@pytest.fixture(scope="module")
def seg_model(trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("faults") / "SEG"
    _must("train-seg", trained.data, "--out", out, *TINY, "--arch", "unet", "--epochs", 1)
    return out


@pytest.fixture
def series(trained, tmp_path) -> Path:
    """A DICOM series (16 slices) of a phantom."""
    path = tmp_path / "series"
    write_dicom_series(read_volume(trained.data / "imagesTr" / "phantom_000_0000.nii.gz"), path, modality="MR")
    return path


def _slices(folder: Path) -> list[Path]:
    return sorted(
        (p for p in folder.iterdir() if p.is_file()),
        key=lambda p: int(pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber),
    )


# ---------------------------------------------------------------- damaged inputs


@pytest.mark.parametrize("damage", ["truncated last slice", "garbage first slice"])
def test_damaged_dicom_slice_is_named(trained, seg_model, series, cli, tmp_path, damage):
    files = _slices(series)
    victim = files[-1] if damage.startswith("truncated") else files[0]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2] if damage.startswith("truncated") else b"\0" * 128 + b"DICM" + b"junk")
    before = _hashes(series, seg_model)
    out = tmp_path / "out"
    _refused(cli("segment", series, "--model", seg_model, "--out", out), victim.name)
    assert not out.exists()  # a refused command leaves no empty --out behind
    assert _hashes(series, seg_model) == before


def test_zip_bomb_header_is_refused_before_allocation(seg_model, cli, tmp_path):
    """A ~1 KB .nii.gz whose header declares 1024 × 1024 × 512 float32 voxels (2 GiB)."""
    header = nib.Nifti1Header()
    header.set_data_shape((1024, 1024, 512))
    header.set_data_dtype(np.float32)
    bomb = tmp_path / "bomb.nii.gz"
    raw = header.binaryblock + b"\0" * 4 + b"\0" * 1000
    bomb.write_bytes(gzip.compress(raw))
    assert bomb.stat().st_size < 2048
    out = tmp_path / "out"
    _refused(cli("segment", bomb, "--model", seg_model, "--out", out), "bomb.nii.gz")
    assert not out.exists()


# ---------------------------------------------------------------- bad YAML


@pytest.mark.parametrize(
    "text, contains",
    [
        ("autoencodr:\n  channels: [8, 16]\n", "autoencodr"),
        ("ae_train:\n  epochs: 2.7\n", "epochs"),
        ("ae_train:\n  epochs: true\n", "epochs"),
        ("ae_train: [1, 2\n", "yaml"),
    ],
)
def test_bad_yaml(trained, cli, tmp_path, text, contains):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    out = tmp_path / "AE"
    line = _refused(cli("train-ae", trained.data, "--out", out, "--config", config))
    assert contains in line.lower() or "bad.yaml" in line, line
    assert not out.exists()


# ---------------------------------------------------------------- tampered checkpoints


def _rewrite_meta(src: Path, dst: Path, meta_text: str) -> Path:
    """Copy a safetensors file with its `ldmtool` metadata replaced by `meta_text`."""
    data = src.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    header["__metadata__"]["ldmtool"] = meta_text
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    dst.write_bytes(struct.pack("<Q", len(blob)) + blob + data[8 + n :])
    return dst


def _edit_meta(src: Path, dst: Path, **changes) -> Path:
    """Copy a checkpoint with some fields of its config changed."""
    data = src.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    config = json.loads(json.loads(data[8 : 8 + n])["__metadata__"]["ldmtool"])
    return _rewrite_meta(src, dst, json.dumps({**config, **changes}, sort_keys=True))


@pytest.mark.parametrize(
    "meta, contains",
    [
        ('{"kind": "autoencoder", ', "not valid JSON"),
        ("[1, 2, 3]", "not a mapping"),
        ('{"kind": "autoencoder", "model": 5}', "model"),
        ("__absurd_range__", "intensity_range"),
    ],
)
def test_tampered_autoencoder_checkpoint(trained, cli, tmp_path, meta, contains):
    src, bad = trained.ae / "model.safetensors", tmp_path / "ae.safetensors"
    if meta == "__absurd_range__":
        _edit_meta(src, bad, intensity_range=[-1e308, 1e308])
    else:
        _rewrite_meta(src, bad, meta)
    before = _hashes(bad, trained.ldm)
    out = tmp_path / "S"
    _refused(cli("sample", "--ae", bad, "--ldm", trained.ldm, "--out", out, "--n", 1, "--steps", 2), contains)
    assert not out.exists()
    assert _hashes(bad, trained.ldm) == before


def test_tampered_modality_is_refused(trained, cli, tmp_path):
    bad = _edit_meta(trained.ae / "model.safetensors", tmp_path / "ae.safetensors", modality="XR")
    ldm = _edit_meta(trained.ldm / "model.safetensors", tmp_path / "ldm.safetensors", autoencoder_sha256=_sha(bad))
    out = tmp_path / "S"
    args = ("sample", "--ae", bad, "--ldm", ldm, "--out", out, "--n", 1, "--steps", 2, "--format", "dicom")
    _refused(cli(*args), "modality")


# ---------------------------------------------------------------- unusable outputs


def _deny(monkeypatch, code: int) -> None:
    """Make every write-test file creation fail with `code` (root ignores real permissions)."""
    real = os.open

    def fake(path, flags, *args, **kwargs):
        if flags & os.O_CREAT and ".tmp-" in os.fspath(path):
            raise OSError(code, os.strerror(code), os.fspath(path))
        return real(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake)


@pytest.mark.parametrize("code, contains", [(errno.EACCES, "permission denied"), (errno.EROFS, "read-only")])
def test_unwritable_out_is_refused_before_any_work(trained, cli, tmp_path, monkeypatch, code, contains):
    from ldmtool.pipelines.latent_diffusion import LatentDiffusionPipeline

    def no_work(*a, **k):
        raise AssertionError("work started before the output folder was checked")

    monkeypatch.setattr(LatentDiffusionPipeline, "from_pretrained", no_work)
    _deny(monkeypatch, code)
    image = trained.data / "imagesTr" / "phantom_000_0000.nii.gz"
    commands = {
        "impute": ("impute", image, "--ae", trained.ae, "--ldm", trained.ldm, "--missing-slices", "3"),
        "sample": ("sample", "--ae", trained.ae, "--ldm", trained.ldm, "--n", 1),
        "train-ae": ("train-ae", trained.data, *TINY),
        "train-ldm": ("train-ldm", trained.data, "--ae", trained.ae, *TINY),
        "demo-data": ("demo-data",),
    }
    for name, args in commands.items():
        out = tmp_path / name
        full = (*args, out) if name == "demo-data" else (*args, "--out", out)
        _refused(cli(*full), contains, str(out))
        assert not out.exists(), name


def test_full_disk_while_writing_is_one_line(trained, cli, tmp_path, monkeypatch):
    """The disk fills up at the first output write of impute: one line, no output, no temp left."""
    import ldmtool.io.atomic as atomic

    real = atomic.os.replace

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device", os.fspath(dst))

    image = trained.data / "imagesTr" / "phantom_000_0000.nii.gz"
    out = tmp_path / "imp"
    monkeypatch.setattr(atomic.os, "replace", full)
    args = ("impute", image, "--ae", trained.ae, "--ldm", trained.ldm, "--missing-slices", "3", "--steps", 2)
    _refused(cli(*args, "--out", out), "no space left")
    monkeypatch.setattr(atomic.os, "replace", real)
    assert not any(out.rglob("*.nii.gz")) if out.exists() else True


def test_stale_temp_of_a_killed_impute_is_cleared(trained, cli, tmp_path):
    out = tmp_path / "imp"
    out.mkdir()
    stale = out / ".phantom_000_imputed.tmp-999-deadbeef.nii.gz"
    stale.write_bytes(b"")
    image = trained.data / "imagesTr" / "phantom_000_0000.nii.gz"
    r = cli(
        "impute", image, "--ae", trained.ae, "--ldm", trained.ldm, "--missing-slices", "3", "--steps", 2, "--out", out
    )
    assert r.code == 0, r.both
    assert not stale.exists() and not list(out.glob(".*.tmp-*"))


# ---------------------------------------------------------------- someone else's data as --out


def test_sample_into_a_data_set_is_refused(trained, cli, tmp_path):
    data = tmp_path / "real"
    shutil.copytree(trained.data, data)
    before = _hashes(data)
    args = ("sample", "--ae", trained.ae, "--ldm", trained.ldm, "--n", 1, "--steps", 2, "--out", data)
    _refused(cli(*args), "nnU-Net data set")
    _refused(cli(*args, "--overwrite"), "dataset.json")  # never replaces another data set's dataset.json
    assert _hashes(data) == before


@pytest.mark.parametrize("command", ["segment", "impute"])
def test_foreign_folder_needs_overwrite(trained, seg_model, cli, tmp_path, command):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    image = trained.data / "imagesTr" / "phantom_000_0000.nii.gz"
    if command == "segment":
        args = ("segment", image, "--model", seg_model, "--out", out)
    else:
        args = ("impute", image, "--ae", trained.ae, "--ldm", trained.ldm, "--missing-slices", "3", "--steps", 2)
        args = (*args, "--out", out)
    before = _hashes(out)
    _refused(cli(*args), "notes.txt", "--overwrite")
    assert _hashes(out) == before
    r = cli(*args, "--overwrite")
    assert r.code == 0, r.both
    assert (out / "notes.txt").read_text() == "my notes"  # --overwrite deletes nothing
    r = cli(*args)  # now its own earlier output: allowed
    assert r.code == 0, r.both


def test_segment_keeps_a_record_per_run(trained, seg_model, cli, tmp_path):
    out = tmp_path / "seg"
    image = trained.data / "imagesTr" / "phantom_000_0000.nii.gz"
    for steps in (1, 2):
        r = cli("segment", image, "--model", seg_model, "--out", out, "--steps", steps)
        assert r.code == 0, r.both
    runs = sorted((out / "runs").glob("segment-*.json"))
    assert len(runs) == 2
    assert json.loads((out / "segment.json").read_text()) == json.loads(runs[-1].read_text())


# ---------------------------------------------------------------- restart, dtype, series, thin volumes


def test_restart_on_bad_data_keeps_the_finished_run(trained, cli, tmp_path):
    ae = tmp_path / "AE"
    shutil.copytree(trained.ae, ae)
    bad = tmp_path / "bad"
    shutil.copytree(trained.data, bad)
    victim = bad / "imagesTr" / "phantom_002_0000.nii.gz"
    victim.write_bytes(victim.read_bytes()[:200])
    before = _hashes(ae)
    _refused(cli("train-ae", bad, "--out", ae, *TINY, "--restart"), "phantom_002")
    assert _hashes(ae) == before and (ae / "train_state.safetensors").is_file()


def test_impute_keeps_an_integer_input_type(trained, cli, tmp_path):
    src = read_volume(trained.data / "imagesTr" / "phantom_000_0000.nii.gz")
    arr = np.asarray(src.array)
    ints = np.round((arr - arr.min()) / (np.ptp(arr) or 1) * 1000).astype(np.int16)
    image = write_nifti(Volume(ints, src.affine, {}), tmp_path / "int_0000.nii.gz")
    out = tmp_path / "imp"
    r = cli(
        "impute", image, "--ae", trained.ae, "--ldm", trained.ldm, "--missing-slices", "3,4", "--steps", 2, "--out", out
    )
    assert r.code == 0, r.both
    got = np.asanyarray(nib.load(out / "int_imputed.nii.gz").dataobj)
    assert got.dtype == np.int16
    keep = np.ones(ints.shape, bool)
    keep[:, :, 3:5] = False
    np.testing.assert_array_equal(got[keep], ints[keep])


def test_series_picks_one_of_two(trained, seg_model, cli, tmp_path):
    folder = tmp_path / "two"
    vol = read_volume(trained.data / "imagesTr" / "phantom_000_0000.nii.gz")
    write_dicom_series(vol, tmp_path / "a", modality="MR")
    write_dicom_series(vol, tmp_path / "b", modality="MR")
    folder.mkdir()
    for sub in ("a", "b"):
        for p in (tmp_path / sub).iterdir():
            shutil.copy(p, folder / f"{sub}_{p.name}")
    uid = str(pydicom.dcmread(next((tmp_path / "b").iterdir()), stop_before_pixels=True).SeriesInstanceUID)
    line = _refused(cli("segment", folder, "--model", seg_model, "--out", tmp_path / "o1"), "--series")
    assert "2 DICOM series" in line
    r = cli("segment", folder, "--model", seg_model, "--out", tmp_path / "o2", "--series", uid)
    assert r.code == 0, r.both
    assert (tmp_path / "o2" / "two_seg.nii.gz").is_file()


def test_train_ae_on_volumes_thinner_than_the_ssim_window(cli, tmp_path):
    data = tmp_path / "thin"
    _must("demo-data", data, "--n", 4, "--shape", "16,16,8")  # 8 slices < the 11-voxel window
    out = tmp_path / "AE"
    r = cli("--quiet", "train-ae", data, "--out", out, *TINY, "--epochs", 1, "--modality", "CT")
    assert r.code == 0, r.both
    history = json.loads((out / "history.json").read_text())
    assert 0.0 <= history[-1]["ssim"] <= 1.0
    assert json.loads((out / "config.json").read_text())["modality"] == "CT"


def test_sample_dicom_carries_the_training_modality(trained, cli, tmp_path):
    ae = _edit_meta(trained.ae / "model.safetensors", tmp_path / "ae.safetensors", modality="CT")
    ldm = _edit_meta(trained.ldm / "model.safetensors", tmp_path / "ldm.safetensors", autoencoder_sha256=_sha(ae))
    out = tmp_path / "S"
    r = cli("sample", "--ae", ae, "--ldm", ldm, "--out", out, "--n", 1, "--steps", 2, "--format", "dicom")
    assert r.code == 0, r.both
    image = next((out / "dicom" / "synth_00000" / "image").iterdir())
    assert pydicom.dcmread(image, stop_before_pixels=True).Modality == "CT"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
