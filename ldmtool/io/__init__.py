"""Reading, writing and discovering volumes (NIfTI, DICOM), 2D images (PNG/JPEG/TIFF, 2D DICOM) and data sets."""

from ldmtool.io.atomic import atomic_path, atomic_write, atomic_write_bytes, atomic_write_text, check_writable_dir
from ldmtool.io.dataset import Case, Dataset, load_dataset, read_case
from ldmtool.io.dicom import read_dicom, write_dicom_series
from ldmtool.io.image2d import read_dicom_2d, read_image, write_dicom_2d, write_png
from ldmtool.io.nifti import read_nifti, write_nifti
from ldmtool.io.readers import read_volume, write_volume
from ldmtool.io.volume import Volume

__all__ = [
    "Case",
    "Dataset",
    "Volume",
    "atomic_path",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_writable_dir",
    "load_dataset",
    "read_case",
    "read_dicom",
    "read_dicom_2d",
    "read_image",
    "read_nifti",
    "read_volume",
    "write_dicom_2d",
    "write_dicom_series",
    "write_nifti",
    "write_png",
    "write_volume",
]
