"""Read and write NIfTI-1 volumes (.nii, .nii.gz) with nibabel."""

from __future__ import annotations

import math
import os
from pathlib import Path

import nibabel as nib
import numpy as np

from ldmtool.errors import LdmError
from ldmtool.io._util import short_reason
from ldmtool.io.atomic import atomic_path
from ldmtool.io.limits import check_voxel_count
from ldmtool.io.volume import Volume

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_nifti_path(path: str | os.PathLike) -> bool:
    """True if the file name ends in .nii or .nii.gz (case-insensitive)."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def _squeeze_to_3d(data: np.ndarray, path: Path, allow_single_slice: bool) -> np.ndarray:
    """Drop trailing singleton dimensions beyond the third; reject 2D and real 4D+ images."""
    shape = data.shape
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim > 3:
        raise LdmError(f"{path} is {len(shape)}D (shape {shape}); ldmtool needs a 3D volume")
    if data.ndim < 3 or (1 in data.shape and not allow_single_slice):
        raise LdmError(f"{path} is 2D (shape {shape}); ldmtool needs 3D volumes")
    return data


def read_nifti(path: str | os.PathLike, *, allow_single_slice: bool = False) -> Volume:
    """Read a 3D NIfTI file into a Volume (scaled data; integer dtype kept for integer files).

    nibabel applies scl_slope/scl_inter, so scaled files come back as floats while label
    files stored as integers without scaling keep their integer dtype. A 4D file whose 4th
    dimension is 1 is squeezed to 3D. ``allow_single_slice`` accepts volumes with a
    dimension of size 1 (otherwise rejected as 2D).

    Before any voxel is read, the declared shape is checked against the memory guard
    (:mod:`ldmtool.io.limits`) and an uncompressed file against the size its header declares.
    ``meta["dtype"]`` is the on-disk type, ``meta["value_dtype"]`` the type of the returned array.
    """
    p = Path(path)
    if not p.exists():
        raise LdmError(f"{p} does not exist")
    if p.is_dir():
        raise LdmError(f"{p} is a folder, not a NIfTI file")
    try:
        img = nib.load(str(p), mmap=False)
    except Exception as exc:  # nibabel raises several types for bad headers
        raise LdmError(f"{p} is not a NIfTI file ({short_reason(exc)})") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise LdmError(f"{p} is not a NIfTI file (nibabel reads it as {type(img).__name__})")
    shape = tuple(int(s) for s in img.header.get_data_shape())
    check_voxel_count(str(p), shape)
    _check_file_size(p, img, shape)
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # truncated / corrupt compressed stream
        dims = "x".join(map(str, shape))
        raise LdmError(
            f"{p} is truncated or corrupt: its header declares {dims} voxels of "
            f"{img.get_data_dtype()} that cannot be read ({short_reason(exc).removesuffix(' from')}); "
            "replace the file"
        ) from None
    data = np.asarray(_squeeze_to_3d(data, p, allow_single_slice))
    if not data.dtype.isnative:  # e.g. big-endian files; torch needs native byte order
        data = data.astype(data.dtype.newbyteorder("="))
    header = img.header
    meta = {
        "format": "nifti",
        "path": str(p),
        "dtype": str(img.get_data_dtype()),  # stored on disk
        "value_dtype": str(data.dtype),  # of the values as read (float when scl_slope/scl_inter scale them)
        "zooms": tuple(float(z) for z in header.get_zooms()[:3]),
        "qform_code": int(header["qform_code"]),
        "sform_code": int(header["sform_code"]),
    }
    return Volume(data, np.asarray(img.affine, dtype=np.float64), meta)


def _check_file_size(p: Path, img, shape: tuple[int, ...]) -> None:
    """LdmError if an uncompressed file is shorter than its header's offset plus voxel bytes."""
    if p.name.lower().endswith(".gz"):
        return  # the compressed size says nothing; a short stream fails while reading
    need = int(img.header.get("vox_offset", 0) or 0) + math.prod(shape) * img.get_data_dtype().itemsize
    size = p.stat().st_size
    if size < need:
        dims = "x".join(map(str, shape))
        raise LdmError(
            f"{p} is truncated: its header declares {dims} voxels of {img.get_data_dtype()} "
            f"({need:,} bytes with the header) but the file holds {size:,} bytes; replace the file"
        )


def _default_dtype(array: np.ndarray) -> np.dtype:
    """A NIfTI-friendly dtype for ``array``: bool -> uint8, int64 -> int32 when it fits."""
    dtype = array.dtype
    if dtype == np.bool_:
        return np.dtype(np.uint8)
    if dtype in (np.int64, np.uint64):
        if array.size == 0:
            return np.dtype(np.int32)
        lo, hi = int(array.min()), int(array.max())
        for candidate in (np.uint8, np.int16, np.int32):
            info = np.iinfo(candidate)
            if info.min <= lo and hi <= info.max:
                return np.dtype(candidate)
        return np.dtype(np.int64)
    if dtype == np.float16:
        return np.dtype(np.float32)
    return dtype


def cast_to(array: np.ndarray, dtype: np.dtype | str) -> np.ndarray:
    """``array`` as ``dtype``; to an integer type values are rounded and clipped to its range
    (never wrapped around), NaN becomes 0."""
    dtype = np.dtype(dtype)
    if array.dtype == dtype:
        return array
    if np.issubdtype(dtype, np.integer) and array.dtype != np.bool_:
        info = np.iinfo(dtype)
        if np.issubdtype(array.dtype, np.floating):
            array = np.nan_to_num(np.rint(array), nan=0.0, posinf=info.max, neginf=info.min)
            return np.clip(array, info.min, info.max).astype(dtype)
        src = np.iinfo(array.dtype)
        if src.min < info.min or src.max > info.max:
            array = np.clip(array, max(info.min, src.min), min(info.max, src.max))
    return array.astype(dtype)


def write_nifti(volume: Volume, path: str | os.PathLike, dtype: np.dtype | str | None = None) -> Path:
    """Write ``volume`` as NIfTI (format from the suffix), atomically; returns the path.

    The affine is stored as both sform and qform (code 1, scanner coordinates) and units
    are millimetres. ``dtype`` forces the on-disk type, e.g. the input's
    ``volume.meta["value_dtype"]`` (to an integer type values are rounded and clipped, see
    :func:`cast_to`); default: the array's own type, with bool stored as uint8 and int64
    narrowed when the values fit).
    """
    p = Path(path)
    if not is_nifti_path(p):
        raise LdmError(f"NIfTI output {p} must end in .nii or .nii.gz")
    array = np.asarray(volume.array)
    if array.ndim != 3:
        raise LdmError(f"cannot write {p}: volume has shape {array.shape}, expected 3D")
    out_dtype = np.dtype(dtype) if dtype is not None else _default_dtype(array)
    array = cast_to(array, out_dtype)
    affine = np.asarray(volume.affine, dtype=np.float64)
    img = nib.Nifti1Image(array, affine, dtype=out_dtype)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    img.header.set_xyzt_units("mm")
    with atomic_path(p) as tmp:
        nib.save(img, str(tmp))
    return p
