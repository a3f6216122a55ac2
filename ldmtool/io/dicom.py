"""Read DICOM series (single-frame slices or one multi-frame file) into a Volume.

Geometry follows the DICOM image plane module: voxel axis i runs along the row direction
(the column index of ``pixel_array``), j along the column direction (the row index), k across
slices. DICOM patient coordinates are LPS; the returned affine is RAS+ like nibabel's.
Writing synthetic series lives in :mod:`ldmtool.io.dicom_write` (re-exported here).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut

from ldmtool.errors import LdmError
from ldmtool.io._util import short_reason
from ldmtool.io.dicom_write import write_dicom_series
from ldmtool.io.limits import check_voxel_count
from ldmtool.io.volume import Volume

__all__ = ["read_dicom", "write_dicom_series", "is_dicom_file"]

DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"  # Media Storage Directory Storage
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_POSITION_TOL_MM = 1e-3


@dataclass
class _Slice:
    """One 2D image plane: geometry (LPS) and pixel values after the modality rescale."""

    position: np.ndarray | None  # ImagePositionPatient (3,)
    orientation: np.ndarray | None  # ImageOrientationPatient (6,): row cosines, column cosines
    pixel_spacing: tuple[float, float]  # (between rows, between columns) in mm
    thickness: float | None
    pixels: np.ndarray  # (Rows, Columns)
    integral: bool  # values are integers (integer pixels, integral slope and intercept)
    identity: bool  # no rescale applied; pixels keep their stored dtype
    instance: int | None
    source: str
    file: str = ""  # the file the plane comes from
    frame: int | None = None  # its 0-based frame index in a multi-frame file


def is_dicom_file(path: str | os.PathLike) -> bool:
    """True if ``path`` is a file pydicom can read without ``force`` (it has the DICM prefix)."""
    return _read_header(Path(path)) is not None


def _read_header(path: Path) -> Dataset | None:
    """The dataset without pixel data, or None if ``path`` is not a readable DICOM file."""
    try:
        return _header_or_raise(path)
    except Exception:  # unreadable or garbled files
        return None


def _header_or_raise(path: Path) -> Dataset:
    """The dataset without pixel data; pydicom's exception if it cannot be read."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path, stop_before_pixels=True, force=False)


def _has_dicm_marker(path: Path) -> bool:
    """True if the file carries the DICOM Part 10 marker ("DICM" after the 128-byte preamble)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def _is_text(path: Path) -> bool:
    """True for a small-looking text file (its first KiB is non-empty UTF-8 without NUL bytes)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(1024)
    except OSError:
        return False
    if not head or b"\0" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _is_dicomdir(ds: Dataset) -> bool:
    """True for DICOMDIR index files (they hold no image)."""
    meta = getattr(ds, "file_meta", None)
    sop = str(meta.get("MediaStorageSOPClassUID", "")) if meta is not None else ""
    return sop == DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds


def _is_image(ds: Dataset) -> bool:
    """True if the dataset describes pixel data (has Rows and Columns)."""
    return "Rows" in ds and "Columns" in ds


def _sop_class(ds: Dataset) -> str:
    """The SOP class UID from the file meta (or the dataset); '' if absent."""
    meta = getattr(ds, "file_meta", None)
    sop = str(meta.get("MediaStorageSOPClassUID", "") or "") if meta is not None else ""
    return sop or str(ds.get("SOPClassUID", "") or "")


def _n_frames(ds: Dataset) -> int:
    """NumberOfFrames (1 if absent or malformed)."""
    try:
        return max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def _damaged(files: list[tuple[Path, str]]) -> LdmError:
    """The one-line error for damaged files of a DICOM folder."""
    first, reason = files[0]
    more = f" (and {len(files) - 1} more: {', '.join(str(f) for f, _ in files[1:4])})" if len(files) > 1 else ""
    return LdmError(f"{first} is a damaged DICOM file ({reason}){more}; remove or replace it, then rerun")


_DICOM_SUFFIXES = {".dcm", ".dicom", ".ima"}


def _probe(f: Path) -> tuple[str, Dataset | str | None]:
    """Classify one file of a folder: ("image", ds), ("other", ds), ("skip", None),
    ("damaged", reason) or ("unknown", reason) (unreadable and without the DICM marker)."""
    if f.name.startswith(".") or f.name.upper() == "DICOMDIR":
        return "skip", None
    try:
        ds = _header_or_raise(f)
    except InvalidDicomError:
        marked = _has_dicm_marker(f) or f.suffix.lower() in _DICOM_SUFFIXES
        return ("damaged" if marked else "unknown"), "no DICOM header"
    except Exception as exc:
        marked = _has_dicm_marker(f) or f.suffix.lower() in _DICOM_SUFFIXES
        return ("damaged" if marked else "unknown"), short_reason(exc)
    if _is_dicomdir(ds):
        return "skip", None
    return ("image" if _is_image(ds) else "other"), ds


def _collect_folder(path: Path) -> tuple[list[tuple[Path, Dataset]], bool]:
    """The DICOM image files under the folder ``path``, and whether it holds any file at all.

    Rule for files that cannot be used (see :func:`read_dicom`): hidden files and DICOMDIR are
    skipped; a file that fails to parse is damaged if it has the DICM marker, a DICOM suffix, or
    the suffix of the image files next to it (and is not text), else ignored as non-DICOM; a parsed
    file without an image (Rows, Columns) is damaged if it has no SOP class, or the series UID of
    the image files found, or their SOP class and no series UID (an image file cut short before
    its image attributes), else skipped (reports, structure sets, image-less file sets)."""
    found: list[tuple[Path, Dataset]] = []
    others: list[tuple[Path, Dataset]] = []
    unknown: list[tuple[Path, str]] = []
    damaged: list[tuple[Path, str]] = []
    any_file = False
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            any_file = True
            f = Path(root) / name
            kind, value = _probe(f)
            bucket = {"image": found, "other": others, "damaged": damaged, "unknown": unknown}.get(kind)
            if bucket is not None:
                bucket.append((f, value))
    sops = {_sop_class(ds) for _, ds in found}
    series = {str(ds.get("SeriesInstanceUID", "") or "") for _, ds in found} - {""}
    suffixes = {(f.parent, f.suffix.lower()) for f, _ in found}
    for f, ds in others:
        sop, uid = _sop_class(ds), str(ds.get("SeriesInstanceUID", "") or "")
        if not sop or uid in series or (sop in sops and not uid):
            damaged.append((f, "its header ends before the image attributes (Rows, Columns): the file is cut short"))
    for f, reason in unknown:
        if (f.parent, f.suffix.lower()) in suffixes and not _is_text(f):
            damaged.append((f, reason))
    if damaged:
        raise _damaged(sorted(damaged))
    return found, any_file


def _collect(path: Path) -> list[tuple[Path, Dataset]]:
    """All DICOM image files under ``path`` (a file or a folder searched recursively)."""
    if not path.exists():
        raise LdmError(f"{path} does not exist")
    if path.is_file():
        try:
            ds = _header_or_raise(path)
        except Exception as exc:
            raise LdmError(
                f"{path} is not a DICOM file or is damaged ({short_reason(exc)}); "
                "pass a readable DICOM file or series folder"
            ) from None
        if _is_dicomdir(ds):
            raise LdmError(f"{path} is a DICOMDIR index; pass the folder that holds the images")
        if not _is_image(ds):
            raise LdmError(f"{path} is a DICOM file without an image ({ds.get('Modality', 'no modality')})")
        return [(path, ds)]
    found, any_file = _collect_folder(path)
    if not found:
        raise LdmError(f"{path} is an empty folder" if not any_file else f"no DICOM images found in {path}")
    return found


def _describe(uid: str, items: list[tuple[Path, Dataset]]) -> str:
    """``UID (N slices, 'description')`` for error messages."""
    n = sum(_n_frames(ds) for _, ds in items)
    desc = str(items[0][1].get("SeriesDescription", "") or "").strip()
    return f"{uid or '<no SeriesInstanceUID>'} ({n} slice{'s' if n != 1 else ''}, '{desc}')"


def _pick_series(path: Path, files: list[tuple[Path, Dataset]], series_uid: str | None):
    """Group files by SeriesInstanceUID and return (uid, files) of the one series to read."""
    groups: dict[str, list[tuple[Path, Dataset]]] = {}
    for f, ds in files:
        groups.setdefault(str(ds.get("SeriesInstanceUID", "") or ""), []).append((f, ds))
    listing = "; ".join(_describe(uid, items) for uid, items in groups.items())
    if series_uid is not None:
        if series_uid not in groups:
            raise LdmError(f"series {series_uid} is not in {path}; available: {listing}")
        return series_uid, groups[series_uid]
    if len(groups) > 1:
        raise LdmError(f"{path} holds {len(groups)} DICOM series: {listing}; choose one with --series UID")
    return next(iter(groups.items()))


def _floats(value, n: int, what: str, source: str) -> np.ndarray | None:
    """``value`` as a float array of length ``n`` (None if absent); LdmError if malformed."""
    if value is None or value == "":
        return None
    try:
        arr = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        raise LdmError(f"{source} has a malformed {what}: {value!r}") from None
    if arr.shape != (n,) or not np.all(np.isfinite(arr)):
        raise LdmError(f"{source} has a malformed {what}: {value!r}")
    return arr


def _pixel_array(ds: Dataset, source: str) -> np.ndarray:
    """Decoded pixel data, with LdmError for missing, colour or undecodable data."""
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise LdmError(f"{source} holds no pixel data (cut short?); remove or replace it")
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise LdmError(
            f"{source} is a colour image ({ds.get('PhotometricInterpretation')}); ldmtool needs greyscale volumes"
        )
    if str(ds.get("PhotometricInterpretation", "MONOCHROME2")) not in ("MONOCHROME1", "MONOCHROME2"):
        raise LdmError(f"{source} is a {ds.PhotometricInterpretation} image; ldmtool needs greyscale volumes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.asarray(ds.pixel_array)
    except Exception as exc:  # decoders raise many types for corrupt or unsupported data
        raise LdmError(
            f"cannot decode the pixel data of {source} ({short_reason(exc)}); "
            "the file is damaged or cut short: remove or replace it"
        ) from None


def _rescaled(raw: np.ndarray, slope: float, intercept: float) -> tuple[np.ndarray, bool, bool]:
    """Apply value = raw * slope + intercept; returns (values, integral, identity)."""
    is_int = np.issubdtype(raw.dtype, np.integer)
    if slope == 1.0 and intercept == 0.0:
        return raw, is_int, True
    values = raw.astype(np.float64) * slope + intercept
    return values, is_int and float(slope).is_integer() and float(intercept).is_integer(), False


def _classic_slice(path: Path) -> _Slice:
    """Read one single-frame image file (pixels included) into a _Slice."""
    source = str(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, force=False)
    except Exception as exc:
        raise LdmError(f"cannot read {source} ({short_reason(exc)}); remove or replace it") from None
    raw = _pixel_array(ds, source)
    if raw.ndim != 2:
        raise LdmError(f"{source} has pixel data of shape {raw.shape}; expected one 2D frame")
    if ds.get("ModalityLUTSequence"):
        values, integral, identity = apply_modality_lut(raw, ds), True, False
    else:
        try:
            slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
            intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
        except (TypeError, ValueError):
            raise LdmError(f"{source} has a malformed RescaleSlope/RescaleIntercept") from None
        values, integral, identity = _rescaled(raw, slope, intercept)
    return _Slice(
        position=_floats(ds.get("ImagePositionPatient"), 3, "ImagePositionPatient", source),
        orientation=_floats(ds.get("ImageOrientationPatient"), 6, "ImageOrientationPatient", source),
        pixel_spacing=_pixel_spacing(ds, source),
        thickness=_thickness(ds),
        pixels=values,
        integral=integral,
        identity=identity,
        instance=_int_or_none(ds.get("InstanceNumber")),
        source=source,
        file=source,
    )


def _pixel_spacing(ds: Dataset, source: str) -> tuple[float, float]:
    """PixelSpacing (or ImagerPixelSpacing), defaulting to 1 mm when absent."""
    for key in ("PixelSpacing", "ImagerPixelSpacing"):
        sp = _floats(ds.get(key), 2, key, source)
        if sp is not None:
            if np.any(sp <= 0):
                raise LdmError(f"{source} has a non-positive {key}: {list(sp)}")
            return float(sp[0]), float(sp[1])
    return 1.0, 1.0


def _thickness(ds: Dataset) -> float | None:
    """SpacingBetweenSlices or SliceThickness (used only for single-slice volumes)."""
    for key in ("SpacingBetweenSlices", "SliceThickness"):
        try:
            value = float(ds.get(key) or 0)
        except (TypeError, ValueError):
            continue
        if value > 0:
            return abs(value)
    return None


def _int_or_none(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _group_attr(ds: Dataset, frame: int, sequence: str, attr: str):
    """An attribute from a functional group: per-frame first, then shared; None if absent."""
    for groups, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        seq = ds.get(groups)
        if seq is None or len(seq) <= index:
            continue
        inner = seq[index].get(sequence)
        if inner and attr in inner[0]:
            return inner[0].get(attr)
    return None


def _multiframe_slices(path: Path) -> list[_Slice]:
    """Split one multi-frame file (enhanced CT/MR or RT dose style) into _Slices."""
    source = str(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, force=False)
    except Exception as exc:
        raise LdmError(f"cannot read {source} ({short_reason(exc)}); remove or replace it") from None
    n = _n_frames(ds)
    frames = _pixel_array(ds, source)
    if frames.shape != (n, int(ds.Rows), int(ds.Columns)):
        raise LdmError(f"{source} has pixel data of shape {frames.shape}; expected {n} frames")
    slices = []
    if ds.get("PerFrameFunctionalGroupsSequence"):
        for f in range(n):
            label = f"{source} frame {f + 1}"
            position = _floats(
                _group_attr(ds, f, "PlanePositionSequence", "ImagePositionPatient"), 3, "ImagePositionPatient", label
            )
            orientation = _floats(
                _group_attr(ds, f, "PlaneOrientationSequence", "ImageOrientationPatient"),
                6,
                "ImageOrientationPatient",
                label,
            )
            spacing = _floats(_group_attr(ds, f, "PixelMeasuresSequence", "PixelSpacing"), 2, "PixelSpacing", label)
            thickness = _group_attr(ds, f, "PixelMeasuresSequence", "SliceThickness")
            slope = _group_attr(ds, f, "PixelValueTransformationSequence", "RescaleSlope")
            intercept = _group_attr(ds, f, "PixelValueTransformationSequence", "RescaleIntercept")
            if slope is None:
                slope = ds.get("RescaleSlope", 1.0)
            if intercept is None:
                intercept = ds.get("RescaleIntercept", 0.0)
            values, integral, identity = _rescaled(frames[f], float(slope or 1.0), float(intercept or 0.0))
            slices.append(
                _Slice(
                    position,
                    orientation,
                    (1.0, 1.0) if spacing is None else (float(spacing[0]), float(spacing[1])),
                    float(thickness) if thickness else None,
                    values,
                    integral,
                    identity,
                    None,
                    label,
                    source,
                    f,
                )
            )
        return slices
    offsets = _floats(ds.get("GridFrameOffsetVector"), n, "GridFrameOffsetVector", source)
    position = _floats(ds.get("ImagePositionPatient"), 3, "ImagePositionPatient", source)
    orientation = _floats(ds.get("ImageOrientationPatient"), 6, "ImageOrientationPatient", source)
    if offsets is None or position is None or orientation is None:
        raise LdmError(f"{source} has {n} frames but no per-frame positions; cannot build a 3D volume")
    normal = np.cross(orientation[:3], orientation[3:])
    scale = float(ds.get("DoseGridScaling", 1.0) or 1.0)
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0) * scale
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0) * scale
    for f in range(n):
        values, integral, identity = _rescaled(frames[f], slope, intercept)
        slices.append(
            _Slice(
                position + (offsets[f] - offsets[0]) * normal,
                orientation,
                _pixel_spacing(ds, source),
                None,
                values,
                integral,
                identity,
                None,
                f"{source} frame {f + 1}",
                source,
                f,
            )
        )
    return slices


def _check_consistent(slices: Sequence[_Slice], label: str) -> None:
    """All slices share image size, orientation and pixel spacing."""
    first = slices[0]
    for s in slices[1:]:
        if s.pixels.shape != first.pixels.shape:
            raise LdmError(f"{label} mixes image sizes ({first.pixels.shape} and {s.pixels.shape} in {s.source})")
        if not np.allclose(s.orientation, first.orientation, atol=1e-3):
            raise LdmError(f"{label} mixes slice orientations ({s.source}); ldmtool needs one stack of parallel slices")
        if not np.allclose(s.pixel_spacing, first.pixel_spacing, rtol=1e-3):
            raise LdmError(f"{label} mixes pixel spacings ({s.source})")


def _order(slices: list[_Slice], normal: np.ndarray, label: str) -> list[_Slice]:
    """Sort by position along the slice normal; keep InstanceNumber order when it is reversed."""
    proj = np.array([s.position @ normal for s in slices])
    idx = np.argsort(proj, kind="stable")
    ordered = [slices[i] for i in idx]
    gaps = np.diff(proj[idx])
    if np.any(gaps < _POSITION_TOL_MM):
        n_dup = int(np.sum(gaps < _POSITION_TOL_MM))
        raise LdmError(
            f"{label} has {n_dup} duplicate slice position(s) (several echoes, phases or "
            "time points?); ldmtool needs one slice per position"
        )
    mean = (proj[idx][-1] - proj[idx][0]) / (len(slices) - 1)
    if np.max(np.abs(gaps - mean)) > max(0.01, 0.01 * mean):
        worst = int(np.argmax(np.abs(gaps - mean)))
        raise LdmError(
            f"{label} has irregular slice spacing ({gaps.min():.4g} to {gaps.max():.4g} mm; "
            f"{gaps[worst]:.4g} mm between {ordered[worst].source} and {ordered[worst + 1].source}: "
            "a slice missing?); ldmtool needs evenly spaced slices"
        )
    numbers = [s.instance for s in ordered]
    if None not in numbers and all(a > b for a, b in zip(numbers, numbers[1:], strict=False)):
        ordered.reverse()
    return ordered


def _assemble(
    slices: list[_Slice], label: str, allow_single_slice: bool
) -> tuple[np.ndarray, np.ndarray, list[_Slice]]:
    """Stack slices into an (I, J, K) array and build the RAS affine; also the slices in K order."""
    rows, cols = slices[0].pixels.shape
    if len(slices) == 1 and not allow_single_slice:
        raise LdmError(f"{label} is 2D (a single {rows}x{cols} slice); ldmtool needs 3D volumes")
    if len(slices) > 1:
        if any(s.position is None or s.orientation is None for s in slices):
            raise LdmError(f"{label} lacks ImagePositionPatient/ImageOrientationPatient; cannot order its slices")
        _check_consistent(slices, label)
    first = slices[0]
    orientation = first.orientation if first.orientation is not None else np.array([1.0, 0, 0, 0, 1, 0])
    row, col = orientation[:3], orientation[3:]
    normal = np.cross(row, col)
    if np.linalg.norm(normal) < 1e-3:
        raise LdmError(f"{label} has a degenerate ImageOrientationPatient {list(orientation)}")
    normal = normal / np.linalg.norm(normal)
    if len(slices) > 1:
        slices = _order(slices, normal, label)
        step = (slices[-1].position - slices[0].position) / (len(slices) - 1)
    else:
        step = normal * (first.thickness or 1.0)
    origin = slices[0].position if slices[0].position is not None else np.zeros(3)
    row_spacing, col_spacing = slices[0].pixel_spacing
    lps = np.eye(4)
    lps[:3, 0] = row * col_spacing
    lps[:3, 1] = col * row_spacing
    lps[:3, 2] = step
    lps[:3, 3] = origin
    return _stack(slices), LPS_TO_RAS @ lps, slices


def _stack(slices: list[_Slice]) -> np.ndarray:
    """Stack transposed slices along axis 2 with a dtype that keeps the values exact if possible."""
    data = np.stack([s.pixels.T for s in slices], axis=2)
    if not data.dtype.isnative:
        data = data.astype(data.dtype.newbyteorder("="))
    if all(s.identity for s in slices) and np.issubdtype(data.dtype, np.integer):
        return data
    if all(s.integral for s in slices):
        lo, hi = (float(data.min()), float(data.max())) if data.size else (0.0, 0.0)
        for dtype in (np.int16, np.int32):
            info = np.iinfo(dtype)
            if info.min <= lo and hi <= info.max:
                return data.astype(dtype)
    return data.astype(np.float32)


_UNCOMPRESSED = {
    pydicom.uid.ImplicitVRLittleEndian,
    pydicom.uid.ExplicitVRLittleEndian,
    pydicom.uid.ExplicitVRBigEndian,
}


def _check_declared_size(label: str, items: list[tuple[Path, Dataset]]) -> None:
    """Before reading pixels: the memory guard on Rows x Columns x slices, and a file-size check
    (uncompressed files must hold at least the pixel bytes their header declares)."""
    first = items[0][1]
    n = sum(_n_frames(ds) for _, ds in items)
    check_voxel_count(label, (int(first.Columns), int(first.Rows), n))
    for f, ds in items:
        meta = getattr(ds, "file_meta", None)
        syntax = meta.get("TransferSyntaxUID") if meta is not None else None
        if syntax not in _UNCOMPRESSED:
            continue
        try:
            need = int(ds.Rows) * int(ds.Columns) * _n_frames(ds) * int(ds.get("BitsAllocated", 16) or 16) // 8
        except (TypeError, ValueError):
            continue
        size = f.stat().st_size
        if size < need:
            raise LdmError(
                f"{f} is cut short: its header declares {ds.Rows}x{ds.Columns}x{_n_frames(ds)} pixels "
                f"({need:,} bytes) but the file holds {size:,} bytes; remove or replace it, then rerun"
            )


def _stored_dtype(ds: Dataset) -> str:
    """The numpy type of the stored pixel values (BitsAllocated, PixelRepresentation)."""
    bits = int(ds.get("BitsAllocated", 16) or 16)
    if bits in (32, 64) and "PixelRepresentation" not in ds:  # Float / Double Float Pixel Data
        return f"float{bits}"
    bits = 8 if bits <= 8 else 16 if bits <= 16 else 32 if bits <= 32 else 64
    return f"{'int' if int(ds.get('PixelRepresentation', 0) or 0) else 'uint'}{bits}"


def read_dicom(path: str | os.PathLike, series_uid: str | None = None, *, allow_single_slice: bool = False) -> Volume:
    """Read one DICOM series (a file, or a folder searched recursively) into a Volume.

    A folder may hold non-DICOM files and DICOMDIR indexes (skipped). With several series,
    ``series_uid`` picks one; otherwise LdmError lists them. A multi-frame file is read as a
    volume; a single slice is refused as 2D unless ``allow_single_slice``. Rescale
    slope/intercept are applied per slice. Integer results stay integer, others are float32.

    Damaged files are refused, never dropped (a series read without its first or last slice
    would look complete): LdmError names a file that looks like DICOM but cannot be read, i.e.
    one with the DICM marker or a .dcm/.dicom/.ima suffix that fails to parse, one that fails
    to parse and has the suffix of the image files next to it (unless it is text), one whose
    header stops before its image attributes while its SOP class or series UID is that of the
    images found, and one whose pixel data is shorter than its header declares. Hidden files
    (.DS_Store), DICOMDIR, text files and other unparsable files are ignored. Before any
    pixel data is read, Columns x Rows x slices is checked against the memory guard
    (:mod:`ldmtool.io.limits`). ``meta["dtype"]`` is the stored pixel type and
    ``meta["value_dtype"]`` the type of the returned array (exact for the values as read).
    """
    p = Path(path)
    uid, items = _pick_series(p, _collect(p), series_uid)
    label = str(p) if len(items) == 1 or p.is_file() else f"series {uid or '<no UID>'} in {p}"
    _check_declared_size(label, items)
    multi = [f for f, ds in items if _n_frames(ds) > 1]
    if multi and len(items) > 1:
        raise LdmError(f"{label} mixes multi-frame files ({multi[0]}) with other files; pass one file")
    if multi:
        slices = _multiframe_slices(multi[0])
    else:
        slices = [_classic_slice(f) for f, _ in items]
    array, affine, ordered = _assemble(slices, label, allow_single_slice)
    header = items[0][1]
    meta = {
        "format": "dicom",
        "path": str(p),
        "modality": str(header.get("Modality", "") or ""),
        "series_uid": uid,
        "series_description": str(header.get("SeriesDescription", "") or ""),
        "n_files": len(items),
        "dtype": _stored_dtype(header),  # the stored pixel type of the files
        "value_dtype": str(array.dtype),  # a type that holds the values as read exactly (see _stack)
        # where each slice k comes from: [file, frame index or None] (to reference the source, e.g. in DICOM SEG)
        "slice_sources": [[s.file, s.frame] for s in ordered],
    }
    return Volume(array, affine, meta)
