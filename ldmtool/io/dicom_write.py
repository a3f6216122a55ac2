"""Write a Volume as a fresh, clearly synthetic single-frame DICOM series.

Nothing is copied from any source dataset: every file gets new UIDs, anonymous patient
values, ``ImageType DERIVED\\SECONDARY`` and a SeriesDescription containing "SYNTHETIC".

IODs: modality CT writes CT Image Storage and MR writes MR Image Storage, so that viewers apply
their CT/MR display and hanging protocols; the acquisition attributes these IODs require but a
synthetic image does not have are present and empty (type 2: KVP, AcquisitionNumber, EchoTime,
RepetitionTime, ...) or say so (ScanningSequence RM = research mode, ImageType value 3 AXIAL for
CT, OTHER for MR). OT writes Secondary Capture Image Storage with the image plane attributes kept
(as a Standard Extended SOP class) so that the series still stacks into a volume. An MR series of
non-integer values carries RescaleSlope/RescaleIntercept, which the MR IOD does not list (dciodvfy
warns; pydicom, highdicom and common viewers apply them).
"""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    SecondaryCaptureImageStorage,
    generate_uid,
)
from pydicom.valuerep import format_number_as_ds

from ldmtool.errors import LdmError
from ldmtool.io.atomic import atomic_dir
from ldmtool.io.volume import Volume

SOP_CLASSES = {"OT": SecondaryCaptureImageStorage, "CT": CTImageStorage, "MR": MRImageStorage}
_MODALITY_ALIASES = {"MRI": "MR", "OTHER": "OT", "": "OT"}
_IMAGE_TYPE_3 = {"CT": "AXIAL", "MR": "OTHER"}
new_uid = generate_uid  # fresh UIDs for callers that share a study or frame of reference
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
_INT16 = np.iinfo(np.int16)
_LEVELS = 65530  # int16 codes used by the linear rescale (a small margin below 65535)


def _ds(value: float) -> str:
    """A float as a valid DICOM decimal string (at most 16 characters)."""
    return format_number_as_ds(float(value))


def _quantise(array: np.ndarray, modality: str, rescale: bool) -> tuple[np.ndarray, float, float]:
    """Stored pixel values (uint8 or int16) with (slope, intercept) so stored*slope+intercept ~ array."""
    if array.size == 0:
        raise LdmError("cannot write an empty volume as DICOM")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    if not np.all(np.isfinite(array)):
        raise LdmError("cannot write DICOM: the volume contains NaN or infinite values")
    lo, hi = float(array.min()), float(array.max())
    is_int = np.issubdtype(array.dtype, np.integer)
    integral = is_int or bool(np.all(array == np.rint(array)))
    if is_int and modality == "OT" and lo >= 0 and hi <= 255:
        return array.astype(np.uint8), 1.0, 0.0
    fits = _INT16.min <= round(lo) and round(hi) <= _INT16.max
    if (integral or not rescale) and fits:
        return np.rint(array).astype(np.int16), 1.0, 0.0
    if not rescale:
        raise LdmError(
            f"values span {lo:g} to {hi:g}, which do not fit int16 without rescaling; write with rescale enabled"
        )
    slope = float(_ds((hi - lo) / _LEVELS)) if hi > lo else 1.0
    intercept = float(_ds((hi + lo) / 2.0))
    stored = np.rint((np.asarray(array, dtype=np.float64) - intercept) / slope)
    return np.clip(stored, _INT16.min, _INT16.max).astype(np.int16), slope, intercept


def _geometry(affine: np.ndarray) -> dict:
    """Image plane values (LPS) derived from a RAS voxel->world affine."""
    lps = RAS_TO_LPS @ np.asarray(affine, dtype=np.float64)
    ci, cj, ck = lps[:3, 0], lps[:3, 1], lps[:3, 2]
    col_spacing, row_spacing, step = (float(np.linalg.norm(c)) for c in (ci, cj, ck))
    if min(col_spacing, row_spacing, step) <= 0:
        raise LdmError("cannot write DICOM: the affine has a zero-length voxel axis")
    row_cos, col_cos = ci / col_spacing, cj / row_spacing
    if abs(float(row_cos @ col_cos)) > 1e-4:
        raise LdmError("cannot write DICOM: the affine's first two voxel axes are not perpendicular")
    normal = np.cross(row_cos, col_cos)
    return {
        "row_cos": row_cos,
        "col_cos": col_cos,
        "normal": normal,
        "origin": lps[:3, 3],
        "step": ck,
        "pixel_spacing": (row_spacing, col_spacing),
        "thickness": abs(float(ck @ normal)),
    }


def _pixel_module(ds: Dataset, stored: np.ndarray) -> None:
    """Image pixel module attributes for uint8 or int16 stored values."""
    bits = stored.dtype.itemsize * 8
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 1 if stored.dtype == np.int16 else 0


def _new_instance(ds: Dataset, sop_class_uid: str) -> None:
    """Give `ds` a fresh SOP Instance UID and the file meta of an uncompressed Part 10 file."""
    sop_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    ds.SOPInstanceUID = sop_uid


def _base_dataset(modality: str, description: str, uids: dict, now: _dt.datetime) -> Dataset:
    """The attributes shared by every slice of the series (patient, study, series, equipment)."""
    ds = Dataset()
    ds.SOPClassUID = SOP_CLASSES[modality]
    ds.ImageType = ["DERIVED", "SECONDARY"] + ([_IMAGE_TYPE_3[modality]] if modality in _IMAGE_TYPE_3 else [])
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = time
    ds.AccessionNumber = ""
    ds.Modality = modality
    if modality == "OT":
        ds.ConversionType = "WSD"
    ds.Manufacturer = "ldmtool"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "SYNTHETIC"
    ds.SeriesDescription = description
    ds.DerivationDescription = "Synthetic image generated by ldmtool; not acquired from a patient"
    ds.PatientName = "SYNTHETIC^LDMTOOL"
    ds.PatientID = "SYNTHETIC"
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.Laterality = ""  # type 2C: no paired organ is claimed
    if modality in ("CT", "MR"):
        ds.PatientPosition = ""
        ds.AcquisitionNumber = ""
    if modality == "CT":
        ds.KVP = ""
    if modality == "MR":
        ds.ScanningSequence = "RM"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = ""
        ds.RepetitionTime = ""
        ds.EchoTime = ""
        ds.EchoTrainLength = ""
    ds.StudyInstanceUID = uids["study"]
    ds.SeriesInstanceUID = uids["series"]
    ds.StudyID = "1"
    ds.SeriesNumber = uids.get("number", 1)
    ds.FrameOfReferenceUID = uids["frame"]
    ds.PositionReferenceIndicator = ""
    ds.BurnedInAnnotation = "NO"
    return ds


def _orientation_letters(direction: np.ndarray) -> str:
    """PatientOrientation letters of an LPS direction, most dominant first (e.g. "L", "PH")."""
    letters = [("L", "R"), ("P", "A"), ("H", "F")]
    order = np.argsort(-np.abs(direction))
    return "".join(letters[i][0 if direction[i] > 0 else 1] for i in order if abs(direction[i]) > 1e-3)


def _slice_dataset(
    base: Dataset, k: int, pixels: np.ndarray, geo: dict, slope: float, intercept: float, window: tuple[float, float]
) -> Dataset:
    """One slice: a copy of ``base`` plus its UID, position and pixel data."""
    ds = Dataset()
    ds.update(base)
    _new_instance(ds, base.SOPClassUID)
    ds.InstanceNumber = k + 1
    position = geo["origin"] + k * geo["step"]
    ds.ImagePositionPatient = [_ds(v) for v in position]
    ds.ImageOrientationPatient = [_ds(v) for v in (*geo["row_cos"], *geo["col_cos"])]
    ds.PatientOrientation = [_orientation_letters(geo["row_cos"]), _orientation_letters(geo["col_cos"])]
    ds.PixelSpacing = [_ds(v) for v in geo["pixel_spacing"]]
    ds.SliceThickness = _ds(geo["thickness"])
    ds.SpacingBetweenSlices = _ds(geo["thickness"])
    ds.SliceLocation = _ds(float(position @ geo["normal"]))
    ds.Rows, ds.Columns = pixels.shape
    _pixel_module(ds, pixels)
    ds.RescaleSlope = _ds(slope)
    ds.RescaleIntercept = _ds(intercept)
    if ds.Modality != "MR":  # the MR IOD has no modality LUT module
        ds.RescaleType = "HU" if ds.Modality == "CT" else "US"
    ds.WindowCenter = _ds((window[0] + window[1]) / 2.0)
    ds.WindowWidth = _ds(max(window[1] - window[0], 1.0))
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    return ds


def write_dicom_series(
    volume: Volume,
    out_dir: str | os.PathLike,
    *,
    series_description: str = "SYNTHETIC (ldmtool)",
    modality: str = "OT",
    rescale: bool = True,
    study_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    series_number: int = 1,
) -> Path:
    """Write ``volume`` as one DICOM file per slice (axis k) into the new folder ``out_dir``.

    Values are stored as int16 with RescaleSlope/RescaleIntercept covering the value range
    (exact for integer-valued data in the int16 range; uint8 for 0..255 integer volumes in
    OT series). ``rescale=False`` stores rounded values with slope 1 and refuses values
    outside int16. The folder is written next to ``out_dir`` and renamed into place;
    ``out_dir`` must not exist or be empty. Returns ``out_dir``.

    ``modality`` (CT, MR or OT) picks the IOD (see the module docstring). ``study_uid`` and
    ``frame_of_reference_uid`` (fresh ones by default, e.g. from :func:`new_uid`) let several
    series of one synthetic sample share a study and a patient coordinate system; the label map
    of a sample goes with :func:`ldmtool.io.dicom_seg.write_synthetic_seg`, which takes both from
    the image series.
    """
    modality = _MODALITY_ALIASES.get(modality.upper(), modality.upper())
    if modality not in SOP_CLASSES:
        raise LdmError(f"unsupported DICOM modality {modality!r}; use one of {', '.join(SOP_CLASSES)}")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise LdmError(f"{out} already exists and is not an empty folder; choose a new output folder")
    array = np.asarray(volume.array)
    if array.ndim != 3:
        raise LdmError(f"cannot write DICOM: volume has shape {array.shape}, expected 3D")
    if "SYNTHETIC" not in series_description.upper():
        series_description = f"SYNTHETIC {series_description}"
    series_description = series_description[:64]
    geo = _geometry(volume.affine)
    stored, slope, intercept = _quantise(array, modality, rescale)
    window = (float(array.min()), float(array.max()))
    uids = {
        "study": study_uid or generate_uid(),
        "series": generate_uid(),
        "frame": frame_of_reference_uid or generate_uid(),
        "number": int(series_number),
    }
    base = _base_dataset(modality, series_description, uids, _dt.datetime.now())
    with atomic_dir(out) as tmp:
        for k in range(stored.shape[2]):
            ds = _slice_dataset(base, k, stored[:, :, k].T, geo, slope, intercept, window)
            ds.save_as(tmp / f"IM{k + 1:05d}.dcm", enforce_file_format=True)
    return out
