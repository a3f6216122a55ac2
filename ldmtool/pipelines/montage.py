"""A quick-look PNG: axial and coronal mid-slices of a few volumes, lesion mask in red."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _to_rgb(image: np.ndarray, label: np.ndarray | None, lesion: int | None, lo: float, hi: float) -> np.ndarray:
    g = np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1)
    rgb = np.stack([g, g, g], -1)
    if label is not None and lesion is not None:
        m = label == lesion
        rgb[m] = 0.45 * rgb[m] + 0.55 * np.array([1.0, 0.1, 0.1])
    return (rgb * 255).astype(np.uint8)


def _views(image: np.ndarray, label: np.ndarray | None) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """Axial (k = mid) and coronal (j = mid) slices of an (I, J, K) RAS volume, displayed with
    anterior/superior up; a 2D image (I, J, 1) is only itself (its "coronal" slice is one row)."""
    i, j, k = image.shape
    ax = lambda a: None if a is None else a[:, :, k // 2].T[::-1]  # noqa: E731
    co = lambda a: None if a is None else a[:, j // 2, :].T[::-1]  # noqa: E731
    return [(ax(image), ax(label))] + ([(co(image), co(label))] if k > 1 else [])


def montage(volumes: list[tuple[np.ndarray, np.ndarray | None]], lesion: int | None = 2, scale: int = 3) -> np.ndarray:
    """Grid image: one column per volume, rows axial and coronal."""
    cols = []
    for image, label in volumes:
        lo, hi = np.percentile(image, [0.5, 99.5])
        tiles = [_to_rgb(a, b, lesion, lo, hi) for a, b in _views(image, label)]
        width = max(t.shape[1] for t in tiles)
        tiles = [np.pad(t, ((0, 2), (0, width - t.shape[1]), (0, 0))) for t in tiles]
        cols.append(np.concatenate(tiles, 0))
    height = max(c.shape[0] for c in cols)
    cols = [np.pad(c, ((0, height - c.shape[0]), (0, 2), (0, 0))) for c in cols]
    grid = np.concatenate(cols, 1)
    return grid.repeat(scale, 0).repeat(scale, 1)


def write_montage(dataset_dir: Path, png: Path, max_samples: int = 8) -> Path | None:
    """Montage of the first volumes of an nnU-Net style folder (imagesTr/ + labelsTr/)."""
    import json

    from PIL import Image

    from ldmtool.io import read_nifti
    from ldmtool.io.atomic import atomic_path

    dataset_dir = Path(dataset_dir)
    images = sorted((dataset_dir / "imagesTr").glob("*_0000.nii.gz"))[:max_samples]
    if not images:
        return None
    lesion = None
    ds_json = dataset_dir / "dataset.json"
    if ds_json.is_file():
        from ldmtool.data.lesions import lesion_class

        labels = json.loads(ds_json.read_text()).get("labels") or {}
        lesion = lesion_class(labels) if len(labels) > 1 else None
    vols = []
    for path in images:
        case = path.name[: -len("_0000.nii.gz")]
        lab_path = dataset_dir / "labelsTr" / f"{case}.nii.gz"
        image = np.asarray(read_nifti(path).array, dtype=np.float32)
        label = np.asarray(read_nifti(lab_path).array) if lab_path.is_file() else None
        vols.append((image, label))
    with atomic_path(png) as tmp:
        Image.fromarray(montage(vols, lesion)).save(tmp, format="PNG")
    return Path(png)
