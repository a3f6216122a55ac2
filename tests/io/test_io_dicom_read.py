"""DICOM reading with the files shipped in pydicom's test data, plus synthetic edge cases."""

import shutil

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import EnhancedMRImageStorage, ExplicitVRLittleEndian, generate_uid

from ldmtool.errors import LdmError
from ldmtool.io import read_dicom, read_volume

CT5_UID = "1.3.6.1.4.1.5962.1.1.0.0.0.1194734704.16302.0.6"  # 98892001/CT5N, 5 axial CT slices
BRAIN_UID = "1.3.6.1.4.1.5962.1.1.0.0.0.1196530851.28319.0.2"  # 77654033/CT2, 4 slices with a gap


def test_ct_small_single_slice(pydicom_files):
    path = pydicom_files / "CT_small.dcm"
    with pytest.raises(LdmError, match="is 2D"):
        read_dicom(path)
    vol = read_dicom(path, allow_single_slice=True)
    ds = pydicom.dcmread(path)
    expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert vol.shape == (ds.Columns, ds.Rows, 1)
    np.testing.assert_allclose(vol.array[:, :, 0], expected.T)
    assert vol.spacing[0] == pytest.approx(float(ds.PixelSpacing[1]))
    assert vol.spacing[1] == pytest.approx(float(ds.PixelSpacing[0]))
    # origin: LPS ImagePositionPatient converted to RAS
    ipp = np.array([float(v) for v in ds.ImagePositionPatient])
    np.testing.assert_allclose(vol.affine[:3, 3], ipp * [-1, -1, 1])
    assert vol.meta["format"] == "dicom" and vol.meta["modality"] == "CT"
    assert set(vol.meta) == {
        "format",
        "path",
        "modality",
        "series_uid",
        "series_description",
        "n_files",
        "slice_sources",
        "dtype",
        "value_dtype",
    }
    assert vol.meta["dtype"] == "int16" and vol.meta["value_dtype"] == str(vol.array.dtype)


def test_five_slice_ct_series(pydicom_files):
    folder = pydicom_files / "dicomdirtests" / "98892001" / "CT5N"
    vol = read_volume(folder)
    files = sorted(folder.iterdir())
    assert vol.shape == (16, 16, 5)
    assert vol.meta["series_uid"] == CT5_UID and vol.meta["n_files"] == 5
    # slice spacing from the positions (2.5 mm), pixel spacing from PixelSpacing
    np.testing.assert_allclose(vol.spacing, (0.488281, 0.488281, 2.5), atol=1e-5)
    # each k-slice matches the file at that position, and positions are monotonic along the normal
    slices = []
    for f in files:
        ds = pydicom.dcmread(f)
        values = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        slices.append((float(ds.ImagePositionPatient[2]), int(ds.InstanceNumber), values))
    zs = [vol.affine[2, 3] + k * vol.affine[2, 2] for k in range(5)]
    assert np.all(np.diff(zs) > 0) or np.all(np.diff(zs) < 0)
    instances = []
    for k, z in enumerate(zs):
        pos, number, values = min(slices, key=lambda item: abs(item[0] - z))
        assert pos == pytest.approx(z, abs=1e-4)
        np.testing.assert_allclose(vol.array[:, :, k], values.T)
        instances.append(number)
    assert instances == sorted(instances)  # k follows InstanceNumber (positions descend in this series)


def test_whole_test_tree_lists_series_and_picks_one(pydicom_files):
    root = pydicom_files / "dicomdirtests"
    with pytest.raises(LdmError, match="DICOM series") as err:
        read_dicom(root)
    assert CT5_UID in str(err.value) and "5 slices" in str(err.value)
    assert "\n" not in str(err.value)
    vol = read_dicom(root, series_uid=CT5_UID)  # DICOMDIR files and README.txt are skipped
    assert vol.shape == (16, 16, 5)
    with pytest.raises(LdmError, match="available"):
        read_dicom(root, series_uid="1.2.3.4")


def test_irregular_slice_spacing(pydicom_files):
    with pytest.raises(LdmError, match="irregular slice spacing"):
        read_dicom(pydicom_files / "dicomdirtests" / "77654033", series_uid=BRAIN_UID)


def test_multiframe_rtdose(pydicom_files):
    path = pydicom_files / "rtdose.dcm"
    ds = pydicom.dcmread(path)
    vol = read_dicom(path)
    frames = ds.pixel_array * float(ds.DoseGridScaling)
    assert vol.shape == (ds.Columns, ds.Rows, int(ds.NumberOfFrames))
    np.testing.assert_allclose(vol.array, np.transpose(frames, (2, 1, 0)), rtol=1e-6)
    offsets = [float(v) for v in ds.GridFrameOffsetVector]
    assert vol.spacing[2] == pytest.approx(offsets[1] - offsets[0])


def test_corrupt_pixel_data(pydicom_files):
    with pytest.raises(LdmError, match="cannot decode the pixel data"):
        read_dicom(pydicom_files / "MR_truncated.dcm", allow_single_slice=True)


def test_non_dicom_and_dicomdir_are_skipped(tmp_path, pydicom_files):
    shutil.copytree(pydicom_files / "dicomdirtests" / "98892001" / "CT5N", tmp_path / "s" / "deep")
    shutil.copy(pydicom_files / "dicomdirtests" / "DICOMDIR", tmp_path / "s" / "DICOMDIR")
    (tmp_path / "s" / "notes.txt").write_text("not dicom")
    (tmp_path / "s" / "deep" / "README").write_text("a text file without suffix next to the slices")
    (tmp_path / "s" / "deep" / ".DS_Store").write_bytes(b"\x00\x01Bud1" * 10)
    assert read_volume(tmp_path / "s").shape == (16, 16, 5)
    (tmp_path / "s" / "junk.dcm").write_bytes(b"\x00" * 10)  # a .dcm file that is not readable: damaged
    with pytest.raises(LdmError, match="junk.dcm is a damaged DICOM file.*remove or replace it"):
        read_volume(tmp_path / "s")


def test_missing_empty_and_non_dicom(tmp_path, pydicom_files):
    with pytest.raises(LdmError, match="does not exist"):
        read_dicom(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LdmError, match="empty folder"):
        read_dicom(tmp_path / "empty")
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "a.txt").write_text("x")
    with pytest.raises(LdmError, match="no DICOM images found"):
        read_volume(tmp_path / "text")
    (tmp_path / "x.dcm").write_text("not dicom")
    with pytest.raises(LdmError, match="not a DICOM file"):
        read_volume(tmp_path / "x.dcm")
    with pytest.raises(LdmError, match="DICOMDIR"):
        read_dicom(pydicom_files / "dicomdirtests" / "DICOMDIR")


def _enhanced_mr(path, positions, slopes):
    """A small enhanced MR multi-frame file with per-frame positions and rescale values."""
    rows, cols, n = 4, 3, len(positions)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = EnhancedMRImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = uid = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = EnhancedMRImageStorage, uid
    ds.Modality, ds.SeriesInstanceUID = "MR", generate_uid()
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, cols, n
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    shared = Dataset()
    orient, measures = Dataset(), Dataset()
    orient.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    measures.PixelSpacing, measures.SliceThickness = [0.5, 0.75], 2
    shared.PlaneOrientationSequence, shared.PixelMeasuresSequence = [orient], [measures]
    ds.SharedFunctionalGroupsSequence = [shared]
    per_frame = []
    for pos, slope in zip(positions, slopes, strict=True):
        item, plane, pvt = Dataset(), Dataset(), Dataset()
        plane.ImagePositionPatient = list(pos)
        pvt.RescaleSlope, pvt.RescaleIntercept, pvt.RescaleType = slope, 1, "US"
        item.PlanePositionSequence, item.PixelValueTransformationSequence = [plane], [pvt]
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = per_frame
    frames = np.arange(n * rows * cols, dtype=np.uint16).reshape(n, rows, cols)
    ds.PixelData = frames.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return frames


def test_enhanced_multiframe(tmp_path):
    # frames stored out of order: z = 4, 0, 2 -> sorted 0, 2, 4
    frames = _enhanced_mr(tmp_path / "enh.dcm", [(10, 20, 4), (10, 20, 0), (10, 20, 2)], [1.0, 2.0, 0.5])
    vol = read_dicom(tmp_path / "enh.dcm")
    assert vol.shape == (3, 4, 3)
    np.testing.assert_allclose(vol.spacing, (0.75, 0.5, 2.0))
    np.testing.assert_allclose(vol.affine[:3, 3], (-10, -20, 0))
    np.testing.assert_allclose(vol.array[:, :, 0], frames[1].T * 2.0 + 1)
    np.testing.assert_allclose(vol.array[:, :, 1], frames[2].T * 0.5 + 1)
    np.testing.assert_allclose(vol.array[:, :, 2], frames[0].T * 1.0 + 1)
    assert vol.array.dtype == np.float32


def test_duplicate_positions(tmp_path):
    _enhanced_mr(tmp_path / "dup.dcm", [(0, 0, 0), (0, 0, 2), (0, 0, 2)], [1, 1, 1])
    with pytest.raises(LdmError, match="duplicate slice position"):
        read_dicom(tmp_path / "dup.dcm")


def test_mixed_orientations_refused(pydicom_files):
    pilot = "1.3.6.1.4.1.5962.1.1.0.0.0.1196533885.18148.0.136"  # tri-planar localizer
    with pytest.raises(LdmError, match="mixes slice orientations"):
        read_dicom(pydicom_files / "dicomdirtests" / "98892003" / "MR2", series_uid=pilot)


def test_file_without_extension_dispatches_to_dicom(pydicom_files):
    one = pydicom_files / "dicomdirtests" / "98892001" / "CT5N" / "2062"
    with pytest.raises(LdmError, match="is 2D"):
        read_volume(one)
    assert read_volume(one, allow_single_slice=True).shape == (16, 16, 1)
