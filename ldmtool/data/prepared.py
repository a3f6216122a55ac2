"""Load a data set once, preprocess every case, and hold it as slice-first tensors in memory."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ldmtool.errors import LdmError


@dataclass
class PreparedData:
    """A preprocessed data set.

    Attributes:
        images: (N, D, H, W) float32, slice axis first (D = the volume's last array axis K).
        labels: (N, D, H, W) uint8 label maps, or None for unlabelled data.
        affines: per-case 4x4 affines of the preprocessed space (array axes I, J, K).
        label_names: class name → integer value (background 0), empty when unlabelled.
        intensity_ranges: per-case (lo, hi) source intensities mapped to the normalised range.
        observed: (N, D, H, W) uint8, 1 where a voxel's value is known, or None for complete data;
            missing voxels hold 0 in `images`.
    """

    images: torch.Tensor
    labels: torch.Tensor | None
    case_ids: list[str]
    affines: list[np.ndarray]
    label_names: dict[str, int] = field(default_factory=dict)
    intensity_ranges: list[tuple[float, float]] = field(default_factory=list)
    observed: torch.Tensor | None = None
    modalities: list[str] = field(default_factory=list)  # DICOM Modality per case ("" for NIfTI)

    @property
    def missing_fraction(self) -> float:
        return 0.0 if self.observed is None else 1.0 - float(self.observed.float().mean())

    @property
    def num_classes(self) -> int:
        return (max(self.label_names.values()) + 1) if self.labels is not None else 0

    @property
    def volume_shape(self) -> tuple[int, int, int]:
        """(I, J, K) shape of the preprocessed volumes."""
        d, h, w = self.images.shape[1:]
        return (h, w, d)

    def split_indices(self, val_fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
        """Case indices (train, validation), split by a seeded permutation; at least one
        validation case when val_fraction > 0 and there are two cases or more."""
        n = len(self.case_ids)
        n_val = int(round(n * val_fraction))
        if val_fraction > 0 and n >= 2:
            n_val = max(1, n_val)
        perm = np.random.default_rng(seed).permutation(n)
        return sorted(map(int, perm[n_val:])), sorted(map(int, perm[:n_val]))

    def split(self, val_fraction: float, seed: int = 0) -> tuple[PreparedData, PreparedData | None]:
        """Split by case into (train, validation); validation is None when there is too little data."""
        train, val = self.split_indices(val_fraction, seed)
        return self.subset(train), (self.subset(val) if val else None)

    def subset(self, idx) -> PreparedData:
        idx = list(map(int, idx))
        return PreparedData(
            images=self.images[idx],
            labels=None if self.labels is None else self.labels[idx],
            case_ids=[self.case_ids[i] for i in idx],
            affines=[self.affines[i] for i in idx],
            label_names=dict(self.label_names),
            intensity_ranges=[self.intensity_ranges[i] for i in idx] if self.intensity_ranges else [],
            observed=None if self.observed is None else self.observed[idx],
        )


def volume_to_slices(array: np.ndarray) -> np.ndarray:
    """(I, J, K) → (K, I, J): slices along the last array axis, slice axis first."""
    return np.ascontiguousarray(np.moveaxis(array, 2, 0))


def slices_to_volume(array: np.ndarray) -> np.ndarray:
    """(K, I, J) → (I, J, K), the inverse of `volume_to_slices`."""
    return np.ascontiguousarray(np.moveaxis(array, 0, 2))


def prepare_dataset(
    path: Path,
    preprocess_cfg,
    *,
    require_labels: bool = False,
    series_uid: str | None = None,
    console=None,
    missing_rate: float = 0.0,
    seed: int = 0,
) -> PreparedData:
    """Discover, read, check and preprocess every case of a data set folder (or one file).

    `series_uid` picks one series where a DICOM folder holds several. Incomplete cases: NaN
    voxels and masksTr/ masks mark missing voxels; `missing_rate` > 0 also drops that fraction
    of every case's voxels completely at random (seeded by `seed` and the case's index), for
    experiments. Missing voxels are 0 in `images` and 0 in `observed`."""
    from ldmtool.data.missing import case_seed, mcar_mask
    from ldmtool.data.preprocess import preprocess_case
    from ldmtool.io import load_dataset
    from ldmtool.runtime import progress

    if not 0.0 <= missing_rate < 1.0:
        raise LdmError(f"--missing-rate must be in [0, 1); got {missing_rate}")
    ds = load_dataset(Path(path))
    if require_labels and not ds.has_labels:
        raise LdmError(f"{path} has no labels (expected imagesTr/ + labelsTr/ + dataset.json)")
    images, labels, ids, affines, ranges, observed, modalities = [], [], [], [], [], [], []
    with progress(console, transient=True) as bar:
        task = bar.add_task("reading volumes", total=len(ds.cases), rate="", info="")
        for index, case in enumerate(ds.cases):
            image, label = ds.read(case, series_uid, allow_nan=True)  # NaN voxels: missing
            missing = ds.read_missing(case, image)
            nan = ~np.isfinite(np.asarray(image.array, dtype=np.float32))
            if nan.any():
                missing = nan if missing is None else (missing | nan)
            pc = preprocess_case(image, label, preprocess_cfg, missing)
            img = volume_to_slices(pc.image.array.astype(np.float32))
            gone = (
                np.zeros(img.shape, dtype=bool)
                if pc.missing is None
                else volume_to_slices(pc.missing.array.astype(bool))
            )
            if missing_rate > 0:
                gone |= mcar_mask(img.shape, missing_rate, case_seed(seed, index))
            img[gone] = 0.0
            images.append(img)
            observed.append(~gone)
            if pc.label is not None:
                labels.append(volume_to_slices(pc.label.array.astype(np.uint8)))
            ids.append(case.case_id)
            modalities.append(str(image.meta.get("modality", "") or ""))
            affines.append(pc.image.affine)
            ranges.append(tuple(float(v) for v in pc.intensity_range))
            bar.advance(task)
    shapes = {a.shape for a in images}
    if len(shapes) > 1:
        raise LdmError(
            f"volumes have different shapes after preprocessing ({', '.join(str(s[::-1]) for s in sorted(shapes))}); "
            "set a common target shape with --shape I,J,K (or preprocess.shape in the config)"
        )
    label_names = dict(ds.label_names) if ds.has_labels else {}
    return PreparedData(
        images=torch.from_numpy(np.stack(images)),
        labels=torch.from_numpy(np.stack(labels)) if labels else None,
        case_ids=ids,
        affines=affines,
        label_names=label_names,
        intensity_ranges=ranges,
        observed=torch.from_numpy(np.stack(observed).astype(np.uint8)) if any(not o.all() for o in observed) else None,
        modalities=modalities,
    )
