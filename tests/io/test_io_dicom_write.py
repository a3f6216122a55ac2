"""Synthetic DICOM series: round trip through read_dicom, fresh UIDs, no copied identifiers."""

import nibabel as nib
import numpy as np
import pydicom
import pytest

from ldmtool.errors import LdmError
from ldmtool.io import read_dicom, read_volume, write_dicom_series, write_volume


def _oblique_affine():
    c, s = np.cos(0.4), np.sin(0.4)
    rot = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]) @ np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([0.8, 0.9, 3.0])
    affine[:3, 3] = (12.5, -40.25, 7.0)
    return affine


@pytest.mark.parametrize("kind", ["RAS", "LAS", "oblique"])
def test_round_trip_float(tmp_path, make_volume, kind):
    if kind == "oblique":
        vol = make_volume(shape=(7, 5, 4), affine=_oblique_affine())
    else:
        vol = make_volume(shape=(7, 5, 4), flip_x=kind == "LAS")
    out = write_dicom_series(vol, tmp_path / "series", modality="MR")
    assert len(list(out.glob("*.dcm"))) == 4
    back = read_dicom(out)
    assert back.shape == vol.shape
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-4)
    assert nib.aff2axcodes(back.affine) == nib.aff2axcodes(vol.affine)
    ds = pydicom.dcmread(next(out.glob("*.dcm")))
    step = float(ds.RescaleSlope)
    np.testing.assert_allclose(back.array, vol.array, atol=step)
    assert back.meta["modality"] == "MR" and back.meta["n_files"] == 4


def test_labels_as_uint8_exact(tmp_path, make_volume):
    labels = make_volume(dtype=np.uint8, high=3)
    out = write_volume(labels, tmp_path / "lab", fmt="dicom")
    ds = pydicom.dcmread(next(out.glob("*.dcm")))
    assert ds.BitsAllocated == 8 and float(ds.RescaleSlope) == 1.0 and ds.Modality == "OT"
    assert ds.file_meta.MediaStorageSOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
    back = read_dicom(out)
    assert np.issubdtype(back.array.dtype, np.integer)
    np.testing.assert_array_equal(back.array, labels.array)


def test_ct_integer_values_exact(tmp_path, make_volume):
    vol = make_volume(dtype=np.int16, low=-1024, high=3000)
    out = write_dicom_series(vol, tmp_path / "ct", modality="CT")
    ds = pydicom.dcmread(next(out.glob("*.dcm")))
    assert ds.SOPClassUID == pydicom.uid.CTImageStorage
    np.testing.assert_array_equal(read_dicom(out).array, vol.array)


def test_constant_and_large_range(tmp_path, make_volume):
    const = make_volume().with_array(np.full((6, 5, 4), 3.25, np.float32))
    np.testing.assert_allclose(read_dicom(write_dicom_series(const, tmp_path / "c")).array, 3.25, atol=1e-6)
    big = make_volume()
    big = big.with_array(big.array * 1e4)
    back = read_dicom(write_dicom_series(big, tmp_path / "b"))
    step = (big.array.max() - big.array.min()) / 65000
    np.testing.assert_allclose(back.array, big.array, atol=step)
    with pytest.raises(LdmError, match="rescale"):
        write_dicom_series(big, tmp_path / "b2", rescale=False)


def test_synthetic_markers_and_no_identifiers(tmp_path, make_volume):
    vol = make_volume()
    vol.meta.update(
        PatientName="DOE^JANE",
        PatientID="MRN-778899",
        path="/hospital/secret/src_scan.nii.gz",
        series_description="Private Source Series",
        series_uid="1.2.840.99999.1.2.3",
    )
    out = write_dicom_series(vol, tmp_path / "anon")
    for f in out.iterdir():
        raw = f.read_bytes()
        for secret in ("DOE", "JANE", "MRN-778899", "hospital", "src_scan", "Private Source", "1.2.840.99999"):
            assert secret.encode() not in raw, (secret, f.name)
        ds = pydicom.dcmread(f)
        assert "DERIVED" in ds.ImageType and "SECONDARY" in ds.ImageType
        assert "SYNTHETIC" in ds.SeriesDescription
        assert ds.PatientID == "SYNTHETIC" and "SYNTHETIC" in str(ds.PatientName)
        assert ds.BurnedInAnnotation == "NO"
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian


def test_fresh_uids_each_write(tmp_path, make_volume):
    vol = make_volume()
    a = [pydicom.dcmread(f) for f in sorted(write_dicom_series(vol, tmp_path / "a").iterdir())]
    b = [pydicom.dcmread(f) for f in sorted(write_dicom_series(vol, tmp_path / "b").iterdir())]
    for key in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        assert getattr(a[0], key) != getattr(b[0], key)
        assert len({getattr(ds, key) for ds in a}) == 1
    sops = {ds.SOPInstanceUID for ds in a + b}
    assert len(sops) == len(a) + len(b)
    assert [ds.InstanceNumber for ds in a] == list(range(1, len(a) + 1))


def test_description_gets_synthetic_prefix(tmp_path, make_volume):
    out = write_dicom_series(make_volume(), tmp_path / "d", series_description="brain T1")
    assert pydicom.dcmread(next(out.iterdir())).SeriesDescription == "SYNTHETIC brain T1"


def test_refuses_non_empty_output(tmp_path, make_volume):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    with pytest.raises(LdmError, match="not an empty folder"):
        write_dicom_series(make_volume(), tmp_path / "full")
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]
    (tmp_path / "empty").mkdir()
    write_dicom_series(make_volume(), tmp_path / "empty")
    assert len(list((tmp_path / "empty").iterdir())) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "full"]  # no temp folders left


def test_nan_volume_refused(tmp_path, make_volume):
    vol = make_volume()
    vol.array[0, 0, 0] = np.nan
    with pytest.raises(LdmError, match="NaN"):
        write_dicom_series(vol, tmp_path / "n")
    assert list(tmp_path.iterdir()) == []


def test_two_series_in_one_folder(tmp_path, make_volume):
    uid_a = read_dicom(write_dicom_series(make_volume(seed=1), tmp_path / "both" / "a")).meta["series_uid"]
    uid_b = read_dicom(write_dicom_series(make_volume(seed=2), tmp_path / "both" / "b")).meta["series_uid"]
    with pytest.raises(LdmError) as err:
        read_volume(tmp_path / "both")
    assert uid_a in str(err.value) and uid_b in str(err.value) and "4 slices" in str(err.value)
    picked = read_volume(tmp_path / "both", series_uid=uid_b)
    assert picked.meta["series_uid"] == uid_b
    np.testing.assert_allclose(picked.array, make_volume(seed=2).array, atol=0.01)


def test_duplicate_file_positions(tmp_path, make_volume):
    out = write_dicom_series(make_volume(), tmp_path / "dup")
    ds = pydicom.dcmread(out / "IM00002.dcm")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(out / "copy.dcm")
    with pytest.raises(LdmError, match="duplicate slice position"):
        read_dicom(out)


def test_bad_modality(tmp_path, make_volume):
    with pytest.raises(LdmError, match="modality"):
        write_dicom_series(make_volume(), tmp_path / "x", modality="US")


def test_write_volume_unknown_format(tmp_path, make_volume):
    with pytest.raises(LdmError, match="unknown output format"):
        write_volume(make_volume(), tmp_path / "x", fmt="mha")
