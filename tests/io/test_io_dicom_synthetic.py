"""Synthetic DICOM as a viewer expects it: image series and label SEG share study and frame of
reference, modality and IOD as asked, nothing copied from a source file; dciodvfy finds no errors."""

import shutil
import subprocess

import highdicom as hd
import numpy as np
import pydicom
import pytest

from ldmtool.errors import LdmError
from ldmtool.io import Volume, read_dicom, write_dicom_series
from ldmtool.io.dicom_seg import write_synthetic_seg
from ldmtool.io.dicom_write import new_uid

NAMES = {0: "background", 1: "head", 2: "lesion"}


def _sample(shape=(12, 10, 6)):
    rng = np.random.default_rng(0)
    image = (rng.standard_normal(shape) * 200.0).astype(np.float32)
    label = np.zeros(shape, np.uint8)
    label[2:9, 2:8, 1:5] = 1
    label[4:6, 3:5, 2:4] = 2
    affine = np.diag([0.9, 1.1, 2.5, 1.0])
    affine[:3, 3] = (-20.0, 10.0, 3.0)
    return Volume(image, affine, {"synthetic": True}), label


@pytest.fixture(params=["CT", "MR", "OT"])
def written(request, tmp_path):
    image, label = _sample()
    study = new_uid()
    series = write_dicom_series(
        image,
        tmp_path / "s" / "image",
        modality=request.param,
        study_uid=study,
        series_description="SYNTHETIC ldmtool sample_0000",
    )
    n = write_synthetic_seg(label, series, NAMES, tmp_path / "s" / "label_seg.dcm")
    return request.param, study, series, tmp_path / "s" / "label_seg.dcm", label, n


def test_image_and_seg_share_study_and_frame_of_reference(written):
    modality, study, series, seg_path, label, n = written
    images = [pydicom.dcmread(f) for f in sorted(series.glob("*.dcm"))]
    seg = hd.seg.segread(seg_path)
    assert n == 2 and seg.Modality == "SEG"
    assert {ds.StudyInstanceUID for ds in images} == {study} == {seg.StudyInstanceUID}
    assert {ds.FrameOfReferenceUID for ds in images} == {seg.FrameOfReferenceUID}
    assert {ds.Modality for ds in images} == {modality}
    sop = {
        "CT": pydicom.uid.CTImageStorage,
        "MR": pydicom.uid.MRImageStorage,
        "OT": pydicom.uid.SecondaryCaptureImageStorage,
    }[modality]
    assert {ds.SOPClassUID for ds in images} == {sop}
    # the SEG references every image instance
    referenced = {
        item.ReferencedSOPInstanceUID for s in seg.ReferencedSeriesSequence for item in s.ReferencedInstanceSequence
    }
    assert referenced == {ds.SOPInstanceUID for ds in images}
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == images[0].SeriesInstanceUID
    # the segments lie on the right slices: rebuild the label map from the SEG
    by_uid = {ds.SOPInstanceUID: int(ds.InstanceNumber) - 1 for ds in images}
    rebuilt = np.zeros_like(label)
    for f, frame in enumerate(seg.PerFrameFunctionalGroupsSequence):
        k = by_uid[frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID]
        number = frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        rebuilt[:, :, k][seg.pixel_array[f].T > 0] = number
    np.testing.assert_array_equal(rebuilt, label)
    # synthetic throughout, and the image still reads back as the volume
    for ds in [*images, seg]:
        assert ds.PatientID == "SYNTHETIC" and "SYNTHETIC" in ds.SeriesDescription.upper()
    assert list(images[0].ImageType[:2]) == ["DERIVED", "SECONDARY"]
    assert images[0].PatientOrientation == ["R", "A"]  # RAS axes i, j are LPS -x, -y and images[0].Laterality == ""
    assert read_dicom(series).shape == label.shape


def test_fresh_uids_unless_shared(tmp_path):
    image, _ = _sample()
    a = pydicom.dcmread(next(write_dicom_series(image, tmp_path / "a").glob("*.dcm")))
    b = pydicom.dcmread(next(write_dicom_series(image, tmp_path / "b").glob("*.dcm")))
    assert a.StudyInstanceUID != b.StudyInstanceUID and a.FrameOfReferenceUID != b.FrameOfReferenceUID
    frame = new_uid()
    c = pydicom.dcmread(
        next(write_dicom_series(image, tmp_path / "c", frame_of_reference_uid=frame, series_number=3).glob("*.dcm"))
    )
    assert c.FrameOfReferenceUID == frame and c.SeriesNumber == 3


def test_seg_needs_a_synthetic_series(tmp_path, pydicom_files):
    _, label = _sample()
    shutil.copytree(pydicom_files / "dicomdirtests" / "98892001" / "CT5N", tmp_path / "real")
    for f in (tmp_path / "real").iterdir():
        f.rename(f.with_suffix(".dcm"))
    with pytest.raises(LdmError, match="not one synthetic series"):
        write_synthetic_seg(label, tmp_path / "real", NAMES, tmp_path / "x.dcm")
    with pytest.raises(LdmError, match="holds no DICOM files"):
        write_synthetic_seg(label, tmp_path / "nothing", NAMES, tmp_path / "x.dcm")
    assert not (tmp_path / "x.dcm").exists()


def test_modality_aliases_and_unknown(tmp_path):
    image, _ = _sample()
    ds = pydicom.dcmread(next(write_dicom_series(image, tmp_path / "a", modality="mri").glob("*.dcm")))
    assert ds.Modality == "MR"
    with pytest.raises(LdmError, match="unsupported DICOM modality 'PET'"):
        write_dicom_series(image, tmp_path / "b", modality="PET")


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (Debian package dicom3tools) is not installed")
def test_dciodvfy_finds_no_errors(written):
    _, _, series, seg_path, _, _ = written
    for path in (next(series.glob("*.dcm")), seg_path):
        out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
        errors = [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]
        assert not errors, f"{path.name}: {errors}"
