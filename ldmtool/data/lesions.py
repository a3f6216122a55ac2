"""Lesion attributes computed from label maps: what the denoiser can be conditioned on."""

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
