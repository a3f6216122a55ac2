"""Missing-data masks: missing slices, MCAR voxels, NaN voxels and mask files, combined.

Convention everywhere: a *missing* mask is True (1) where a voxel's value is unknown; an
*observed* mask is its complement.
"""

from __future__ import annotations

import numpy as np

from ldmtool.errors import LdmError


def parse_slices(text: str, depth: int) -> list[int]:
    """'3,7,12-15' → [3, 7, 12, 13, 14, 15] (0-based indices along the volume's third array
    axis); an error for indices outside 0..depth−1 or text that is not such a list."""
    out: set[int] = set()
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        try:
            if "-" in part[1:]:  # a range a-b (a leading "-" is a negative index: out of range below)
                lo, hi = part.split("-", 1)
                a, b = int(lo), int(hi)
                if b < a:
                    raise ValueError
                out.update(range(a, b + 1))
            else:
                out.add(int(part))
        except ValueError:
            raise LdmError(f"--missing-slices takes indices and ranges such as 3,7,12-15; got {text!r}") from None
    if not out:
        raise LdmError(f"--missing-slices names no slices: {text!r}")
    bad = sorted(i for i in out if not 0 <= i < depth)
    if bad:
        raise LdmError(f"--missing-slices {bad[0]} is outside the volume's {depth} slices (0..{depth - 1})")
    return sorted(out)


def slices_mask(shape: tuple[int, ...], slices: list[int]) -> np.ndarray:
    """Missing mask of whole slices along the last axis."""
    mask = np.zeros(shape, dtype=bool)
    mask[..., slices] = True
    return mask


def mcar_mask(shape: tuple[int, ...], rate: float, seed: int) -> np.ndarray:
    """Missing completely at random: each voxel missing with probability `rate` (seeded)."""
    if not 0.0 <= rate < 1.0:
        raise LdmError(f"a missing rate must be in [0, 1); got {rate}")
    return np.random.default_rng(seed).random(shape) < rate


def case_seed(seed: int, index: int) -> int:
    """Seed of case `index`'s simulated mask: independent of how many cases come before it."""
    return int(np.random.SeedSequence([int(seed), int(index), 0x4D]).generate_state(1)[0])


def interpolate_missing(image: np.ndarray, missing: np.ndarray) -> np.ndarray:
    """`image` (D, ...) with every missing voxel replaced by linear interpolation between the
    nearest observed voxels of its column along the first (slice) axis, the nearest one beyond the
    first or last observed voxel, and in a column with no observed voxel (a 2D image's only slice,
    a hole through every slice) by normalised convolution (`normalised_convolution`). The start of
    `impute --init interpolation`. Observed voxels are returned unchanged.

    Written out because scipy's interpolators take one set of sample points per call, and this is
    one 1D interpolation per column with its own points, done for all columns at once: the index of
    the previous and next observed voxel comes from a running max/min over the slice axis."""
    if image.shape != missing.shape:
        raise ValueError(f"image {image.shape} and missing mask {missing.shape} differ in shape")
    observed = ~missing.astype(bool)
    if not observed.any():
        raise LdmError("no observed voxel to interpolate from")
    depth = image.shape[0]
    index = np.arange(depth).reshape((depth,) + (1,) * (image.ndim - 1))
    prev = np.maximum.accumulate(np.where(observed, index, -1), axis=0)
    nxt = np.minimum.accumulate(np.where(observed, index, depth)[::-1], axis=0)[::-1]
    has_prev, has_next = prev >= 0, nxt < depth
    lo = np.take_along_axis(image, np.clip(prev, 0, depth - 1), axis=0).astype(np.float64)
    hi = np.take_along_axis(image, np.clip(nxt, 0, depth - 1), axis=0).astype(np.float64)
    span = np.maximum(nxt - prev, 1)
    w = np.where(has_prev & has_next, (index - prev) / span, np.where(has_next, 1.0, 0.0))
    # a missing voxel's value (NaN, say) never enters: each end counts only where it exists
    filled = np.where(has_prev, (1 - w) * lo, 0.0) + np.where(has_next, w * hi, 0.0)
    column = has_prev | has_next
    if not column.all():
        filled = np.where(column, filled, normalised_convolution(image, observed))
    return np.where(observed, image, filled).astype(image.dtype, copy=False)


def normalised_convolution(image: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """Every voxel's Gaussian-weighted mean of the observed voxels around it (Knutsson & Westin's
    normalised convolution), σ = 1 voxel, doubled for voxels with no observed voxel within reach
    until all have one. (D, C, H, W) arrays are filtered within each channel."""
    from scipy.ndimage import gaussian_filter

    values = np.where(observed, image, 0.0).astype(np.float64)
    weight = observed.astype(np.float64)
    out = np.full(image.shape, float(values[observed].mean()))
    todo = np.ones(image.shape, dtype=bool)
    sigma = 1.0
    while todo.any() and sigma <= 2 * max(image.shape):
        per_axis = [sigma] * image.ndim
        if image.ndim == 4:
            per_axis[1] = 0.0  # the channel axis
        num, den = gaussian_filter(values, per_axis), gaussian_filter(weight, per_axis)
        ok = todo & (den > 1e-3)
        out[ok] = num[ok] / den[ok]
        todo &= ~ok
        sigma *= 2
    return out
