"""Load a data set once, preprocess every case, and hold it as slice-first tensors in memory.

Volumes of different shapes (after preprocessing) are handled one of three ways (`shapes=`):
"same" refuses them (one line, the shapes summarised); "auto" (the generators) centre-pads/crops
every case to a training shape chosen from the data, the per-axis maximum rounded up to the
model's size multiple, so no case loses a voxel, and records it in the returned preprocessing
config; "pad" (the segmenters) keeps every case in its own voxel grid, stored at the start of a
common array with its true size in `PreparedData.shapes`, for batches padded to their largest member.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ldmtool.data.labels import infer_label_names, inferred_warning
from ldmtool.data.preprocess import PreprocessConfig, PreprocessedCase, fit_shape, preprocess_case
from ldmtool.errors import LdmError
from ldmtool.io._util import summarise, summarise_shapes

ShapePolicy = Literal["same", "auto", "pad"]


@dataclass
class PreparedData:
    """A preprocessed data set.

    Attributes:
        images: (N, D, H, W) float32, slice axis first (D = the volume's last array axis K); a data
            set of several channels (contrasts) has a channel axis after the slice axis,
            (N, D, C, H, W): use `slices` / `case` for the (…, C, H, W) view of either.
        labels: (N, D, H, W) uint8 label maps, or None for unlabelled data.
        affines: per-case 4x4 affines of the preprocessed space (array axes I, J, K).
        label_names: class name → integer value (background 0), empty when unlabelled.
        intensity_ranges: per-case (lo, hi) source intensities mapped to the normalised range.
        observed: uint8 of the shape of `images`, 1 where a voxel's value is known, or None for
            complete data; missing voxels hold 0 in `images`.
        shapes: per-case (D, H, W) sizes where cases of different shapes share the arrays (each at
            the start, zero-padded after), or None when every case fills them.
        preprocess: the preprocessing applied (with the training shape chosen from the data, if
            one was), or None.
    """

    images: torch.Tensor
    labels: torch.Tensor | None
    case_ids: list[str]
    affines: list[np.ndarray]
    label_names: dict[str, int] = field(default_factory=dict)
    intensity_ranges: list[tuple[float, float]] = field(default_factory=list)
    observed: torch.Tensor | None = None
    shapes: list[tuple[int, int, int]] | None = None
    preprocess: PreprocessConfig | None = None

    def case_size(self, i: int) -> tuple[int, int, int]:
        """(D, H, W) of case i without padding."""
        return self.grid if self.shapes is None else self.shapes[i]

    @property
    def channels(self) -> int:
        """Image channels (contrasts) per voxel."""
        return 1 if self.images.ndim == 4 else int(self.images.shape[2])

    @property
    def grid(self) -> tuple[int, int, int]:
        """(D, H, W): slices, rows, columns of the (padded) arrays."""
        return (int(self.images.shape[1]), int(self.images.shape[-2]), int(self.images.shape[-1]))

    def slices(self, case_idx, slice_idx, observed: bool = False) -> torch.Tensor | None:
        """Image slices (B, C, H, W) of (case, slice) index pairs (`observed`: their observed-voxel
        masks, or None for complete data)."""
        source = self.observed if observed else self.images
        if source is None:
            return None
        out = source[case_idx, slice_idx]
        return out[:, None] if self.images.ndim == 4 else out

    def case(self, i: int, observed: bool = False) -> torch.Tensor | None:
        """Case i's image (D, C, H, W) (`observed`: its observed-voxel mask, or None)."""
        source = self.observed if observed else self.images
        if source is None:
            return None
        return source[i][:, None] if self.images.ndim == 4 else source[i]

    modalities: list[str] = field(default_factory=list)  # DICOM Modality per case ("" for NIfTI)
    image_dims: int = 3  # 2: a data set of 2D images (each case one slice, D = 1)
    image_format: str = ""  # of 2D images: "png", "jpeg", "tiff" or "dicom" (what `sample` writes back)
    image_dtype: str = ""  # of 2D images: the stored pixel type (uint8, uint16, ...)
    classes: list[str | None] | None = None  # per case: its class folder's name (2D class folders), else None
    channel_names: list[str] = field(default_factory=lambda: ["image"])  # in channel order
    channel_ranges: list[tuple[tuple[float, float], ...]] = field(default_factory=list)  # per case, per channel

    def channel_intensity_ranges(self) -> list[tuple[float, float]]:
        """Per channel, the mean over cases of the source intensities mapped to the normalised range
        (over the cases that have the channel)."""
        per_case = self.channel_ranges or [(r,) for r in self.intensity_ranges]
        return [
            (float(np.nanmean([r[c][0] for r in per_case])), float(np.nanmean([r[c][1] for r in per_case])))
            for c in range(len(per_case[0]))
        ]

    @property
    def missing_fraction(self) -> float:
        return 0.0 if self.observed is None else 1.0 - float(self.observed.float().mean())

    @property
    def num_classes(self) -> int:
        return (max(self.label_names.values()) + 1) if self.labels is not None else 0

    @property
    def volume_shape(self) -> tuple[int, int, int]:
        """(I, J, K) shape of the preprocessed volumes."""
        d, h, w = self.grid
        return (h, w, d)

    def left_right_axis(self, i: int) -> int:
        """The axis of case i's arrays (D, H, W) → 0, 1, 2 that runs along the anatomical left–right
        axis of its affine."""
        import nibabel as nib

        codes = nib.orientations.aff2axcodes(np.asarray(self.affines[i]))  # of array axes I, J, K
        axis = next(a for a, c in enumerate(codes) if c in ("L", "R"))
        return {0: 1, 1: 2, 2: 0}[axis]  # I → H, J → W, K → D (the slice axis)

    def mirrored(self) -> PreparedData:
        """A copy with every case mirrored across its left–right axis (images, labels, observed
        masks; each case within its own extent), in the same affines and under the same case ids:
        new, plausible subjects for a data set of roughly symmetric anatomy.

        An error for 2D images (no anatomical left–right to mirror) and for label maps naming a
        left or right structure (a mirrored map would put them on the wrong side)."""
        import re

        if self.image_dims == 2:
            raise LdmError("mirroring needs 3D volumes with a geometry; 2D images have no left–right axis to mirror")
        sided = [n for n in self.label_names if re.search(r"left|right|(^|[-_ .])[lr]($|[-_ .])", n.lower())]
        if sided:
            raise LdmError(
                f"cannot mirror left–right: class {sided[0]!r} names a side (a mirrored map would put it on "
                "the wrong one); merge the sides with --labels or turn mirroring off"
            )
        images = self.images.clone()
        labels = None if self.labels is None else self.labels.clone()
        observed = None if self.observed is None else self.observed.clone()
        multi = self.images.ndim == 5  # (N, D, C, H, W)
        for i in range(len(self.case_ids)):
            d, h, w = self.case_size(i)
            axis = self.left_right_axis(i)  # of the case's (D, H, W) block
            for arr, has_c in ((images, multi), (labels, False), (observed, multi)):
                if arr is None:
                    continue
                box = (
                    (i, slice(0, d), slice(None), slice(0, h), slice(0, w))
                    if has_c
                    else (i, slice(0, d), slice(0, h), slice(0, w))
                )
                dim = axis + (1 if has_c and axis > 0 else 0)  # in the block without the case axis
                arr[box] = arr[box].flip(dim)
        return replace(self, images=images, labels=labels, observed=observed)

    def concat(self, other: PreparedData) -> PreparedData:
        """The cases of this data set then those of `other` (the same grid, classes and channels)."""

        def both(a, b):
            return None if a is None or b is None else a + b

        return replace(
            self,
            images=torch.cat([self.images, other.images]),
            labels=None if self.labels is None else torch.cat([self.labels, other.labels]),
            case_ids=self.case_ids + other.case_ids,
            affines=self.affines + other.affines,
            intensity_ranges=self.intensity_ranges + other.intensity_ranges,
            observed=None if self.observed is None else torch.cat([self.observed, other.observed]),
            shapes=both(self.shapes, other.shapes),
            modalities=self.modalities + other.modalities,
            classes=both(self.classes, other.classes),
            channel_ranges=self.channel_ranges + other.channel_ranges,
        )

    def split_indices(self, val_fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
        """Case indices (train, validation), split by a seeded permutation (see `split_case_indices`)."""
        return split_case_indices(len(self.case_ids), val_fraction, seed)

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
            shapes=None if self.shapes is None else [self.shapes[i] for i in idx],
            preprocess=self.preprocess,
            modalities=[self.modalities[i] for i in idx] if self.modalities else [],
            image_dims=self.image_dims,
            image_format=self.image_format,
            image_dtype=self.image_dtype,
            classes=None if self.classes is None else [self.classes[i] for i in idx],
            channel_names=list(self.channel_names),
            channel_ranges=[self.channel_ranges[i] for i in idx] if self.channel_ranges else [],
        )


def split_case_indices(n: int, val_fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """Indices of n cases as (train, validation), split by a seeded permutation; at least one
    validation case when val_fraction > 0 and there are two cases or more."""
    n_val = int(round(n * val_fraction))
    if val_fraction > 0 and n >= 2:
        n_val = max(1, n_val)
    perm = np.random.default_rng(seed).permutation(n)
    return sorted(map(int, perm[n_val:])), sorted(map(int, perm[:n_val]))


def volume_to_slices(array: np.ndarray) -> np.ndarray:
    """(I, J, K) → (K, I, J): slices along the last array axis, slice axis first; several channels
    (I, J, K, C) → (K, C, I, J)."""
    if array.ndim == 4:
        return np.ascontiguousarray(np.moveaxis(array, (2, 3), (0, 1)))
    return np.ascontiguousarray(np.moveaxis(array, 2, 0))


def slices_to_volume(array: np.ndarray) -> np.ndarray:
    """(K, I, J) → (I, J, K), the inverse of `volume_to_slices` ((K, C, I, J) → (I, J, K, C))."""
    if array.ndim == 4:
        return np.ascontiguousarray(np.moveaxis(array, (0, 1), (2, 3)))
    return np.ascontiguousarray(np.moveaxis(array, 0, 2))


def choose_shape(shapes: list[tuple[int, ...]], multiple: tuple[int, int, int]) -> tuple[int, int, int]:
    """A training shape for volumes of `shapes` (I, J, K): the per-axis maximum rounded up to `multiple`."""
    return tuple(int(math.ceil(max(s[a] for s in shapes) / multiple[a]) * multiple[a]) for a in range(3))


def _read_cases(ds, cfg: PreprocessConfig, series_uid, console) -> list[PreprocessedCase]:
    """Read, check and preprocess every case (NaN voxels and masksTr/ masks: missing)."""
    from ldmtool.runtime import progress

    out = []
    with progress(console, transient=True) as bar:
        task = bar.add_task("reading volumes", total=len(ds.cases), rate="", info="")
        for case in ds.cases:
            image, label = ds.read(case, series_uid, allow_nan=True)
            missing = ds.read_missing(case, image)
            nan = ~np.isfinite(np.asarray(image.array, dtype=np.float32))
            if nan.any():
                missing = nan if missing is None else (missing | nan)
            out.append(preprocess_case(image, label, cfg, missing))
            bar.advance(task)
    return out


def _fit_shapes(cases, cfg: PreprocessConfig, policy: ShapePolicy, multiple, console):
    """Apply the shape policy; returns (cases, effective config)."""
    shapes = [tuple(pc.image.shape[:3]) for pc in cases]
    uneven = len(set(shapes)) > 1
    if policy == "pad" or cfg.shape is not None:
        return cases, cfg
    if policy == "same":
        if uneven:
            raise LdmError(
                f"volumes have different shapes after preprocessing ({summarise_shapes(shapes)}); "
                "set a common target shape with --shape I,J,K (or preprocess.shape in the config)"
            )
        return cases, cfg
    if not uneven and all(n % m == 0 for n, m in zip(shapes[0], multiple)):
        return cases, cfg
    target = choose_shape(shapes, multiple)
    if console is not None:
        why = summarise_shapes(shapes) if uneven else f"all {len(shapes)} volumes are {shapes[0]}"
        console.print(
            f"training shape {target} chosen from the data ({why}): the per-axis maximum rounded up to a "
            f"multiple of {tuple(multiple)}; every case is centre-padded, none cropped (set --shape to choose)",
            highlight=False,
        )
    cfg = PreprocessConfig.from_dict({**cfg.to_dict(), "shape": list(target)})
    return [fit_shape(pc, target) for pc in cases], cfg


def _stack(arrays: list[np.ndarray], fill=0) -> np.ndarray:
    """Arrays of different shapes at the start of one zero-filled (N, *max shape) array."""
    if len({a.shape for a in arrays}) == 1:
        return np.stack(arrays)
    size = tuple(max(a.shape[k] for a in arrays) for k in range(arrays[0].ndim))
    out = np.full((len(arrays), *size), fill, dtype=arrays[0].dtype)
    for i, a in enumerate(arrays):
        out[(i, *(slice(0, n) for n in a.shape))] = a
    return out


def prepare_dataset(
    path: Path,
    preprocess_cfg: PreprocessConfig,
    *,
    require_labels: bool = False,
    series_uid: str | None = None,
    console=None,
    missing_rate: float = 0.0,
    seed: int = 0,
    shapes: ShapePolicy = "same",
    multiple: tuple[int, int, int] = (1, 1, 1),
) -> PreparedData:
    """Discover, read, check and preprocess every case of a data set folder (or one file).

    `series_uid` picks one series where a DICOM folder holds several. Incomplete cases: NaN
    voxels and masksTr/ masks mark missing voxels; `missing_rate` > 0 also drops that fraction
    of every case's voxels completely at random (seeded by `seed` and the case's index), for
    experiments. Missing voxels are 0 in `images` and 0 in `observed`. `shapes` says what to do
    with volumes of different shapes (see the module docstring; `multiple`: the size multiple
    of "auto"). Labels without dataset.json names are named from the values found (a warning)."""
    from ldmtool.data.missing import case_seed, mcar_mask
    from ldmtool.io import load_dataset

    if not 0.0 <= missing_rate < 1.0:
        raise LdmError(f"--missing-rate must be in [0, 1); got {missing_rate}")
    ds = load_dataset(Path(path))
    if require_labels and not ds.has_labels:
        raise LdmError(f"{path} has no labels (expected imagesTr/ + labelsTr/, named in dataset.json or --labels)")
    if ds.image_dims == 2:  # one slice per case: no depth to divide
        multiple = (*multiple[:2], 1)
    lacking = ds.absent_summary()
    if lacking and console is not None:
        console.print(f"[yellow]warning:[/] {lacking}", highlight=False)
    read = _read_cases(ds, preprocess_cfg, series_uid, console)
    cases, cfg = _fit_shapes(read, preprocess_cfg, shapes, multiple, console)
    images, labels, observed, found = [], [], [], np.zeros(256, dtype=bool)
    for index, pc in enumerate(cases):
        img = volume_to_slices(pc.image.array.astype(np.float32))
        gone = (
            np.zeros(img.shape, dtype=bool) if pc.missing is None else volume_to_slices(pc.missing.array.astype(bool))
        )
        if missing_rate > 0:
            gone |= mcar_mask(img.shape, missing_rate, case_seed(seed, index))
        img[gone] = 0.0
        images.append(img)
        observed.append(~gone)
        if pc.label is not None:
            labels.append(volume_to_slices(pc.label.array.astype(np.uint8)))
            found |= np.bincount(labels[-1].ravel(), minlength=256).astype(bool)
    label_names = dict(ds.label_names) if ds.has_labels else {}
    if ds.has_labels and cfg.labels is not None:
        label_names = cfg.label_map.label_names
        _check_mapped_classes(ds, cfg, label_names, found, len(labels), console)
    elif ds.has_labels and ds.labels_inferred:
        label_names = infer_label_names(np.flatnonzero(found))
        if console is not None:
            console.print(f"[yellow]warning:[/] {inferred_warning(ds.root, label_names)}", highlight=False)
    sizes = [(a.shape[0], *a.shape[-2:]) for a in images]
    return PreparedData(
        images=torch.from_numpy(_stack(images)),
        labels=torch.from_numpy(_stack(labels)) if labels else None,
        case_ids=[c.case_id for c in ds.cases],
        affines=[pc.image.affine for pc in cases],
        label_names=label_names,
        intensity_ranges=[tuple(float(v) for v in pc.intensity_range) for pc in cases],
        observed=torch.from_numpy(_stack(observed).astype(np.uint8)) if any(not o.all() for o in observed) else None,
        shapes=sizes if len(set(sizes)) > 1 else None,
        preprocess=cfg,
        modalities=[str(pc.image.meta.get("modality", "") or "") for pc in cases],
        channel_names=ds.channel_list,
        channel_ranges=[tuple(tuple(float(v) for v in r) for r in pc.intensity_ranges) for pc in cases],
        **_image_fields(ds, cases),
    )


def _check_mapped_classes(ds, cfg: PreprocessConfig, names: dict[str, int], found: np.ndarray, n_maps: int, console):
    """A --labels mapping whose classes match no voxel is almost always a typo in the values: stop
    when no class matches anything (every voxel would be background), naming the values the first
    label map holds; warn for the single classes that match nothing."""
    absent = [name for name, value in names.items() if value and not found[value]]
    if not absent or not n_maps:
        return
    maps = "the label map" if n_maps == 1 else f"any of the {n_maps} label maps"
    if len(absent) == len(names) - 1:
        first = next(c for c in ds.cases if c.label is not None)
        values = np.unique(np.asarray(ds.read(first, None, allow_nan=True)[1].array))
        held = [str(int(v)) if float(v).is_integer() else f"{float(v):g}" for v in values if v != 0]
        raise LdmError(
            f"--labels {cfg.label_map.describe()} matches no voxel in {maps} (every voxel would be background); "
            f"{first.case_id}'s label map holds {len(held)} value(s) besides 0: {summarise(held, 6) or 'none'}"
        )
    if console is not None:
        listed = "; ".join(f"{n}={cfg.label_map.describe_class(n)}" for n in absent)
        console.print(
            f"[yellow]warning:[/] --labels: no voxel in {maps} belongs to {listed} (values not listed are background)",
            highlight=False,
        )


def _image_fields(ds, cases: list[PreprocessedCase]) -> dict:
    """The PreparedData fields of a 2D data set (nothing for volumes)."""
    if ds.image_dims != 2:
        return {}
    formats = sorted({str(pc.image.meta.get("format", "")) for pc in cases})
    dtypes = sorted({str(pc.image.meta.get("dtype", "")) for pc in cases})
    groups = [c.group for c in ds.cases]
    return {
        "image_dims": 2,
        "image_format": formats[0] if len(formats) == 1 else "png",
        "image_dtype": dtypes[0] if len(dtypes) == 1 else "uint16",
        "classes": groups if any(g is not None for g in groups) else None,
    }


def default_intensity(path: Path) -> dict | None:
    """The intensity setting a data set of 8-bit 2D images trains with when none is given: their
    0..255 scale as a fixed window (level 127.5, width 255), so every image keeps its brightness and
    samples come back on the same scale. None for other data (the per-case percentile default)."""
    from ldmtool.io import load_dataset, read_volume

    ds = load_dataset(Path(path))
    if ds.image_dims != 2 or read_volume(ds.cases[0].image).meta.get("dtype") != "uint8":
        return None
    return {"intensity": "ct_window", "ct_window": [127.5, 255.0]}
