"""2D images: PNG/TIFF/JPEG and 2D DICOM read as one-slice volumes, class folders, nnU-Net's 2D
layout, PNG and DICOM written back without identifiers, and the one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from ldmtool.errors import LdmError
from ldmtool.io import load_dataset, read_volume, write_nifti
from ldmtool.io.image2d import picture, write_dicom_2d, write_png


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _grey(seed=0, shape=(12, 16), dtype=np.uint8):
    hi = 255 if dtype == np.uint8 else 4000
    return np.random.default_rng(seed).integers(0, hi, shape).astype(dtype)


def _radiograph(path, pixels, photometric="MONOCHROME2", modality="DX"):
    """A minimal DX file with identifiers that must never reach a synthetic output."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientName, ds.PatientID = modality, "Doe^Jane", "MRN12345"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.ImagerPixelSpacing = [0.2, 0.15]
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit, ds.PixelRepresentation = 15, 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_png_is_a_one_slice_volume(tmp_path):
    pixels = _grey()
    vol = read_volume(_png(tmp_path / "a.png", pixels))
    assert vol.shape == (16, 12, 1) and vol.meta["dims"] == 2 and vol.meta["format"] == "png"
    np.testing.assert_array_equal(picture(vol), pixels)
    write_png(vol, tmp_path / "b.png")
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "b.png")), pixels)


@pytest.mark.parametrize("suffix", [".tif", ".jpg"])
def test_tiff_and_jpeg(tmp_path, suffix):
    pixels = _grey(1, dtype=np.uint16 if suffix == ".tif" else np.uint8)
    vol = read_volume(_png(tmp_path / f"a{suffix}", pixels))
    assert vol.shape == (16, 12, 1) and vol.array.dtype == pixels.dtype
    if suffix == ".tif":
        np.testing.assert_array_equal(picture(vol), pixels)


def test_rgb_is_a_one_line_error(tmp_path):
    rgb = np.stack([_grey(0), _grey(1), _grey(2)], axis=-1)
    with pytest.raises(LdmError, match="colour image.*grey") as err:
        read_volume(_png(tmp_path / "c.png", rgb))
    assert "\n" not in str(err.value)
    grey_as_rgb = np.stack([_grey(0)] * 3, axis=-1)  # a grey picture saved as RGB is fine
    assert read_volume(_png(tmp_path / "g.png", grey_as_rgb)).shape == (16, 12, 1)


def test_class_folders(tmp_path):
    for cls in ("normal", "pneumonia"):
        for i in range(2):
            _png(tmp_path / cls / f"{i}.png", _grey(i))
    ds = load_dataset(tmp_path)
    assert ds.image_dims == 2 and len(ds.cases) == 4
    assert ds.classes == {
        "normal_0": "normal",
        "normal_1": "normal",
        "pneumonia_0": "pneumonia",
        "pneumonia_1": "pneumonia",
    }


def test_mixed_2d_and_3d_is_a_one_line_error(tmp_path, make_volume):
    _png(tmp_path / "a.png", _grey())
    write_nifti(make_volume(), tmp_path / "b.nii.gz")
    with pytest.raises(LdmError, match="mixes 2D images .* and 3D volumes") as err:
        load_dataset(tmp_path)
    assert "\n" not in str(err.value)


def test_nnunet_2d_layout(tmp_path):
    for cid in ("c1", "c2"):
        _png(tmp_path / "imagesTr" / f"{cid}_0000.png", _grey())
        _png(tmp_path / "labelsTr" / f"{cid}.png", (_grey(3) > 128).astype(np.uint8))
    info = {"channel_names": {"0": "X-ray"}, "labels": {"background": 0, "lung": 1}, "file_ending": ".png"}
    (tmp_path / "dataset.json").write_text(json.dumps(info))
    ds = load_dataset(tmp_path)
    assert ds.image_dims == 2 and ds.has_labels and [c.case_id for c in ds.cases] == ["c1", "c2"]
    image, label = ds.read(ds.cases[0])
    assert image.shape == label.shape == (16, 12, 1) and set(np.unique(label.array)) <= {0, 1}
    (tmp_path / "dataset.json").unlink()  # without dataset.json the ending comes from the files
    assert load_dataset(tmp_path).cases[1].label.name == "c2.png"


def test_2d_dicom_read_with_spacing_and_monochrome1(tmp_path):
    pixels = _grey(4, dtype=np.uint16)
    vol = read_volume(_radiograph(tmp_path / "x.dcm", pixels))
    assert vol.meta["dims"] == 2 and vol.meta["modality"] == "DX"
    assert vol.spacing == pytest.approx((0.15, 0.2, 1.0))  # (columns, rows): ImagerPixelSpacing is (row, column)
    np.testing.assert_array_equal(picture(vol), pixels)
    inverted = read_volume(_radiograph(tmp_path / "y.dcm", pixels, "MONOCHROME1"))
    np.testing.assert_array_equal(picture(inverted), pixels.max() + pixels.min() - pixels.astype(np.int64))


def test_folder_of_radiographs(tmp_path):
    for i in range(3):
        _radiograph(tmp_path / f"r{i}.dcm", _grey(i, dtype=np.uint16))
    ds = load_dataset(tmp_path)
    assert ds.image_dims == 2 and [c.case_id for c in ds.cases] == ["r0", "r1", "r2"]


def test_packaged_secondary_capture_reads_as_2d(pydicom_files):
    """pydicom's own image_dfl.dcm: a real single-frame grey OT image without patient position."""
    vol = read_volume(pydicom_files / "image_dfl.dcm")
    assert vol.shape == (512, 512, 1) and vol.meta["dims"] == 2 and vol.array.dtype == np.uint8


def test_2d_dicom_written_without_identifiers(tmp_path):
    source = _radiograph(tmp_path / "x.dcm", _grey(5, dtype=np.uint16))
    vol = read_volume(source)
    out = write_dicom_2d(vol.with_array(vol.array.astype(np.float32) + 0.25), tmp_path / "s.dcm", modality="DX")
    ds = pydicom.dcmread(out)
    src = pydicom.dcmread(source)
    assert (
        ds.Modality == "DX"
        and "SYNTHETIC" in ds.SeriesDescription
        and list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    )
    assert ds.PatientName == "SYNTHETIC^LDMTOOL" and ds.PatientID == "SYNTHETIC"
    text = str(ds)
    for value in ("Doe^Jane", "MRN12345", src.StudyInstanceUID, src.SeriesInstanceUID, src.SOPInstanceUID):
        assert value not in text
    back = read_volume(out)
    assert back.spacing == pytest.approx(vol.spacing)
    np.testing.assert_allclose(picture(back), picture(vol) + 0.25, atol=0.05)
