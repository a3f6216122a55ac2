"""Lesion attributes computed from label maps (what the denoiser can be conditioned on), and lesions
moved from one case into another (`inpaint --lesion-from`)."""

from __future__ import annotations

import numpy as np

from ldmtool.errors import LdmError
from ldmtool.io._util import is_lesion_name  # noqa: F401 (part of this module's API)

ATTRIBUTES = ("lesion_volume", "lesion_x", "lesion_y", "lesion_z", "lesion_extent")
UNITS = {
    "lesion_volume": "ml",
    "lesion_x": "fraction of I",
    "lesion_y": "fraction of J",
    "lesion_z": "fraction of K",
    "lesion_extent": "mm",
}


def lesion_class(label_names: dict[str, int]) -> int:
    """The label value treated as 'lesion': a class named like lesion/tumour, else the highest."""
    for name, value in label_names.items():
        if is_lesion_name(name):
            return int(value)
    return int(max(label_names.values()))


def lesion_attributes(label_ijk: np.ndarray, lesion_value: int, spacing: tuple[float, float, float]) -> np.ndarray:
    """Attributes of all lesion voxels of one (I, J, K) label map, in ATTRIBUTES order.

    lesion_volume: total lesion volume in ml; lesion_x/y/z: centroid as a fraction of each array
    axis (0..1); lesion_extent: the longest side of the lesions' bounding box in mm. A volume
    with no lesion has volume 0, extent 0 and centroid at the centre (0.5).
    """
    mask = label_ijk == lesion_value
    n = int(mask.sum())
    if n == 0:
        return np.array([0.0, 0.5, 0.5, 0.5, 0.0], dtype=np.float32)
    idx = np.argwhere(mask)
    shape = np.array(mask.shape, dtype=np.float64)
    centroid = (idx.mean(0) + 0.5) / shape
    extent = (idx.max(0) - idx.min(0) + 1) * np.asarray(spacing)
    volume_ml = n * float(np.prod(spacing)) / 1000.0
    return np.array([volume_ml, *centroid, extent.max()], dtype=np.float32)


def parse_conditions(items: list[str] | None) -> dict[str, float | str]:
    """Parse `--condition name=value` items: numbers, or text (a level of a two-level covariate such
    as sex=F). Lesion attributes need numbers; which names a model takes, the model says."""
    out: dict[str, float | str] = {}
    for item in items or []:
        for part in item.split(","):
            if not part.strip():
                continue
            if "=" not in part:
                raise LdmError(f"--condition expects name=value, got {part!r}")
            name, value = (s.strip() for s in part.split("=", 1))
            if not name or not value:
                raise LdmError(f"--condition expects name=value, got {part!r}")
            try:
                out[name] = float(value)
            except ValueError:
                if name in ATTRIBUTES:
                    raise LdmError(f"--condition {name} needs a number ({UNITS[name]}), got {value!r}") from None
                out[name] = value
    return out


# a move of `transplant`: (the lesion's box in the donor, its box at the new place, its mask in those boxes)
Move = tuple[tuple[slice, ...], tuple[slice, ...], np.ndarray]


def transplant(
    label: np.ndarray,
    lesions: np.ndarray,
    lesion: int,
    zooms,
    rng: np.random.Generator,
    margin_mm: float = 6.0,
    allowed: np.ndarray | None = None,
    tries: int = 100,
) -> tuple[np.ndarray, list[Move]]:
    """Another case's lesions moved into this one: every connected `lesion` component of the map
    `lesions` (same voxel size) whole, to a random place where all its voxels lie inside the head of
    `label` (> 0, not `lesion`), at least `margin_mm` from its edge (voxel sizes `zooms`), within
    `allowed` when given, and one voxel apart from the lesions placed before. A lesion with no such
    place in `tries` random tries is left out. Returns the region (bool) and the moves made."""
    from scipy import ndimage as ndi

    head = (label > 0) & (label != lesion)
    inside = ndi.distance_transform_edt(head, sampling=zooms) >= margin_mm
    if allowed is not None:
        inside &= allowed
    candidates = np.argwhere(inside)
    region = np.zeros(label.shape, dtype=bool)
    moves: list[Move] = []
    comps, _ = ndi.label(lesions == lesion)
    for i, sl in enumerate(ndi.find_objects(comps)):
        blob = comps[sl] == i + 1  # this component only, not a neighbour reaching into its box
        size = np.array(blob.shape)
        for _ in range(tries if len(candidates) else 0):
            lo = candidates[rng.integers(len(candidates))] - size // 2
            hi = lo + size
            if (lo < 0).any() or (hi > label.shape).any():
                continue
            box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
            grown = ndi.binary_dilation(region[box], iterations=1)
            if inside[box][blob].all() and not (grown & blob).any():
                region[box] |= blob
                moves.append((sl, box, blob))
                break
    return region, moves


def head_median(image: np.ndarray, label: np.ndarray, lesion: int) -> float:
    """The median intensity of a head's voxels outside its lesions (label > 0, not `lesion`)."""
    head = (label > 0) & (label != lesion)
    if not head.any():
        raise LdmError("the label map marks no voxel as head (label > 0 other than the lesion class)")
    return float(np.median(image[head]))


def paste_lesions(image: np.ndarray, donor: np.ndarray, moves: list[Move], ratio: float) -> np.ndarray:
    """`image` (float32 copy) with the donor image's voxels of every moved lesion × `ratio` (e.g. this
    head's median over the donor's, so that a lesion keeps its contrast to the tissue around it)
    written at the lesion's new place (`transplant`)."""
    out = np.array(image, dtype=np.float32, copy=True)
    for src, dst, blob in moves:
        out[dst][blob] = donor[src][blob].astype(np.float32) * ratio
    return out
