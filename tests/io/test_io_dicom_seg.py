"""DICOM SEG output: a label map of a real CT series (pydicom's five-slice CT) written as SEG and read
back with highdicom, frame by frame against the source instances."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pydicom
import pytest

from ldmtool.errors import LdmError
from ldmtool.io import read_dicom
from ldmtool.io.dicom_seg import write_dicom_seg


def _label_for(vol) -> np.ndarray:
    """Class 1 where the CT is above its median, class 2 in a box that differs per slice."""
    label = (vol.array > np.median(vol.array)).astype(np.uint8)
    for k in range(vol.shape[2]):
        label[2 + k : 6 + k, 3:9, k] = 2
    return label


def test_seg_of_a_real_ct_series_matches_the_label_map_on_every_source_slice(pydicom_files, tmp_path):
    folder = pydicom_files / "dicomdirtests" / "98892001" / "CT5N"
    vol = read_dicom(folder)
    assert [f for f, _ in vol.meta["slice_sources"]] and all(fr is None for _, fr in vol.meta["slice_sources"])
    label = _label_for(vol)
    path = tmp_path / "ct_seg.dcm"
    n = write_dicom_seg(
        label,
        vol.meta["slice_sources"],
        {0: "background", 1: "tissue", 2: "lesion"},
        path,
        algorithm="LDSeg",
        version="0.1.0",
        description="ldmtool segmentation (test)",
    )
    assert n == 2 and not list(tmp_path.glob(".*"))
    seg = hd.seg.segread(path)
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation Storage
    assert seg.SegmentationType == "BINARY"
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["tissue", "lesion"]
    assert seg.SegmentSequence[1].SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Lesion"
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Tissue"
    first = pydicom.dcmread(vol.meta["slice_sources"][0][0], stop_before_pixels=True)
    # the SEG belongs to the source study (that is what lets viewers overlay it), in a new series
    assert seg.StudyInstanceUID == first.StudyInstanceUID
    assert seg.SeriesInstanceUID != first.SeriesInstanceUID
    assert seg.FrameOfReferenceUID == first.FrameOfReferenceUID
    for k, (file, _) in enumerate(vol.meta["slice_sources"]):
        uid = pydicom.dcmread(file, stop_before_pixels=True).SOPInstanceUID
        pixels = seg.get_pixels_by_source_instance([uid], segment_numbers=[1, 2])[0]  # (rows, cols, segments)
        np.testing.assert_array_equal(pixels[..., 0], (label[:, :, k] == 1).T)
        np.testing.assert_array_equal(pixels[..., 1], (label[:, :, k] == 2).T)


def test_mismatched_label_map_is_refused(pydicom_files, tmp_path):
    vol = read_dicom(pydicom_files / "dicomdirtests" / "98892001" / "CT5N")
    with pytest.raises(LdmError, match="does not match"):
        write_dicom_seg(
            np.zeros((16, 16, 4), np.uint8),
            vol.meta["slice_sources"],
            {0: "bg", 1: "x"},
            tmp_path / "s.dcm",
            algorithm="UNet",
            version="0",
            description="d",
        )
    assert not list(tmp_path.iterdir())


def test_seg_of_an_enhanced_multiframe_ct_maps_every_frame(pydicom_files, tmp_path):
    # a real enhanced (multi-frame) CT: the five-slice series converted by highdicom; its frames
    # run against the volume's slice order, which the SEG must undo
    folder = pydicom_files / "dicomdirtests" / "98892001" / "CT5N"
    datasets = [pydicom.dcmread(f) for f in sorted(folder.iterdir())]
    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(
        datasets, series_instance_uid=hd.UID(), series_number=5, sop_instance_uid=hd.UID(), instance_number=1
    )
    enhanced.save_as(tmp_path / "enhanced.dcm")
    vol = read_dicom(tmp_path / "enhanced.dcm")
    frames = [fr for _, fr in vol.meta["slice_sources"]]
    assert sorted(frames) == list(range(5)) and frames != list(range(5))
    label = _label_for(vol)
    write_dicom_seg(
        label,
        vol.meta["slice_sources"],
        {0: "background", 1: "tissue", 2: "tumour"},
        tmp_path / "seg.dcm",
        algorithm="UNet",
        version="0.1.0",
        description="ldmtool segmentation (test)",
    )
    seg = hd.seg.segread(tmp_path / "seg.dcm")
    for k, frame in enumerate(frames):
        pixels = seg.get_pixels_by_source_frame(enhanced.SOPInstanceUID, [frame + 1], segment_numbers=[1, 2])[0]
        np.testing.assert_array_equal(pixels[..., 0], (label[:, :, k] == 1).T)
        np.testing.assert_array_equal(pixels[..., 1], (label[:, :, k] == 2).T)


def test_a_source_highdicom_cannot_reference_gives_one_clear_error(pydicom_files, tmp_path):
    vol = read_dicom(pydicom_files / "rtdose.dcm")  # multi-frame RT dose: no functional groups
    with pytest.raises(LdmError, match="cannot build a DICOM SEG"):
        write_dicom_seg(
            (vol.array > vol.array.mean()).astype(np.uint8),
            vol.meta["slice_sources"],
            {0: "bg", 1: "dose"},
            tmp_path / "s.dcm",
            algorithm="UNet",
            version="0",
            description="d",
        )
    assert not list(tmp_path.iterdir())
