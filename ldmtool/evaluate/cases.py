"""Cases for the downstream models of `evaluate` (utility, robustness, the augmentation curve),
referenced one case at a time so that no set is ever stacked into one array.

A `Cases` is a list of per-case handles (image (I, J, K) float32 in [0, 1] and, for segmentation,
a uint8 label map) plus optional class ids. Subsets and concatenations (real + synthetic, the
utility curve's nested subsets) are new lists of the same handles: nothing is copied. A handle
keeps its arrays in memory, or — when the sets together are larger than `IN_MEMORY_BYTES` — as
two `.npy` files in slice-major (K, I, J) layout in a scratch folder, read through memory maps:
an axial slice is one contiguous block, and the operating system's page cache, not the process,
holds what is read (the way nnU-Net unpacks its training cases to `.npy` and memory-maps them).
Per-slice class presence and per-case class voxel counts are computed once, when a case is
first read, so the rare-class oversampling and the class count need no second pass over labels.
"""

from __future__ import annotations

import shutil
import signal
import tempfile
import threading
from pathlib import Path

import numpy as np
import torch

from ldmtool.runtime import release_memory

# Sets whose images and labels together exceed this are unpacked to disk (see the module note).
IN_MEMORY_BYTES = 2 * 1024**3


class _Case:
    """One case: its image and optional label map, in memory ((I, J, K) arrays) or on disk
    ((K, I, J) `.npy` files), with its per-slice class presence (K, 256) and class voxel counts."""

    __slots__ = ("_image", "_label", "_image_path", "_label_path", "presence", "counts")

    def __init__(self, image: np.ndarray, label: np.ndarray | None, folder: Path | None = None, name: str = "") -> None:
        self.presence = self.counts = None
        if label is not None:
            flat = label.reshape(-1, label.shape[2]) if label.ndim == 3 else label.reshape(-1, 1)
            self.counts = np.bincount(label.ravel(), minlength=256)
            present = np.flatnonzero(self.counts)
            self.presence = np.zeros((flat.shape[1], 256), dtype=bool)  # (K, class)
            for c in present:
                self.presence[:, c] = (flat == c).any(0)
        if folder is None:
            self._image, self._label, self._image_path, self._label_path = image, label, None, None
            return
        self._image = self._label = None
        self._image_path = folder / f"{name}_image.npy"
        np.save(self._image_path, np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))
        self._label_path = None
        if label is not None:
            self._label_path = folder / f"{name}_label.npy"
            np.save(self._label_path, np.ascontiguousarray(label.transpose(2, 0, 1), dtype=np.uint8))

    def image(self) -> np.ndarray:
        """(I, J, K) float32 (a memory-mapped view for a case on disk)."""
        if self._image_path is None:
            return self._image
        return np.load(self._image_path, mmap_mode="r").transpose(1, 2, 0)

    def label(self) -> np.ndarray | None:
        if self._label_path is None:
            return self._label
        return np.load(self._label_path, mmap_mode="r").transpose(1, 2, 0)

    def slices(self, ks: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Axial slices `ks`: images (n, I, J) float32 and labels (n, I, J) uint8 (or None)."""
        if self._image_path is None:
            lab = None if self._label is None else self._label[:, :, ks].transpose(2, 0, 1)
            return self._image[:, :, ks].transpose(2, 0, 1), lab
        img = np.load(self._image_path, mmap_mode="r")[ks]
        lab = None if self._label_path is None else np.load(self._label_path, mmap_mode="r")[ks]
        return img, lab


class Cases:
    """Cases of one or more sets, in order; `targets` are class ids (classification) or None
    (segmentation: the label maps live in the cases)."""

    def __init__(self, items: list[_Case], shape: tuple[int, int, int], targets: np.ndarray | None = None) -> None:
        self.items, self.shape = list(items), tuple(shape)
        self.targets = None if targets is None else np.asarray(targets, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.items)

    def subset(self, indices) -> Cases:
        idx = [int(i) for i in indices]
        return Cases([self.items[i] for i in idx], self.shape, None if self.targets is None else self.targets[idx])

    def __add__(self, other: Cases) -> Cases:
        if (self.targets is None) != (other.targets is None):
            raise ValueError("cannot join cases with class ids to cases without")
        targets = None if self.targets is None else np.concatenate([self.targets, other.targets])
        return Cases(self.items + other.items, self.shape, targets)

    def with_targets(self, targets) -> Cases:
        return Cases(self.items, self.shape, targets)

    # -------------------------------------------------------------- segmentation

    @property
    def n_slices(self) -> int:
        return len(self) * self.shape[2]

    def class_counts(self) -> np.ndarray:
        """Voxels per label value (256,) over every case."""
        return np.sum([c.counts for c in self.items], axis=0) if self.items else np.zeros(256, dtype=np.int64)

    def max_label(self) -> int:
        nz = np.flatnonzero(self.class_counts())
        return int(nz[-1]) if len(nz) else 0

    def slices_with(self, value: int) -> torch.Tensor:
        """Global indices (case · K + k) of the axial slices holding label `value`."""
        k = self.shape[2]
        hits = [i * k + np.flatnonzero(c.presence[:, value]) for i, c in enumerate(self.items)]
        return torch.from_numpy(np.concatenate(hits) if hits else np.zeros(0, dtype=np.int64)).long()

    def slice_batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Global slice indices → images (B, 1, I, J) float32 and labels (B, 1, I, J) int64, in
        the order given; each case is read once per batch."""
        k = self.shape[2]
        idx = indices.numpy() if isinstance(indices, torch.Tensor) else np.asarray(indices)
        x = np.empty((len(idx), 1, *self.shape[:2]), dtype=np.float32)
        y = np.empty((len(idx), 1, *self.shape[:2]), dtype=np.uint8)
        cases, ks = idx // k, idx % k
        for c in np.unique(cases):
            where = np.flatnonzero(cases == c)
            img, lab = self.items[c].slices(ks[where])
            x[where, 0], y[where, 0] = img, lab
        return torch.from_numpy(x), torch.from_numpy(y).long()

    def case(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Case i: image (I, J, K) and label map (or None)."""
        return self.items[i].image(), self.items[i].label()

    # ------------------------------------------------------------ classification

    def volume_batch(self, indices) -> torch.Tensor:
        """(B, 1, I, J, K) float32 images of the given cases."""
        return torch.from_numpy(np.stack([np.asarray(self.items[int(i)].image(), dtype=np.float32) for i in indices]))[
            :, None
        ]


def cases_from_arrays(images: np.ndarray, labels: np.ndarray | None = None, targets=None) -> Cases:
    """Cases over (N, I, J, K) arrays (views, no copies): label maps for segmentation, or class ids."""
    items = [
        _Case(images[i], None if labels is None else np.asarray(labels[i], dtype=np.uint8)) for i in range(len(images))
    ]
    return Cases(items, tuple(images.shape[1:]), targets)


def _stop(signum, frame) -> None:
    raise SystemExit(128 + signum)


class CaseStore:
    """Reads `VolumeSet`s into `Cases` for one evaluation: every set once (aliases share), in memory
    while the sets planned so far fit in `budget` bytes, else unpacked into a scratch folder under
    `parent` that is removed on exit (also on SIGTERM, which then ends the run with status 143;
    only a SIGKILL leaves a `.downstream-cases-*` folder behind). `budget` defaults to
    `IN_MEMORY_BYTES`.

    `watch(vs)` before the earlier stages stream a set (the feature pass) keeps each case as that
    stage reads it, so `get(vs)` reads only the cases no stage has read: one read per volume."""

    def __init__(self, parent: Path, budget: int | None = None, stages=None) -> None:
        self.parent, self.stages = Path(parent), stages
        self.budget = IN_MEMORY_BYTES if budget is None else int(budget)
        self._scratch: Path | None = None
        self._installed, self._previous = False, None
        self._sets: dict[int, tuple[object, Path | None, list[_Case | None]]] = {}  # key → (set, folder, cases)
        self._read: dict[int, Cases] = {}

    def __enter__(self) -> CaseStore:
        # SIGTERM (a scheduler's stop) ends the run through __exit__, so the scratch folder goes too
        self._installed = threading.current_thread() is threading.main_thread()
        if self._installed:
            self._previous = signal.signal(signal.SIGTERM, _stop)
        return self

    def __exit__(self, *exc) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous if self._previous is not None else signal.SIG_DFL)
            self._installed = False
        for vs, _, _ in self._sets.values():
            vs.untap(self._keep)
        self._sets.clear()
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    def watch(self, vs) -> None:
        """Plan where the cases of `vs` go and keep every case that any stage reads from now on."""
        if vs.key in self._sets:
            return
        nbytes = len(vs) * int(np.prod(vs.shape)) * (4 + (1 if vs.has_labels else 0))
        folder = None
        if vs.in_memory or nbytes <= self.budget:
            self.budget -= 0 if vs.in_memory else nbytes
        else:
            if self._scratch is None:
                self.parent.mkdir(parents=True, exist_ok=True)
                self._scratch = Path(tempfile.mkdtemp(prefix=".downstream-cases-", dir=self.parent))
            folder = self._scratch / f"set{len(self._sets)}"
            folder.mkdir()
        items: list[_Case | None] = [None] * len(vs)
        self._sets[vs.key] = (vs, folder, items)
        vs.tap(self._keep, wants=lambda i: items[i] is None)

    def _keep(self, vs, i: int, img: np.ndarray, lab: np.ndarray | None) -> None:
        _, folder, items = self._sets[vs.key]
        if items[i] is None:
            items[i] = _Case(np.asarray(img, dtype=np.float32), lab, folder, f"c{i:06d}")
            if folder is not None:
                release_memory()  # the layout copies written to disk (see ldmtool.runtime.release_memory)

    def get(self, vs) -> Cases:
        """The cases of a VolumeSet (labels kept when it has them), reading those not yet kept."""
        if vs.key in self._read:
            return self._read[vs.key]
        self.watch(vs)
        _, _, items = self._sets[vs.key]
        missing = [i for i, c in enumerate(items) if c is None]
        step = None
        if self.stages is not None and missing:
            step = self.stages.stage(f"reading {vs.name} for the downstream models", len(missing))
        for i in missing:
            vs.read(i)  # kept by the tap
            if step is not None:
                step()
        vs.untap(self._keep)
        self._read[vs.key] = out = Cases(items, vs.shape)
        return out

    @property
    def on_disk(self) -> bool:
        return self._scratch is not None
