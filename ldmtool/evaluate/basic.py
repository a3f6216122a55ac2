"""Basic statistics of image+mask volume sets, real vs synthetic, for a first look."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from ldmtool.errors import LdmError


def volume_stats(image: np.ndarray, label: np.ndarray | None, lesion: int | None) -> dict[str, float]:
    """Statistics of one (I, J, K) volume (several channels, (I, J, K, C): over all channels).

    mean_intensity: mean over all voxels; head_fraction: fraction of voxels with a foreground
    label; lesion_present: 1 if any lesion voxel; lesion_inside: fraction of lesion voxels with no
    background voxel among their 26 neighbours; lesion_components: separate lesions (26-connected);
    slice_mad: mean absolute difference between adjacent slices along K (slice-to-slice coherence).
    """
    image = np.asarray(image, dtype=np.float64)
    out = {"mean_intensity": float(image.mean())}
    if image.shape[2] > 1:  # a 2D image (one slice) has no neighbouring slices
        out["slice_mad"] = float(np.abs(np.diff(image, axis=2)).mean())
    if label is not None:
        label = np.asarray(label)
        out["head_fraction"] = float((label > 0).mean())
        if lesion is not None:
            les = label == lesion
            out["lesion_present"] = float(les.any())
            if les.any():
                out["lesion_components"] = float(ndimage.label(les, structure=np.ones((3, 3, 3)))[1])
                near_bg = ndimage.binary_dilation(label == 0, structure=np.ones((3, 3, 3)))
                out["lesion_inside"] = float((les & ~near_bg).sum() / les.sum())
                out["lesion_voxels"] = float(les.sum())
    return out


def folder_stats(folder: Path) -> tuple[list[dict[str, float]], dict]:
    """Per-case statistics of a data set in any layout ldmtool reads (nnU-Net imagesTr/ + labelsTr/,
    a folder of volumes or 2D images; NIfTI, DICOM, PNG/JPEG/TIFF)."""
    from ldmtool.data.lesions import lesion_class
    from ldmtool.io import load_dataset

    ds = load_dataset(Path(folder))
    if not ds.cases:
        raise LdmError(f"no volumes or images found in {folder}")
    labels = dict(ds.label_names)
    lesion = lesion_class(labels) if len(labels) > 1 else None
    rows, affines = [], []
    for case in ds.cases:
        img, lab = ds.read(case)
        rows.append(volume_stats(img.array, None if lab is None else lab.array, lesion))
        affines.append((img.affine, None if lab is None else lab.affine))
    return rows, {"labels": labels, "affines": affines}


def mean_of(rows: list[dict[str, float]], key: str) -> float:
    vals = [r[key] for r in rows if key in r]
    return float(np.mean(vals)) if vals else float("nan")


def compare_folders(real: Path, synthetic: Path) -> list[tuple[str, float, float, str, bool | None]]:
    """Rows (measure, real, synthetic, target, met?) comparing two image+mask folders."""
    r, _ = folder_stats(real)
    s, sinfo = folder_stats(synthetic)
    same_affine = all(a_lab is None or np.allclose(a_img, a_lab, atol=1e-4) for a_img, a_lab in sinfo["affines"])
    rows: list[tuple[str, float, float, str, bool | None]] = []

    def ratio_row(name: str, key: str, lo: float, hi: float, target: str) -> None:
        rv, sv = mean_of(r, key), mean_of(s, key)
        ok = None if np.isnan(rv) or np.isnan(sv) or rv == 0 else bool(lo <= sv / rv <= hi)
        rows.append((name, rv, sv, target, ok))

    ratio_row("mean intensity", "mean_intensity", 0.75, 1.25, "within ±25%")
    ratio_row("head volume fraction", "head_fraction", 0.75, 1.25, "within ±25%")
    ratio_row("adjacent-slice mean abs difference", "slice_mad", 0.0, 1.5, "≤ 1.5× real")
    rv, sv = mean_of(r, "lesion_present"), mean_of(s, "lesion_present")
    rows.append(("volumes with a lesion (fraction)", rv, sv, "≥ 0.5", None if np.isnan(sv) else bool(sv >= 0.5)))
    rv, sv = mean_of(r, "lesion_inside"), mean_of(s, "lesion_inside")
    rows.append(
        ("lesion voxels inside the head (fraction)", rv, sv, "≥ 0.95", None if np.isnan(sv) else bool(sv >= 0.95))
    )
    rows.append(("mean lesion volume (voxels)", mean_of(r, "lesion_voxels"), mean_of(s, "lesion_voxels"), "", None))
    rows.append(
        (
            "lesions per volume (connected components)",
            mean_of(r, "lesion_components"),
            mean_of(s, "lesion_components"),
            "",
            None,
        )
    )
    rows.append(("image and mask share the affine", 1.0, float(same_affine), "yes", same_affine))
    return rows
