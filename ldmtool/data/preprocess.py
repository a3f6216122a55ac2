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

from dataclasses import dataclass, field

import numpy as np
from nibabel import orientations as nio
from scipy import ndimage as ndi

from ldmtool.data.preprocess_config import _AXIS_PAIRS, _INTENSITY_MODES, IntensityMode, PreprocessConfig  # noqa: F401
from ldmtool.errors import LdmError
from ldmtool.io.volume import Volume

__all__ = ["PreprocessConfig", "PreprocessedCase", "denormalise", "fit_shape", "preprocess_case"]


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
    channel_ranges: tuple[tuple[float, float], ...] = ()  # per channel of an (I, J, K, C) image

    @property
    def intensity_ranges(self) -> tuple[tuple[float, float], ...]:
        """The intensity range of every channel (one for a single-channel image)."""
        return self.channel_ranges or (self.intensity_range,)


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
    for _ in range(array.ndim - 3):  # a trailing channel axis is kept as it is
        pads.append((0, 0))
        crops.append(slice(None))
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
    return PreprocessedCase(image, label, pc.intensity_range, missing, pc.channel_ranges)


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
    An image of several channels (I, J, K, C) has every channel brought through the same geometry
    and normalised with its own intensity range (`missing`: (I, J, K) or (I, J, K, C)).
    """
    arr = np.asarray(image.array)
    if arr.ndim == 4:
        return _preprocess_channels(image, label, cfg, missing)
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


def _preprocess_channels(
    image: Volume, label: Volume | None, cfg: PreprocessConfig, missing: np.ndarray | None
) -> PreprocessedCase:
    """`preprocess_case` of an (I, J, K, C) image: channel by channel, stacked on a trailing axis.
    A channel whose voxels are all missing (a contrast not acquired) comes out as zeros, all
    missing, with the intensity range (NaN, NaN)."""
    arr = np.asarray(image.array)
    if missing is not None:
        missing = np.asarray(missing, dtype=bool)
        if missing.shape not in (arr.shape, arr.shape[:3]):
            raise LdmError(f"missing-voxel mask shape {missing.shape} does not match image shape {arr.shape[:3]}")
        missing = np.broadcast_to(missing.reshape(*arr.shape[:3], -1), arr.shape)
    acquired = [c for c in range(arr.shape[3]) if missing is None or not missing[..., c].all()]
    if not acquired:
        raise LdmError("every voxel of the image is missing")
    parts = []
    for c in range(arr.shape[3]):
        src = c if c in acquired else acquired[0]  # a channel missing altogether: another one's geometry
        try:
            part = preprocess_case(
                image.with_array(arr[..., src]), label, cfg, None if missing is None else missing[..., src]
            )
        except LdmError as exc:
            raise LdmError(f"channel {c:04d}: {exc}") from None
        if src != c:  # every voxel missing, its intensity range unknown (NaN)
            gone = part.missing.with_array(np.ones_like(part.missing.array))
            part = PreprocessedCase(
                part.image.with_array(np.zeros_like(part.image.array)), part.label, (np.nan,) * 2, gone
            )
        parts.append(part)
    first = parts[0]
    stacked = np.stack([p.image.array for p in parts], axis=-1)
    out_missing = None
    if missing is not None:
        out_missing = first.missing.with_array(np.stack([p.missing.array for p in parts], axis=-1))
    return PreprocessedCase(
        first.image.with_array(stacked),
        first.label,
        first.intensity_range,
        out_missing,
        tuple(p.intensity_range for p in parts),
    )
