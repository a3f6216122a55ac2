"""Damaged files of a DICOM series are refused with their name, never silently dropped."""

import shutil

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from ldmtool.errors import LdmError
from ldmtool.io import limits, read_dicom, read_volume


@pytest.fixture
def ct5(tmp_path, pydicom_files):
    """A copy of pydicom's 5-slice CT series (files without suffix), sorted by InstanceNumber."""
    folder = tmp_path / "ct5"
    shutil.copytree(pydicom_files / "dicomdirtests" / "98892001" / "CT5N", folder)
    return folder, sorted(folder.iterdir(), key=lambda f: int(pydicom.dcmread(f).InstanceNumber))


def _cut(path, keep):
    data = path.read_bytes()
    path.write_bytes(data[:keep])


@pytest.mark.parametrize("which", [0, 2, -1], ids=["first", "middle", "last"])
@pytest.mark.parametrize(
    "keep",
    [0, 60, 132, 400, 1200, -200, -1],
    ids=["empty", "in-preamble", "marker-only", "in-meta", "in-header", "in-pixels", "one-byte"],
)
def test_cut_slice_is_named(ct5, which, keep):
    folder, files = ct5
    bad = files[which]
    _cut(bad, keep)
    with pytest.raises(LdmError) as err:
        read_volume(folder)
    msg = str(err.value)
    assert str(bad) in msg and "remove or replace" in msg and "\n" not in msg
    assert "irregular" not in msg


def test_garbage_slice_is_named(ct5):
    folder, files = ct5
    files[1].write_bytes(b"\x00" * 128 + b"DICM" + b"\xff" * 300)
    with pytest.raises(LdmError, match=f"{files[1].name}.*damaged"):
        read_volume(folder)


def test_text_and_hidden_files_are_ignored(ct5):
    folder, _ = ct5
    (folder / "README.txt").write_text("notes")
    (folder / "LICENSE").write_text("text without a suffix, like the slices")
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    assert read_volume(folder).shape == (16, 16, 5)


def test_irregular_spacing_names_the_gap(pydicom_files):
    with pytest.raises(LdmError, match="irregular slice spacing.* mm between .* and .*a slice missing"):
        read_dicom(
            pydicom_files / "dicomdirtests" / "77654033", series_uid="1.3.6.1.4.1.5962.1.1.0.0.0.1196530851.28319.0.2"
        )


def _ct_slice(path, rows, cols, frames=1, pixels=True):
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = uid = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = CTImageStorage, uid, "CT"
    ds.SeriesInstanceUID = generate_uid()
    ds.Rows, ds.Columns = rows, cols
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, 0], [1, 0, 0, 0, 1, 0]
    ds.PixelData = np.zeros((rows, cols), np.int16).tobytes() if pixels else b""
    ds.save_as(path, enforce_file_format=True)


def test_memory_guard_refuses_before_reading(tmp_path, monkeypatch):
    path = tmp_path / "big.dcm"
    _ct_slice(path, 4096, 4096, frames=2000)
    with pytest.raises(LdmError, match=r"4096x4096x2000 voxels .* above the limit of .*LDMTOOL_MAX_VOXELS"):
        read_volume(path)
    monkeypatch.setattr(limits, "MAX_VOXELS", 10)
    _ct_slice(tmp_path / "small.dcm", 4, 4)
    with pytest.raises(LdmError, match="4x4x1 voxels"):
        read_volume(tmp_path / "small.dcm", allow_single_slice=True)


def test_header_larger_than_file(tmp_path, monkeypatch):
    monkeypatch.setenv("LDMTOOL_MAX_VOXELS", str(10**12))
    path = tmp_path / "short.dcm"
    _ct_slice(path, 64, 64, frames=3)  # declares 3 frames, holds one
    with pytest.raises(LdmError, match=r"short.dcm is cut short: its header declares 64x64x3 pixels"):
        read_volume(path)


def test_bad_limit_setting(tmp_path, monkeypatch):
    _ct_slice(tmp_path / "a.dcm", 4, 4)
    monkeypatch.setenv("LDMTOOL_MAX_VOXELS", "lots")
    with pytest.raises(LdmError, match="LDMTOOL_MAX_VOXELS='lots' is not a number"):
        read_volume(tmp_path / "a.dcm", allow_single_slice=True)
