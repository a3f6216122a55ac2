"""Volume sets for evaluation: read a data set, normalise intensities, bring to one shape."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ldmtool.errors import LdmError


@dataclass
class VolumeSet:
    """Images (N, I, J, K) scaled to [0, 1] per volume, optional labels, case ids, label names."""

    name: str
    root: Path | None
    images: np.ndarray
    labels: np.ndarray | None
    case_ids: list[str]
    label_names: dict[str, int] = field(default_factory=dict)
    spacing: tuple[float, float, float] | None = None  # voxel size (mm) of the first case as read

    def __len__(self) -> int:
        return len(self.case_ids)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]


def normalise01(image: np.ndarray, percentiles: tuple[float, float] = (0.5, 99.5)) -> np.ndarray:
    """Scale a volume to [0, 1] between two intensity percentiles (robust to outliers)."""
    image = np.asarray(image, dtype=np.float32)
    if not np.all(np.isfinite(image)):
        raise LdmError("a volume holds NaN or infinite values")
    lo, hi = np.percentile(image, percentiles)
    if hi - lo < 1e-8:
        return np.zeros_like(image)
    return np.clip((image - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def resize_volume(array: np.ndarray, shape: tuple[int, ...], label: bool = False) -> np.ndarray:
    """Resize an (I, J, K) array to `shape` (trilinear for images, nearest for labels)."""
    if tuple(array.shape) == tuple(shape):
        return array
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
    if label:
        out = F.interpolate(t, size=tuple(shape), mode="nearest")
        return out[0, 0].numpy().astype(array.dtype)
    return F.interpolate(t, size=tuple(shape), mode="trilinear", align_corners=False)[0, 0].numpy()


def fit_volume(array: np.ndarray, shape: tuple[int, ...], same_grid: bool, label: bool = False) -> np.ndarray:
    """Bring an (I, J, K) array to `shape`: centre pad/crop when it is on the same voxel grid as
    the reference (same spacing: only the field of view differs, so nothing is stretched), else
    resize (trilinear for images, nearest for labels)."""
    if tuple(array.shape) == tuple(shape):
        return array
    if not same_grid:
        return resize_volume(array, shape, label=label)
    from monai.transforms import ResizeWithPadOrCrop

    out = ResizeWithPadOrCrop(tuple(shape), mode="constant")(np.asarray(array)[None])
    return np.asarray(out)[0].astype(array.dtype)


def load_volume_set(
    path: Path,
    name: str,
    shape: tuple[int, int, int] | None = None,
    max_cases: int | None = None,
    console=None,
    spacing: tuple[float, float, float] | None = None,
) -> VolumeSet:
    """Read every case of a data set (nnU-Net layout or a folder of volumes).

    Images are scaled to [0, 1] per volume (0.5/99.5 percentiles). Every case is brought to one
    shape: `shape` when given, else the per-axis maximum of the set's shapes. A case whose voxel
    size is `spacing` (default: the first case's) is centre padded/cropped to it (same grid, only
    the field of view differs); one of another voxel size is resized (labels by nearest neighbour).
    """
    from ldmtool.io import load_dataset

    ds = load_dataset(path)
    cases = ds.cases[:max_cases] if max_cases else ds.cases
    if not cases:
        raise LdmError(f"no volumes found in {path}")
    raw, ids = [], []
    for case in cases:
        img, lab = ds.read(case)
        arr = np.asarray(img.array)
        if arr.ndim != 3:
            raise LdmError(f"{case.image}: evaluate needs 3D single-channel volumes, got shape {arr.shape}")
        if not np.all(np.isfinite(arr)):
            raise LdmError(f"{case.image} holds NaN or infinite values")
        raw.append((normalise01(arr), None if lab is None else np.asarray(lab.array), img.spacing))
        ids.append(case.case_id)
    ref_spacing = tuple(spacing) if spacing is not None else raw[0][2]
    target = tuple(shape) if shape is not None else tuple(max(r[0].shape[a] for r in raw) for a in range(3))
    images, labels = [], []
    for arr, lab, sp in raw:
        same = bool(np.allclose(sp, ref_spacing, rtol=0.01))
        images.append(fit_volume(arr, target, same))
        if ds.has_labels:
            labels.append(fit_volume(lab, target, same, label=True).astype(np.int64))
    return VolumeSet(
        name=name,
        root=Path(path),
        images=np.stack(images).astype(np.float32),
        labels=np.stack(labels) if ds.has_labels else None,
        case_ids=ids,
        label_names=dict(ds.label_names),
        spacing=ref_spacing,
    )
