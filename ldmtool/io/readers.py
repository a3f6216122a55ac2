"""One entry point to read or write a volume whatever its format (NIfTI or DICOM)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ldmtool.errors import LdmError
from ldmtool.io.dicom import _read_header, is_dicom_file, read_dicom, write_dicom_series
from ldmtool.io.image2d import is_2d_dicom_header, is_image_path, read_dicom_2d, read_image
from ldmtool.io.nifti import is_nifti_path, read_nifti, write_nifti
from ldmtool.io.volume import Volume

FORMATS = ("nifti", "dicom")


def read_volume(
    path: str | os.PathLike, *, series_uid: str | None = None, allow_nan: bool = False, allow_single_slice: bool = False
) -> Volume:
    """Read a NIfTI file, a DICOM file or a DICOM series folder into a checked 3D Volume.

    Dispatch: .nii/.nii.gz -> NIfTI; .png/.jpg/.tif -> a 2D image; a single-frame 2D DICOM
    file (CR, DX, MG, or without patient position) -> a 2D image; a folder, a .dcm file or any
    file with the DICOM prefix -> DICOM (``series_uid`` picks a series). A 2D image is a
    one-slice Volume with ``meta["dims"] == 2`` (see :mod:`ldmtool.io.image2d`). Voxels that are
    infinite, or NaN unless ``allow_nan``, raise LdmError.
    """
    p = Path(path)
    if not p.exists():
        raise LdmError(f"{p} does not exist")
    if p.is_file() and is_image_path(p):
        volume = read_image(p)
    elif is_2d_dicom_file(p):
        volume = read_dicom_2d(p)
    elif p.is_dir() or p.suffix.lower() == ".dcm" or (not is_nifti_path(p) and is_dicom_file(p)):
        volume = read_dicom(p, series_uid, allow_single_slice=allow_single_slice)
    elif is_nifti_path(p):
        volume = read_nifti(p, allow_single_slice=allow_single_slice)
    else:
        raise LdmError(f"{p} is not a NIfTI or DICOM file")
    check_finite(volume, str(p), allow_nan=allow_nan)
    return volume


def is_2d_dicom_file(path: Path) -> bool:
    """True if `path` is one DICOM file holding a 2D picture (see `is_2d_dicom_header`)."""
    if not path.is_file() or is_nifti_path(path):
        return False
    header = _read_header(path)
    return header is not None and is_2d_dicom_header(header)


def check_finite(volume: Volume, name: str, *, allow_nan: bool = False) -> None:
    """LdmError if ``volume`` has infinite voxels, or NaN voxels unless ``allow_nan``."""
    array = volume.array
    if not np.issubdtype(array.dtype, np.floating):
        return
    n_nan = int(np.count_nonzero(np.isnan(array)))
    if n_nan and not allow_nan:
        raise LdmError(f"{name} contains {n_nan} NaN voxels")
    n_inf = int(np.count_nonzero(np.isinf(array)))
    if n_inf:
        raise LdmError(f"{name} contains {n_inf} infinite voxels")


def write_volume(volume: Volume, path_or_dir: str | os.PathLike, fmt: str = "nifti", **kw) -> Path:
    """Write ``volume`` atomically as NIfTI (a .nii/.nii.gz path) or a DICOM series (a new folder).

    Extra keywords go to :func:`write_nifti` (``dtype``: rounded and clipped to an integer type)
    or :func:`write_dicom_series` (``series_description``, ``modality``, ``rescale``,
    ``study_uid``, ``frame_of_reference_uid``, ``series_number``). Returns the written path.
    """
    fmt = fmt.lower()
    if fmt == "nifti":
        return write_nifti(volume, path_or_dir, **kw)
    if fmt == "dicom":
        return write_dicom_series(volume, path_or_dir, **kw)
    raise LdmError(f"unknown output format {fmt!r}; use one of {', '.join(FORMATS)}")
