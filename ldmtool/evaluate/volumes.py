"""Volume sets for evaluation: read a data set, normalise intensities, bring to one shape."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from ldmtool.errors import LdmError
from ldmtool.io._util import value_counts


class VolumeSet:
    """Images (N, I, J, K) scaled to [0, 1] per volume, optional uint8 labels, case ids, label names.

    Either held in memory (arrays given) or read case by case from a data set (`open_volume_set`):
    `volume(i)` / `label(i)` / `iter_volumes()` read one case at a time and release it, so a
    stage that streams holds one volume (every stage of `evaluate` does; the downstream models read
    their cases through `ldmtool.evaluate.cases`); `images` / `labels` read the whole set once (and
    keep it), for small sets and for code that wants one array.
    """

    def __init__(
        self,
        name: str,
        root: Path | None,
        images: np.ndarray | None,
        labels: np.ndarray | None,
        case_ids: list[str],
        label_names: dict[str, int] | None = None,
        spacing: tuple[float, float, float] | None = None,
        *,
        reader=None,
        image_reader=None,
        shape: tuple[int, int, int] | None = None,
        has_labels: bool | None = None,
        files: list[list[Path]] | None = None,
        classes: list[str | None] | None = None,
    ) -> None:
        self.name, self.root, self.case_ids = name, root, list(case_ids)
        self.label_names = dict(label_names or {})
        self.spacing = spacing  # voxel size (mm) of the first case as read
        # shared with aliases: the arrays once read, and the taps (callables told of every case read)
        self._store = {"images": images, "labels": labels, "taps": [], "wants": {}}
        self._reader = reader
        self._image_reader = image_reader  # i → image only (no label read), when the reader has one
        self._shape = tuple(shape) if shape is not None else tuple(images.shape[1:])
        self.has_labels = labels is not None if has_labels is None else bool(has_labels)
        self.files = files or [[] for _ in self.case_ids]  # per case: image (and label) file
        # per case: its class (class folder, or `sample --class` provenance), None when unknown
        self.classes = list(classes) if classes is not None else [None] * len(self.case_ids)

    def __len__(self) -> int:
        return len(self.case_ids)

    @property
    def shape(self) -> tuple[int, int, int]:
        return self._shape  # type: ignore[return-value]

    @property
    def in_memory(self) -> bool:
        return self._store["images"] is not None

    def alias(self, name: str) -> VolumeSet:
        """The same cases under another name, sharing reader and loaded arrays (one folder, one read)."""
        twin = VolumeSet(
            name,
            self.root,
            None,
            None,
            self.case_ids,
            self.label_names,
            self.spacing,
            reader=self._reader,
            image_reader=self._image_reader,
            shape=self.shape,
            has_labels=self.has_labels,
            files=self.files,
            classes=self.classes,
        )
        twin._store = self._store
        return twin

    @property
    def key(self) -> int:
        """Equal for a set and its aliases."""
        return id(self._store)

    def read(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Case i: image (I, J, K) float32 in [0, 1] and uint8 label map (None without labels)."""
        images, labels = self._store["images"], self._store["labels"]
        if images is not None:
            out = images[i], None if labels is None else labels[i]
        else:
            out = self._reader(i)
        for tap in self._store["taps"]:
            tap(self, i, *out)
        return out

    def tap(self, fn, wants=None) -> None:
        """Call fn(set, i, image, label) on every case read from now on (this set and its aliases),
        so a later stage can keep what an earlier one reads (`ldmtool.evaluate.cases.CaseStore`).
        `wants(i)` says whether fn still needs case i whole (None: always): `volume(i)` reads
        the label map only for a case some tap wants."""
        if fn not in self._store["taps"]:
            self._store["taps"].append(fn)
            self._store["wants"][fn] = wants

    def untap(self, fn) -> None:
        if fn in self._store["taps"]:
            self._store["taps"].remove(fn)
            self._store["wants"].pop(fn, None)

    def _wanted(self, i: int) -> bool:
        wants = self._store["wants"]
        return any(wants.get(fn) is None or wants[fn](i) for fn in self._store["taps"])

    def stack(self, indices) -> np.ndarray:
        """Images of the given cases (K, I, J, K), read as needed."""
        return np.stack([self.volume(int(i)) for i in indices])

    def volume(self, i: int) -> np.ndarray:
        """Case i's image; its label map is not read when no tap wants the whole case."""
        if self._store["images"] is None and self._image_reader is not None and not self._wanted(i):
            return self._image_reader(i)
        return self.read(i)[0]

    def label(self, i: int) -> np.ndarray | None:
        return self.read(i)[1]

    def iter_volumes(self):
        """(index, image, label) one case at a time."""
        for i in range(len(self)):
            img, lab = self.read(i)
            yield i, img, lab

    def _load_all(self) -> None:
        imgs, labs = [], []
        for _, img, lab in self.iter_volumes():
            imgs.append(img)
            labs.append(lab)
        self._store["labels"] = np.stack(labs) if self.has_labels else None
        self._store["images"] = np.stack(imgs).astype(np.float32)

    @property
    def images(self) -> np.ndarray:
        if self._store["images"] is None:
            self._load_all()
        return self._store["images"]

    @property
    def labels(self) -> np.ndarray | None:
        if not self.has_labels:
            return None
        if self._store["images"] is None:
            self._load_all()
        return self._store["labels"]


def _percentiles(image: np.ndarray, percentiles: tuple[float, ...]) -> list[float]:
    """np.percentile (linear interpolation); integer volumes through their value counts
    (`value_counts`), which give the same order statistics without sorting millions of values."""
    counted = value_counts(image, 1 << 24)
    if counted is None:
        return [float(v) for v in np.percentile(image, percentiles)]
    counts, base = counted
    counts = np.cumsum(counts)
    out = []
    for q in percentiles:
        h = (image.size - 1) * q / 100.0
        k = int(np.floor(h))
        below, above = (int(np.searchsorted(counts, r, side="right")) for r in (k, min(k + 1, image.size - 1)))
        out.append(base + below + (h - k) * (above - below))
    return out


def normalise01(image: np.ndarray, percentiles: tuple[float, float] = (0.5, 99.5)) -> np.ndarray:
    """Scale a volume to [0, 1] between two intensity percentiles (robust to outliers)."""
    raw = np.asarray(image)
    if not np.issubdtype(raw.dtype, np.integer) and not np.all(np.isfinite(raw)):
        raise LdmError("a volume holds NaN or infinite values")
    lo, hi = _percentiles(raw, percentiles)
    if hi - lo < 1e-8:
        return np.zeros(raw.shape, dtype=np.float32)
    out = raw.astype(np.float32, order="C")  # C order: what every later stage reads fastest
    out -= np.float32(lo)
    out /= np.float32(hi - lo)
    return np.clip(out, 0.0, 1.0, out=out)


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


def _geometry(ds, case) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """(shape, voxel size) of a case from its NIfTI header without reading voxels (else a full read)."""
    name = case.image.name.lower()
    if case.image.is_file() and (name.endswith(".nii") or name.endswith(".nii.gz")):
        import nibabel as nib

        hdr = nib.load(str(case.image)).header
        shape = tuple(int(s) for s in hdr.get_data_shape())
        shape = shape[:3] if len(shape) == 4 and shape[3] == 1 else shape
        return shape, tuple(float(z) for z in hdr.get_zooms()[:3])
    img, _ = ds.read(case)
    return tuple(np.asarray(img.array).shape), tuple(img.spacing)


def _label_uint8(lab: np.ndarray, case) -> np.ndarray:
    lab = np.asarray(lab)
    if lab.size and (lab.min() < 0 or lab.max() > 255):
        raise LdmError(f"{case.label}: label values must be 0-255 for evaluation; got {lab.min()}-{lab.max()}")
    return lab.astype(np.uint8, order="C")


def open_volume_set(
    path: Path,
    name: str,
    shape: tuple[int, int, int] | None = None,
    max_cases: int | None = None,
    spacing: tuple[float, float, float] | None = None,
    channel: str | int | None = None,
) -> VolumeSet:
    """A data set (nnU-Net layout or a folder of volumes) to be read case by case.

    `channel`: the contrast to read from a set of several channels per case (by name, or by index);
    a set of one channel is read as it is. A set of several channels without it is an error.

    Images are scaled to [0, 1] per volume (0.5/99.5 percentiles). Every case is brought to one
    shape: `shape` when given, else the per-axis maximum of the set's shapes (from the file
    headers). A case whose voxel size is `spacing` (default: the first case's) is centre
    padded/cropped to it (same grid, only the field of view differs); one of another voxel size is
    resized (labels by nearest neighbour). Labels are uint8.
    """
    from ldmtool.io import load_dataset

    ds = load_dataset(path)
    cases = ds.cases[:max_cases] if max_cases else ds.cases
    if not cases:
        raise LdmError(f"no volumes found in {path}")
    pick = None  # the channel taken from cases of several
    if ds.channels > 1:
        names = ds.channel_list
        if channel is None:
            raise LdmError(
                f"{path} has {ds.channels} channels per case ({', '.join(names)}); evaluation reads one: "
                f"choose it with --channel {names[0]}"
            )
        if isinstance(channel, int):
            if not 0 <= channel < len(names):
                raise LdmError(f"{path} has {len(names)} channels ({', '.join(names)}); there is no channel {channel}")
            channel = names[channel]
        if channel not in names:
            raise LdmError(f"{path} has no channel {channel!r}; its channels are {', '.join(names)}")
        pick = names.index(channel)
        lacking = [c.case_id for c in cases if pick in c.absent]
        if lacking:
            raise LdmError(f"case {lacking[0]} of {path} has no {channel} file ({len(lacking)} cases lack it)")
    first_img, _ = ds.read(cases[0], allow_nan=pick is not None)
    ref_spacing = tuple(spacing) if spacing is not None else tuple(first_img.spacing)
    if shape is None:
        first = np.asarray(first_img.array).shape
        shapes = [first if pick is None else first[:3]] + [_geometry(ds, c)[0] for c in cases[1:]]
        bad = [(c, s) for c, s in zip(cases, shapes) if len(s) != 3]
        if bad:
            raise LdmError(f"{bad[0][0].image}: evaluate needs 3D single-channel volumes, got shape {bad[0][1]}")
        shape = tuple(max(s[a] for s in shapes) for a in range(3))
    target = tuple(int(s) for s in shape)

    def reader(i: int, with_label: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        case = cases[i] if with_label or cases[i].label is None else dataclasses.replace(cases[i], label=None)
        img, lab = ds.read(case, allow_nan=pick is not None)  # another channel may be absent
        arr = np.asarray(img.array)
        if pick is not None:
            arr = arr[..., pick]
        if arr.ndim != 3:
            raise LdmError(f"{case.image}: evaluate needs 3D single-channel volumes, got shape {arr.shape}")
        if not np.all(np.isfinite(arr)):
            raise LdmError(f"{case.image} holds NaN or infinite values")
        same = bool(np.allclose(img.spacing, ref_spacing, rtol=0.01))
        image = fit_volume(normalise01(arr), target, same).astype(np.float32, copy=False)
        if not (ds.has_labels and with_label):
            return image, None
        return image, fit_volume(_label_uint8(lab.array, case), target, same, label=True)

    return VolumeSet(
        name,
        Path(path),
        None,
        None,
        [c.case_id for c in cases],
        dict(ds.label_names),
        ref_spacing,
        reader=reader,
        image_reader=lambda i: reader(i, with_label=False)[0],
        shape=target,
        has_labels=ds.has_labels,
        files=[
            [c.image if pick is None else c.channel_files[pick]] + ([c.label] if c.label is not None else [])
            for c in cases
        ],
        classes=_case_classes(Path(path), cases),
    )


def _case_classes(root: Path, cases) -> list[str | None]:
    """Each case's class: its class folder (`CLASS/case.png`), else the class a `sample --class`
    run recorded in the case's provenance (`provenance/CASE.json`, conditions.class), else None."""
    import json

    out = []
    for c in cases:
        label = c.group
        prov = root / "provenance" / f"{c.case_id}.json"
        if label is None and prov.is_file():
            try:
                label = (json.loads(prov.read_text()).get("conditions") or {}).get("class")
            except (OSError, ValueError, AttributeError):
                label = None
        out.append(None if label is None else str(label))
    return out


def concat_sets(name: str, parts: list[VolumeSet]) -> VolumeSet:
    """Several folders read as one set (e.g. `sample --class` runs of each class, one folder each),
    brought to one shape beforehand. Case ids that repeat across folders are prefixed with their
    folder's name (`synth_normal/synth_00000`)."""
    if len(parts) == 1:
        return parts[0]
    shapes = {p.shape for p in parts}
    if len(shapes) != 1:
        raise LdmError(f"the {name} folders were read in different shapes: {sorted(shapes)}")
    ids = [c for p in parts for c in p.case_ids]
    clash = len(set(ids)) != len(ids)
    case_ids = [f"{p.root.name}/{c}" if clash else c for p in parts for c in p.case_ids]
    if len(set(case_ids)) != len(case_ids):
        raise LdmError(
            f"the {name} folders repeat case ids even with their folder names; give folders of distinct names"
        )
    where = [(k, i) for k, p in enumerate(parts) for i in range(len(p))]
    has_labels = all(p.has_labels for p in parts)

    def reader(j: int) -> tuple[np.ndarray, np.ndarray | None]:
        k, i = where[j]
        img, lab = parts[k].read(i)
        return img, lab if has_labels else None

    def image_reader(j: int) -> np.ndarray:
        k, i = where[j]
        return parts[k].volume(i)

    names: dict[str, int] = {}
    for p in parts:
        names.update(p.label_names)
    return VolumeSet(
        name,
        parts[0].root,
        None,
        None,
        case_ids,
        names,
        parts[0].spacing,
        reader=reader,
        image_reader=image_reader,
        shape=parts[0].shape,
        has_labels=has_labels,
        files=[f for p in parts for f in p.files],
        classes=[c for p in parts for c in p.classes],
    )


def load_volume_set(
    path: Path,
    name: str,
    shape: tuple[int, int, int] | None = None,
    max_cases: int | None = None,
    console=None,
    spacing: tuple[float, float, float] | None = None,
) -> VolumeSet:
    """Read every case of a data set into memory (see `open_volume_set` for the normalisation)."""
    vs = open_volume_set(path, name, shape=shape, max_cases=max_cases, spacing=spacing)
    vs.images  # noqa: B018 - read now
    return vs
