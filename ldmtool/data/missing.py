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
