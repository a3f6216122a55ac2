"""Preprocessing applied to every training case and recorded in the model config.

Order: label mapping (merge/rename, ldmtool/data/labels.py) -> reorient -> resample to the target
spacing -> normalise intensities (per case) -> centre crop/pad to the target shape. Image and label go through identical geometry; every step updates the affine,
so the returned Volume's affine maps its array's voxel indices to the same world (RAS+, mm)
points as the input (a world point keeps its anatomy).

Geometry is done with nibabel orientation transforms and scipy.ndimage so that each affine
update is exact: reorienting permutes/flips axes, resampling keeps the axis directions and the
field of view (shape * spacing, centred on the same world point), crop/pad shifts the origin.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from nibabel import orientations as nio
from scipy import ndimage as ndi

from ldmtool.config import setting
from ldmtool.data.labels import LabelMap, parse_labels
from ldmtool.errors import LdmError
from ldmtool.io.volume import Volume

__all__ = ["PreprocessConfig", "PreprocessedCase", "denormalise", "fit_shape", "preprocess_case"]

IntensityMode = Literal["percentile", "ct_window", "none"]
_INTENSITY_MODES = ("percentile", "ct_window", "none")
_AXIS_PAIRS = (("L", "R"), ("P", "A"), ("I", "S"))


def _float_tuple(value: Any, n: int, what: str, hint: str) -> tuple[float, ...]:
    if isinstance(value, (str, bytes, bool)):
        raise LdmError(f"{what} must be {hint}, got {value!r}")
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise LdmError(f"{what} must be {hint}, got {value!r}") from None
    if len(out) != n or any(isinstance(v, bool) for v in value) or not all(map(math.isfinite, out)):
        raise LdmError(f"{what} must be {hint}, got {value!r}")
    return out


@dataclass
class PreprocessConfig:
    """How cases are brought to a common geometry and intensity scale.

    Attributes:
        orientation: axis codes of the output array ("RAS" = I left->right, J posterior->anterior,
            K inferior->superior), any permutation of one letter from each of L/R, P/A, I/S;
            or "none" to keep the input's axes.
        spacing: output voxel size in mm (x, y, z along the output axes); None keeps the input's.
            A single number means isotropic.
        shape: output array shape after resampling (centre crop or pad); None keeps it.
        intensity: "percentile" clips to the case's percentiles and rescales to out_range;
            "ct_window" clips to a fixed (level, width) window in HU and rescales; "none" leaves
            intensities unchanged.
        percentiles: (low, high) percentiles for "percentile", 0 <= low < high <= 100.
        ct_window: (level, width) in HU, required for "ct_window" (e.g. (40, 400) soft tissue).
        out_range: (low, high) of the normalised intensities.
        labels: label mapping {class name: [[lo, hi], ...] source value ranges} (see
            ldmtool/data/labels.py); None keeps the label values as they are.
    """

    orientation: str = setting(
        "RAS", "Axis codes of the output array (any permutation of L/R, P/A, I/S), or none to keep the input's."
    )
    spacing: tuple[float, float, float] | None = setting(
        None, "Resample to this voxel size x,y,z (mm); one number means isotropic (default: the input's)."
    )
    shape: tuple[int, int, int] | None = setting(None, "Crop/pad volumes to I,J,K after resampling.")
    intensity: IntensityMode = setting("percentile", "percentile | ct_window | none.")
    percentiles: tuple[float, float] = setting((0.5, 99.5), "Low, high percentiles clipped to with percentile.")
    ct_window: tuple[float, float] | None = setting(
        None, "CT window level,width (HU), with --intensity ct_window (e.g. 40,400 soft tissue)."
    )
    out_range: tuple[float, float] = setting((0.0, 1.0), "Low, high of the normalised intensities.")
    labels: dict[str, list[list[int]]] | None = setting(
        None, "Label mapping {class name: [[lo, hi], ...] source value ranges}; none keeps label values as they are."
    )

    def __post_init__(self) -> None:
        # orientation
        if not isinstance(self.orientation, str):
            raise LdmError(
                f"orientation must be 3 axis letters such as 'RAS' or 'LPS', or 'none'; got {self.orientation!r}"
            )
        code = self.orientation.strip()
        if code.lower() == "none":
            self.orientation = "none"
        else:
            code = code.upper()
            ok = len(code) == 3 and all(sum(ch in pair for ch in code) == 1 for pair in _AXIS_PAIRS)
            if not ok:
                raise LdmError(
                    f"orientation must be 3 axis letters with one of L/R, one of P/A and one of "
                    f"I/S (such as 'RAS' or 'LPS'), or 'none'; got {self.orientation!r}"
                )
            self.orientation = code

        # spacing
        if self.spacing is not None:
            hint = "three positive numbers in mm (or one for isotropic), or null"
            value = self.spacing
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                value = (value, value, value)
            sp = _float_tuple(value, 3, "spacing", hint)
            if min(sp) <= 0:
                raise LdmError(f"spacing must be {hint}, got {self.spacing!r}")
            self.spacing = sp  # type: ignore[assignment]

        # shape
        if self.shape is not None:
            hint = "three positive integers, or null"
            if isinstance(self.shape, (str, bytes)) or not hasattr(self.shape, "__iter__"):
                raise LdmError(f"shape must be {hint}, got {self.shape!r}")
            vals = list(self.shape)

            def _positive_int(v: Any) -> bool:
                if isinstance(v, bool):
                    return False
                if isinstance(v, float):
                    return v.is_integer() and v > 0
                return isinstance(v, (int, np.integer)) and v > 0

            if len(vals) != 3 or not all(_positive_int(v) for v in vals):
                raise LdmError(f"shape must be {hint}, got {self.shape!r}")
            self.shape = tuple(int(v) for v in vals)  # type: ignore[assignment]

        # intensity
        if self.intensity not in _INTENSITY_MODES:
            raise LdmError(f"intensity must be one of {', '.join(_INTENSITY_MODES)}; got {self.intensity!r}")
        hint = "two numbers (low, high) with 0 <= low < high <= 100"
        pl, ph = _float_tuple(self.percentiles, 2, "percentiles", hint)
        if not (0.0 <= pl < ph <= 100.0):
            raise LdmError(f"percentiles must be {hint}, got {self.percentiles!r}")
        self.percentiles = (pl, ph)

        if self.ct_window is not None:
            hint = "two numbers (level, width) in HU with width > 0, e.g. [40, 400]"
            level, width = _float_tuple(self.ct_window, 2, "ct_window", hint)
            if width <= 0:
                raise LdmError(f"ct_window must be {hint}, got {self.ct_window!r}")
            self.ct_window = (level, width)
        elif self.intensity == "ct_window":
            raise LdmError("intensity 'ct_window' needs ct_window = (level, width) in HU, e.g. [40, 400]")

        hint = "two numbers (low, high) with low < high"
        lo, hi = _float_tuple(self.out_range, 2, "out_range", hint)
        if not lo < hi:
            raise LdmError(f"out_range must be {hint}, got {self.out_range!r}")
        self.out_range = (lo, hi)
        if self.labels is not None:
            self.labels = self.label_map.to_dict()

    @property
    def label_map(self) -> LabelMap | None:
        """The label mapping as a LabelMap, or None."""
        return parse_labels(self.labels)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (tuples become lists)."""
        return {
            "orientation": self.orientation,
            "spacing": list(self.spacing) if self.spacing is not None else None,
            "shape": list(self.shape) if self.shape is not None else None,
            "intensity": self.intensity,
            "percentiles": list(self.percentiles),
            "ct_window": list(self.ct_window) if self.ct_window is not None else None,
            "out_range": list(self.out_range),
            **({"labels": self.labels} if self.labels is not None else {}),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> PreprocessConfig:
        """Inverse of to_dict; missing keys take their defaults, unknown keys are an error."""
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise LdmError(f"preprocessing config must be a mapping, got {type(data).__name__}")
        allowed = tuple(cls.__dataclass_fields__)
        unknown = sorted(set(data) - set(allowed))
        if unknown:
            raise LdmError(
                f"unknown preprocessing option(s) {', '.join(map(str, unknown))}; allowed: {', '.join(allowed)}"
            )
        return cls(**data)


@dataclass
class PreprocessedCase:
    """Output of preprocess_case.

    Attributes:
        image: float32 normalised image with its exact affine.
        label: uint8 label on the same grid, or None.
        intensity_range: (low, high) in source units that were mapped to out_range.
    """

    image: Volume
    label: Volume | None = None
    intensity_range: tuple[float, float] = field(default=(0.0, 1.0))
    missing: Volume | None = None  # uint8, 1 = missing voxel (only when missingness was given)


# ------------------------------------------------------------------------------------------------
# geometry
# ------------------------------------------------------------------------------------------------


def _reorient(arrays: list[np.ndarray], affine: np.ndarray, axcodes: str) -> tuple[list[np.ndarray], np.ndarray]:
    """Permute/flip the arrays so their axes follow `axcodes`; returns the exact new affine."""
    src = nio.io_orientation(affine)
    dst = nio.axcodes2ornt(tuple(axcodes))
    xform = nio.ornt_transform(src, dst)
    if np.array_equal(xform, [[0, 1], [1, 1], [2, 1]]):
        return arrays, affine
    shape = arrays[0].shape
    out = [np.ascontiguousarray(nio.apply_orientation(a, xform)) for a in arrays]
    new_affine = affine @ nio.inv_ornt_aff(xform, shape)
    return out, new_affine


def _resample(
    image: np.ndarray,
    label: np.ndarray | None,
    affine: np.ndarray,
    spacing: tuple[float, float, float],
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Resample to `spacing` keeping axis directions, field of view and its centre."""
    old_spacing = np.linalg.norm(affine[:3, :3], axis=0)
    new_spacing = np.asarray(spacing, dtype=np.float64)
    old_shape = np.asarray(image.shape, dtype=np.float64)
    new_shape = np.maximum(np.round(old_shape * old_spacing / new_spacing), 1).astype(int)
    if np.array_equal(new_shape, image.shape) and np.allclose(old_spacing, new_spacing, rtol=1e-6):
        return image, label, affine
    # Continuous old index for new index i: (i - c_new) * ratio + c_old, c = (n - 1) / 2, so the
    # volume centres coincide. With n_new ~ n_old * ratio the outer voxel edges match too.
    ratio = new_spacing / old_spacing
    offset = (old_shape - 1.0) / 2.0 - ratio * (new_shape - 1.0) / 2.0
    out_image = ndi.affine_transform(
        image.astype(np.float32, copy=False),
        ratio,
        offset=offset,
        output_shape=tuple(new_shape),
        order=1,
        mode="nearest",
    )
    out_label = None
    if label is not None:
        out_label = ndi.affine_transform(
            label, ratio, offset=offset, output_shape=tuple(new_shape), order=0, mode="nearest"
        )
    index_map = np.eye(4)
    index_map[:3, :3] = np.diag(ratio)
    index_map[:3, 3] = offset
    return out_image, out_label, affine @ index_map


def _crop_or_pad(array: np.ndarray, shape: tuple[int, int, int], fill: float) -> tuple[np.ndarray, np.ndarray]:
    """Centre crop/pad; returns the array and the shift s (old index = new index + s)."""
    shift = np.zeros(3)
    pads, crops = [], []
    for axis, (n, target) in enumerate(zip(array.shape, shape)):
        diff = target - n
        if diff >= 0:
            before = diff // 2
            pads.append((before, diff - before))
            crops.append(slice(0, n))
            shift[axis] = -before
        else:
            start = (-diff) // 2
            pads.append((0, 0))
            crops.append(slice(start, start + target))
            shift[axis] = start
    out = array[tuple(crops)]
    if any(p != (0, 0) for p in pads):
        out = np.pad(out, pads, mode="constant", constant_values=fill)
    return np.ascontiguousarray(out), shift


def _fit(arr, lab, gone, affine, shape):
    """Centre crop/pad image (fill: its minimum), label and missing mask (fill 0); shifted affine."""
    arr, shift = _crop_or_pad(arr, shape, float(arr.min()))
    if lab is not None:
        lab, _ = _crop_or_pad(lab, shape, 0)
    if gone is not None:
        gone, _ = _crop_or_pad(gone, shape, 0)
    translate = np.eye(4)
    translate[:3, 3] = shift
    return arr, lab, gone, affine @ translate


def fit_shape(pc: PreprocessedCase, shape: tuple[int, int, int]) -> PreprocessedCase:
    """A preprocessed case centre-cropped/padded to `shape` (the last preprocessing step, for a
    shape chosen after all cases were preprocessed)."""
    if tuple(pc.image.shape) == tuple(shape):
        return pc
    arr, lab, gone, affine = _fit(
        pc.image.array,
        None if pc.label is None else pc.label.array,
        None if pc.missing is None else pc.missing.array,
        np.asarray(pc.image.affine, dtype=np.float64),
        shape,
    )
    image = Volume(np.ascontiguousarray(arr, dtype=np.float32), affine.copy(), dict(pc.image.meta))
    label = None if lab is None else Volume(np.ascontiguousarray(lab), affine.copy(), dict(pc.label.meta))
    missing = None if gone is None else Volume(np.ascontiguousarray(gone), affine.copy(), {})
    return PreprocessedCase(image, label, pc.intensity_range, missing)


# ------------------------------------------------------------------------------------------------
# intensity
# ------------------------------------------------------------------------------------------------


def _intensity_range(array: np.ndarray, cfg: PreprocessConfig) -> tuple[float, float]:
    if cfg.intensity == "ct_window":
        assert cfg.ct_window is not None
        level, width = cfg.ct_window
        return level - width / 2.0, level + width / 2.0
    if cfg.intensity == "none":
        return cfg.out_range
    lo, hi = (float(v) for v in np.percentile(array, cfg.percentiles))
    if not hi > lo:  # mostly-constant image with a few outliers: use the full range instead
        lo, hi = float(array.min()), float(array.max())
    return lo, hi


def _normalise(array: np.ndarray, intensity_range: tuple[float, float], cfg: PreprocessConfig) -> np.ndarray:
    if cfg.intensity == "none":
        return array.astype(np.float32, copy=False)
    lo, hi = intensity_range
    out_lo, out_hi = cfg.out_range
    scaled = (np.clip(array, lo, hi) - lo) / (hi - lo)
    return (out_lo + scaled * (out_hi - out_lo)).astype(np.float32)


def denormalise(array: np.ndarray, intensity_range: tuple[float, float], cfg: PreprocessConfig) -> np.ndarray:
    """Map normalised values (cfg.out_range) back to source units (inverse of the normalisation
    for values that were inside the clip range). Returns float32."""
    arr = np.asarray(array, dtype=np.float32)
    if cfg.intensity == "none":
        return arr.copy()
    lo, hi = (float(v) for v in intensity_range)
    out_lo, out_hi = cfg.out_range
    return (lo + (arr - out_lo) * ((hi - lo) / (out_hi - out_lo))).astype(np.float32)


# ------------------------------------------------------------------------------------------------
# the case
# ------------------------------------------------------------------------------------------------


def _checked_label(label: Volume, shape: tuple[int, ...], affine: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """The label array (uint8) after the configured label mapping, checked against its image."""
    lab_arr = np.asarray(label.array)
    if cfg.labels is not None and lab_arr.shape == shape:
        lab_arr = cfg.label_map.apply(lab_arr)
    if lab_arr.shape != shape:
        raise LdmError(f"label shape {lab_arr.shape} does not match image shape {shape}")
    if not np.allclose(np.asarray(label.affine), affine, rtol=1e-4, atol=1e-2):
        raise LdmError("label geometry (affine) does not match the image's")
    if not np.issubdtype(lab_arr.dtype, np.number) or not np.isfinite(lab_arr).all():
        raise LdmError("label must hold finite integer values")
    if lab_arr.size and (lab_arr.min() < 0 or lab_arr.max() > 255):
        raise LdmError(
            f"label values must be integers in 0..255, found {lab_arr.min():g}..{lab_arr.max():g}; "
            "merge them into classes with --labels (e.g. --labels brain=1-1000)"
        )
    fractional = not np.issubdtype(lab_arr.dtype, np.integer) and not np.all(lab_arr == np.round(lab_arr))
    if fractional:
        raise LdmError("label must hold integer values, found fractional ones")
    return lab_arr.astype(np.uint8)


def preprocess_case(
    image: Volume, label: Volume | None, cfg: PreprocessConfig, missing: np.ndarray | None = None
) -> PreprocessedCase:
    """Bring one case to the configured orientation, spacing, shape and intensity scale.

    `missing` (bool, the image's shape; True = missing voxel) marks voxels whose values are not
    known: they may be NaN, they do not count for the intensity range, and the mask goes through
    the same geometry (a preprocessed voxel is missing when any missing voxel contributes to it).
    """
    arr = np.asarray(image.array)
    if arr.ndim != 3:
        raise LdmError(f"image must be a 3D volume, got an array of shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise LdmError(f"image must hold real numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float32, copy=False)
    finite = np.isfinite(arr)
    if missing is not None:
        missing = np.asarray(missing, dtype=bool)
        if missing.shape != arr.shape:
            raise LdmError(f"missing-voxel mask shape {missing.shape} does not match image shape {arr.shape}")
        if not (finite | missing).all():
            raise LdmError("image contains NaN or infinite values outside the missing voxels")
        if missing.all():
            raise LdmError("every voxel of the image is missing")
    elif not finite.all():
        raise LdmError("image contains NaN or infinite values; fix or mask them before training")
    affine = np.asarray(image.affine, dtype=np.float64)
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise LdmError("image affine is not invertible; the file's geometry header is broken")
    known = arr if missing is None else arr[~missing]
    if float(known.max()) == float(known.min()):
        raise LdmError(
            f"image has zero intensity range (every voxel is {float(known.min()):g}); nothing to learn from it"
        )

    lab = None if label is None else _checked_label(label, arr.shape, affine, cfg)

    intensity_range = _intensity_range(known, cfg)
    gone = None  # missing-voxel mask as float: resampled with the image, > 0 where touched
    if missing is not None:
        arr = np.where(missing, np.float32(intensity_range[0]), arr)
        gone = missing.astype(np.float32)

    # 1. orientation
    if cfg.orientation != "none":
        arrays = [arr] + ([] if lab is None else [lab]) + ([] if gone is None else [gone])
        arrays, new_affine = _reorient(arrays, affine, cfg.orientation)
        arr = arrays[0]
        lab = arrays[1] if lab is not None else None
        gone = arrays[-1] if gone is not None else None
        affine = new_affine

    # 2. spacing
    if cfg.spacing is not None:
        if gone is not None:
            gone, _, _ = _resample(gone, None, affine, cfg.spacing)
        arr, lab, affine = _resample(arr, lab, affine, cfg.spacing)

    # 3. intensity
    arr = _normalise(arr, intensity_range, cfg)

    # 4. shape
    if cfg.shape is not None and tuple(arr.shape) != tuple(cfg.shape):
        arr, lab, gone, affine = _fit(arr, lab, gone, affine, cfg.shape)

    meta = dict(image.meta)
    out_image = Volume(np.ascontiguousarray(arr, dtype=np.float32), affine.copy(), meta)
    out_label = None
    if lab is not None:
        lab_meta = dict(label.meta) if label is not None else {}
        out_label = Volume(np.ascontiguousarray(lab, dtype=np.uint8), affine.copy(), lab_meta)
    lo, hi = (float(v) for v in intensity_range)
    out_missing = None
    if gone is not None:
        out_missing = Volume(np.ascontiguousarray(gone > 1e-3, dtype=np.uint8), affine.copy(), {})
    return PreprocessedCase(out_image, out_label, (lo, hi), out_missing)
