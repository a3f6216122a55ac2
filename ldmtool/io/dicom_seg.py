"""DICOM Segmentation (SEG) output for label maps of DICOM inputs, written with highdicom.

A SEG object belongs to its source series: it references the source images (and so carries their
patient and study), so that a PACS or viewer shows it on top of them. This is the opposite of the
synthetic series of `sample --format dicom`, which never carry anything from a source file. One
BINARY segment per foreground class (the label names of the model; coded as SNOMED "Lesion" when
the name says lesion/tumour, else "Tissue"), frames in the source's own
pixel grid: frame k of the SEG lies on source slice k.

:func:`write_synthetic_seg` writes the label map of a synthetic sample the same way, on top of the
synthetic image series just written by `write_dicom_series` (same patient, study and frame of
reference, all synthetic), so a viewer overlays it on that series.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ldmtool.errors import LdmError
from ldmtool.io._util import is_lesion_name, short_reason
from ldmtool.io.atomic import atomic_path


def _source_datasets(slice_sources: list) -> tuple[list, np.ndarray]:
    """The source datasets to reference (no pixel data) and, per source frame, the slice k it is.

    Single-frame series: one dataset per slice, in slice order. One multi-frame file: that file,
    with the mapping from its frame order to the volume's slice order."""
    import pydicom

    files = [str(f) for f, _ in slice_sources]
    frames = [fr for _, fr in slice_sources]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if frames[0] is None:
                datasets = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
                return datasets, np.arange(len(files))
            if len(set(files)) != 1:
                raise LdmError("internal error: a multi-frame volume from several files")
            order = np.argsort(np.asarray(frames))  # source frame f → slice order[f]
            return [pydicom.dcmread(files[0], stop_before_pixels=True)], order
    except OSError as exc:
        raise LdmError(f"cannot read the source DICOM files again for the SEG output ({short_reason(exc)})") from None


def write_dicom_seg(
    label: np.ndarray,
    slice_sources: list,
    label_names: dict[int, str],
    path: Path,
    *,
    algorithm: str,
    version: str,
    description: str,
) -> int:
    """Write `label` (I, J, K: the DICOM input's own voxel grid, as read by `read_dicom`) as a
    BINARY DICOM SEG referencing the source images. Returns the number of segments written."""
    label = np.asarray(label)
    if label.ndim != 3 or label.shape[2] != len(slice_sources):
        raise LdmError(f"internal error: label map {label.shape} does not match {len(slice_sources)} source slices")
    datasets, order = _source_datasets(slice_sources)
    return _write_seg(
        label,
        datasets,
        order,
        label_names,
        path,
        algorithm=algorithm,
        version=version,
        description=description,
        series_number=900,
    )


def _synthetic_series(image_series_dir: Path) -> list:
    """The headers of a synthetic series written by `write_dicom_series`, in slice order (k)."""
    import pydicom

    files = sorted(Path(image_series_dir).glob("*.dcm"))
    if not files:
        raise LdmError(f"{image_series_dir} holds no DICOM files; write the image series first")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        datasets = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    if (
        any("SYNTHETIC" not in str(ds.get("SeriesDescription", "")).upper() for ds in datasets)
        or len({ds.SeriesInstanceUID for ds in datasets}) != 1
    ):
        raise LdmError(
            f"{image_series_dir} is not one synthetic series written by ldmtool; "
            "a synthetic label map can only be written on top of one"
        )
    return sorted(datasets, key=lambda ds: int(ds.InstanceNumber))


def write_synthetic_seg(
    label: np.ndarray,
    image_series_dir: Path,
    label_names: dict[int, str],
    path: Path,
    *,
    series_description: str = "SYNTHETIC ldmtool label",
    algorithm: str = "ldmtool",
    version: str = "1",
    series_number: int = 2,
) -> int:
    """Write the label map of a synthetic sample as a BINARY DICOM SEG on its synthetic image series
    (with `series_number`: after the image series, one per channel of a multi-channel sample).

    `label` is (I, J, K) in the grid of the volume written to `image_series_dir` by
    `write_dicom_series` (slice k = InstanceNumber k + 1). The SEG references every image
    instance and shares its patient, study and frame of reference (all synthetic: nothing from
    a source file); its series description contains SYNTHETIC. One segment per nonzero class in
    `label_names`. Written atomically to `path`; returns the number of segments."""
    label = np.asarray(label)
    datasets = _synthetic_series(Path(image_series_dir))
    rows, cols = int(datasets[0].Rows), int(datasets[0].Columns)
    if label.ndim != 3 or label.shape != (cols, rows, len(datasets)):
        raise LdmError(
            f"internal error: label map {label.shape} does not match the image series "
            f"({cols}x{rows}x{len(datasets)}) in {image_series_dir}"
        )
    if "SYNTHETIC" not in series_description.upper():
        series_description = f"SYNTHETIC {series_description}"
    return _write_seg(
        label,
        datasets,
        np.arange(len(datasets)),
        label_names,
        path,
        algorithm=algorithm,
        version=version,
        description=series_description,
        series_number=series_number,
    )


def _write_seg(
    label: np.ndarray,
    datasets: list,
    order: np.ndarray,
    label_names: dict[int, str],
    path: Path,
    *,
    algorithm: str,
    version: str,
    description: str,
    series_number: int,
) -> int:
    """Build the SEG (one BINARY segment per nonzero class) on `datasets` and write it atomically."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    classes = sorted(c for c in label_names if c != 0)
    # (frames, rows, cols, segments): the volume's axis 0 runs along a DICOM row (columns), axis 1 down the rows
    frames = np.transpose(label, (2, 1, 0))[order]
    stacked = np.stack([frames == c for c in classes], axis=-1).astype(np.uint8)
    algo = hd.AlgorithmIdentificationSequence(
        name=algorithm, family=codes.cid7162.ArtificialIntelligence, version=version
    )
    segments = []
    for number, c in enumerate(classes, start=1):
        if is_lesion_name(label_names[c]):
            category, kind = codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Lesion
        else:
            category, kind = codes.SCT.Tissue, codes.SCT.Tissue
        segments.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=label_names[c][:64],
                segmented_property_category=category,
                segmented_property_type=kind,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algo,
            )
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            seg = hd.seg.Segmentation(
                source_images=datasets,
                pixel_array=stacked,
                segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
                segment_descriptions=segments,
                series_instance_uid=hd.UID(),
                series_number=series_number,
                sop_instance_uid=hd.UID(),
                instance_number=1,
                manufacturer="ldmtool",
                manufacturer_model_name=algorithm,
                software_versions=version,
                device_serial_number="none",
                series_description=description[:64],
                content_label="SEGMENTATION",
                omit_empty_frames=False,
            )
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise LdmError(
            f"cannot build a DICOM SEG for this series ({short_reason(exc)}); use the NIfTI label map"
        ) from None
    with atomic_path(path) as tmp:
        seg.save_as(tmp, enforce_file_format=True)
    return len(segments)
