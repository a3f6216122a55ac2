"""2D images: PNG/JPEG/TIFF files (Pillow) and single-frame 2D DICOM radiographs (pydicom).

A 2D image is held as a Volume of one slice, so that the slice autoencoder and every other
volume path take it unchanged: array (columns, rows, 1), i.e. the picture transposed, the same
axis order as the DICOM reader's volumes (I along a row, J down the columns), and a diagonal
affine diag(column spacing, row spacing, 1) in mm (1 mm where the file states none). Projection
images have no patient coordinate system, so the affine is positive-diagonal: reorientation to
RAS leaves the pixels as they are and a written image has the orientation of the read one.
``meta["dims"] = 2`` marks a 2D image.
"""

from __future__ import annotations

import datetime as _dt
import os
import warnings
from pathlib import Path

import numpy as np

from ldmtool.errors import LdmError
from ldmtool.io._util import short_reason
from ldmtool.io.atomic import atomic_path
from ldmtool.io.limits import check_voxel_count
from ldmtool.io.volume import Volume

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
# single-frame DICOM images without patient position, or of these modalities, are 2D pictures
PROJECTION_MODALITIES = ("CR", "DX", "MG", "IO", "PX", "RG", "XA", "RF")
_GREY_MODES = ("L", "I;16", "I;16B", "I;16L", "I", "F", "1", "LA")


def is_image_path(path: str | os.PathLike) -> bool:
    """True if the file name ends in .png, .jpg/.jpeg or .tif/.tiff (case-insensitive)."""
    return str(path).lower().endswith(IMAGE_SUFFIXES)


def is_2d_dicom_header(ds) -> bool:
    """True for a single-frame DICOM image that is a 2D picture rather than a slice of a volume:
    a projection modality (CR, DX, MG, ...) or no ImagePositionPatient."""
    if "Rows" not in ds or "Columns" not in ds:
        return False
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        frames = 1
    if frames > 1 or "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds:
        return False  # multi-frame and enhanced objects (volumes, DICOM SEG) are not pictures
    modality = str(ds.get("Modality", "") or "").upper()
    return modality in PROJECTION_MODALITIES or "ImagePositionPatient" not in ds


def image_volume(pixels: np.ndarray, spacing: tuple[float, float], meta: dict) -> Volume:
    """A 2D picture (rows, columns) as a one-slice Volume (columns, rows, 1) with its pixel spacing
    (between rows, between columns) in mm."""
    affine = np.diag([float(spacing[1]), float(spacing[0]), 1.0, 1.0])
    array = np.ascontiguousarray(pixels.T[:, :, None])
    return Volume(array, affine, {"dims": 2, "value_dtype": str(array.dtype), **meta})


def picture(volume: Volume) -> np.ndarray:
    """The (rows, columns) picture of a one-slice Volume (inverse of `image_volume`)."""
    array = np.asarray(volume.array)
    if array.ndim != 3 or array.shape[2] != 1:
        raise LdmError(f"a 2D image needs one slice; got an array of shape {array.shape}")
    return np.ascontiguousarray(array[:, :, 0].T)


def read_image(path: str | os.PathLike) -> Volume:
    """Read a PNG/JPEG/TIFF file (Pillow) as a one-slice Volume.

    Grey images (8-bit, 16-bit, float) keep their values. A colour image is a one-line LdmError
    (ldmtool trains on one grey channel), unless its three channels are equal (a grey picture
    stored as RGB). A multi-page TIFF is refused. TIFF resolution tags in pixels per cm
    give the pixel spacing; otherwise it is 1 mm."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise LdmError(f"{p} does not exist" if not p.exists() else f"{p} is a folder, not an image file")
    try:
        with Image.open(p) as img:
            check_voxel_count(str(p), (img.width, img.height, 1))
            if getattr(img, "n_frames", 1) > 1:
                raise LdmError(f"{p} holds {img.n_frames} pages; ldmtool reads one 2D image per file")
            mode, spacing = img.mode, _tiff_spacing(img)
            pixels = np.asarray(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise LdmError(f"{p} is not a readable image ({short_reason(exc)})") from None
    pixels = _grey_pixels(pixels, mode, p)
    fmt = "png" if p.suffix.lower() == ".png" else "tiff" if p.suffix.lower() in (".tif", ".tiff") else "jpeg"
    return image_volume(pixels, spacing, {"format": fmt, "path": str(p), "dtype": str(pixels.dtype), "modality": ""})


def _grey_pixels(pixels: np.ndarray, mode: str, path: Path) -> np.ndarray:
    """One grey channel of a decoded image; an LdmError for colour (or alpha-only) content."""
    if pixels.dtype == np.bool_:
        pixels = pixels.astype(np.uint8)
    if pixels.ndim == 3:
        if mode == "LA":  # grey + alpha: the grey channel
            return np.ascontiguousarray(pixels[..., 0])
        colour = pixels[..., :3]
        if not (np.array_equal(colour[..., 0], colour[..., 1]) and np.array_equal(colour[..., 0], colour[..., 2])):
            raise LdmError(
                f"{path} is a colour image ({mode}); ldmtool trains on grey images: convert it to greyscale "
                "(e.g. `mogrify -colorspace Gray`) or use grey copies"
            )
        return np.ascontiguousarray(colour[..., 0])
    if mode not in _GREY_MODES and mode != "P":
        raise LdmError(f"{path} has image mode {mode}; ldmtool reads grey images (8/16-bit or float)")
    if mode == "P":
        raise LdmError(f"{path} is a palette (colour-map) image; save it as a greyscale image")
    if not pixels.dtype.isnative:
        pixels = pixels.astype(pixels.dtype.newbyteorder("="))
    return pixels


def _tiff_spacing(img) -> tuple[float, float]:
    """(between rows, between columns) in mm from TIFF resolution tags given per cm (microscopy and
    scanner exports); else 1 mm (a dots-per-inch value is a display setting, not a pixel size)."""
    tags = getattr(img, "tag_v2", None)
    if not tags or int(tags.get(296, 2)) != 3:  # ResolutionUnit 3 = centimetre
        return 1.0, 1.0
    x, y = tags.get(282), tags.get(283)
    if not x or not y or float(x) <= 0 or float(y) <= 0:
        return 1.0, 1.0
    return 10.0 / float(y), 10.0 / float(x)


def write_png(volume: Volume, path: str | os.PathLike, dtype: str = "uint8") -> Path:
    """Write a one-slice Volume as a grey PNG (atomically), values rounded and clipped to `dtype`
    (uint8 or uint16). Returns the path."""
    from PIL import Image

    if dtype not in ("uint8", "uint16"):
        raise LdmError(f"PNG stores uint8 or uint16 grey values, not {dtype}")
    info = np.iinfo(dtype)
    values = picture(volume)
    if not np.all(np.isfinite(values)):
        raise LdmError("cannot write PNG: the image contains NaN or infinite values")
    pixels = np.clip(np.rint(values), info.min, info.max).astype(dtype)
    out = Path(path)
    with atomic_path(out) as tmp:
        Image.fromarray(pixels).save(tmp, format="PNG")
    return out


def write_like_input(volume: Volume, base: str | os.PathLike, dtype=None) -> Path:
    """Write an output derived from an input file as that input is stored: `base`.png for a volume
    read from a PNG/JPEG/TIFF picture of 8 or 16 bits (`dtype`, default the picture's; values
    rounded and clipped), else `base`.nii.gz (`dtype` as for `write_nifti`). Returns the path."""
    from ldmtool.io.nifti import write_nifti

    kind = str(np.dtype(dtype)) if dtype is not None else str(volume.meta.get("dtype", ""))
    if volume.meta.get("format") in ("png", "jpeg", "tiff") and kind in ("uint8", "uint16"):
        return write_png(volume, f"{base}.png", kind)
    return write_nifti(volume, f"{base}.nii.gz", dtype=dtype)


def read_dicom_2d(path: str | os.PathLike) -> Volume:
    """Read a single-frame 2D DICOM image (CR, DX, MG, secondary capture, ...) as a one-slice Volume.

    Pixel spacing: PixelSpacing, else ImagerPixelSpacing, else 1 mm. The modality rescale
    (slope/intercept) is applied; MONOCHROME1 (white = low) is inverted to MONOCHROME2 so a
    brighter pixel always holds a higher value. Colour images are a one-line LdmError."""
    import pydicom
    from pydicom.pixels import apply_modality_lut

    p = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(p)
            if not is_2d_dicom_header(ds):
                raise LdmError(f"{p} is not a single-frame 2D DICOM image")
            check_voxel_count(str(p), (int(ds.Columns), int(ds.Rows), 1))
            raw = ds.pixel_array
    except LdmError:
        raise
    except Exception as exc:  # pydicom raises many types for damaged files and missing decoders
        raise LdmError(f"{p} is not a readable DICOM image ({short_reason(exc)})") from None
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1 or not photometric.startswith("MONOCHROME"):
        raise LdmError(f"{p} is a colour DICOM image ({photometric}); ldmtool trains on grey images")
    values = apply_modality_lut(raw, ds)
    if photometric == "MONOCHROME1":
        values = values.max() + values.min() - values
    if np.issubdtype(values.dtype, np.floating) and np.all(values == np.rint(values)):
        if values.min() >= np.iinfo(np.int32).min and values.max() <= np.iinfo(np.int32).max:
            values = values.astype(np.int32)
    if not values.dtype.isnative:
        values = values.astype(values.dtype.newbyteorder("="))
    spacing = _dicom_spacing(ds)
    meta = {
        "format": "dicom",
        "path": str(p),
        "modality": str(ds.get("Modality", "") or ""),
        "dtype": str(raw.dtype),
        "photometric": photometric,
    }
    return image_volume(values, spacing, meta)


def _dicom_spacing(ds) -> tuple[float, float]:
    """(between rows, between columns) in mm: PixelSpacing, else ImagerPixelSpacing, else 1 mm."""
    for key in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(key)
        try:
            row, col = (float(v) for v in value)
        except (TypeError, ValueError):
            continue
        if row > 0 and col > 0:
            return row, col
    return 1.0, 1.0


def write_dicom_2d(
    volume: Volume, path: str | os.PathLike, *, modality: str = "OT", series_description: str = "SYNTHETIC (ldmtool)"
) -> Path:
    """Write a one-slice Volume as one fresh Secondary Capture DICOM file (atomically).

    The same synthetic identity as `write_dicom_series` (fresh UIDs, SYNTHETIC patient and
    series description, ImageType DERIVED\\SECONDARY, nothing from any source file); Modality is
    the training data's (CR, DX, MG, OT, ...), PixelSpacing the volume's; no patient position
    (a projection image). Returns the path."""
    from pydicom.uid import generate_uid

    from ldmtool.io.dicom_write import _base_dataset, _ds, _new_instance, _pixel_module, _quantise

    values = picture(volume)
    if "SYNTHETIC" not in series_description.upper():
        series_description = f"SYNTHETIC {series_description}"
    stored, slope, intercept = _quantise(values[:, :, None], "OT", True)
    uids = {"study": generate_uid(), "series": generate_uid(), "frame": generate_uid(), "number": 1}
    ds = _base_dataset("OT", series_description[:64], uids, _dt.datetime.now())
    del ds.FrameOfReferenceUID, ds.PositionReferenceIndicator  # a projection image has no patient frame
    ds.Modality = (modality or "OT").upper()[:16]
    _new_instance(ds, ds.SOPClassUID)
    ds.InstanceNumber = 1
    ds.PatientOrientation = ""
    col_spacing, row_spacing = volume.spacing[:2]
    ds.PixelSpacing = [_ds(row_spacing), _ds(col_spacing)]
    ds.Rows, ds.Columns = values.shape
    pixels = stored[:, :, 0]
    _pixel_module(ds, pixels)
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = _ds(slope), _ds(intercept), "US"
    lo, hi = float(values.min()), float(values.max())
    ds.WindowCenter, ds.WindowWidth = _ds((lo + hi) / 2.0), _ds(max(hi - lo, 1.0))
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    out = Path(path)
    with atomic_path(out) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return out
