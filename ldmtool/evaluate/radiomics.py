"""Radiomic and clinical attributes of a volume, computed by ldmtool (pyradiomics does not build here).

Per volume, on intensities in [0, 1]; the foreground is the voxels above `FOREGROUND` (the body or
brain after per-volume scaling):
* first order (IBSI names): mean, standard deviation, skewness, kurtosis, 10th/50th/90th
  percentile, interquartile range, energy (mean square), entropy of a 32-bin histogram;
* shape: foreground volume fraction and compactness (surface faces / volume^(2/3));
* GLCM texture (16 grey levels inside the foreground, offsets of one voxel along the three axes,
  symmetric, averaged): contrast, correlation, joint energy, homogeneity (inverse difference),
  joint entropy; computed on the volume average-pooled by 2 when it is large;
* regions, per label value 1..n_labels of the label map: volume fraction and mean intensity; for
  lesion labels also the number of connected lesions.
Attributes a volume cannot have (no label map, empty region) are NaN.
"""

from __future__ import annotations

import numpy as np

FOREGROUND = 0.1
GLCM_LEVELS = 16
LARGE = 64**3  # voxels above which the GLCM is computed on the volume pooled by 2


def attribute_names(label_names: dict[str, int] | None, n_labels: int) -> list[str]:
    """Names of the `radiomic_features` vector for a label layout."""
    first = ["mean", "std", "skewness", "kurtosis", "p10", "p50", "p90", "iqr", "energy", "entropy"]
    names = [f"firstorder:{n}" for n in first] + ["shape:volume_fraction", "shape:compactness"]
    names += [f"glcm:{n}" for n in ("contrast", "correlation", "joint_energy", "homogeneity", "joint_entropy")]
    by_value = {v: k for k, v in (label_names or {}).items()}
    for c in range(1, n_labels + 1):
        name = by_value.get(c, f"label_{c}")
        names += [f"region:{name}:volume_fraction", f"region:{name}:mean_intensity"]
        if _is_lesion(name):
            names.append(f"region:{name}:count")
    return names


def _is_lesion(name: str) -> bool:
    return any(key in name.lower() for key in ("lesion", "tumor", "tumour", "metast", "nodule"))


def first_order(values: np.ndarray) -> list[float]:
    """IBSI first-order statistics of the foreground intensities."""
    if values.size < 2:
        return [np.nan] * 10
    v = values.astype(np.float32)
    mean, std = float(v.mean(dtype=np.float64)), float(v.std(dtype=np.float64))
    z = (v - np.float32(mean)) / np.float32(std) if std > 0 else np.zeros_like(v)
    z2 = z * z
    p10, p25, p50, p75, p90 = (float(x) for x in np.percentile(v, [10, 25, 50, 75, 90]))
    hist = np.bincount(np.minimum((v * 32).astype(np.int64), 31), minlength=32) / v.size
    hist = hist[hist > 0]
    return [
        mean,
        std,
        float((z2 * z).mean(dtype=np.float64)),
        float((z2 * z2).mean(dtype=np.float64)),
        p10,
        p50,
        p90,
        p75 - p25,
        float((v * v).mean(dtype=np.float64)),
        float(-(hist * np.log2(hist)).sum()),
    ]


def shape_features(mask: np.ndarray) -> list[float]:
    """Foreground volume fraction and compactness (exposed voxel faces / volume^(2/3))."""
    n = int(mask.sum())
    if n == 0:
        return [0.0, np.nan]
    m = np.pad(mask, 1)
    faces = sum(int(np.count_nonzero(np.diff(m.astype(np.int8), axis=a))) for a in range(3))
    return [n / mask.size, faces / n ** (2 / 3)]


def glcm_features(image: np.ndarray, mask: np.ndarray, levels: int = GLCM_LEVELS) -> list[float]:
    """Symmetric grey-level co-occurrence statistics, offsets (1,0,0), (0,1,0), (0,0,1), averaged."""
    q = np.minimum((image * levels).astype(np.int64), levels - 1)
    glcm = np.zeros((levels, levels))
    q = np.where(mask, q, -1).astype(np.int16)  # outside the foreground: no pair
    for axis in range(3):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(0, -1), slice(1, None)
        a, b = q[tuple(lo)], q[tuple(hi)]
        both = (a >= 0) & (b >= 0)
        code = a[both].astype(np.int32) * levels + b[both]
        glcm += np.bincount(code, minlength=levels * levels).reshape(levels, levels)
    glcm = glcm + glcm.T
    if glcm.sum() == 0:
        return [np.nan] * 5
    p = glcm / glcm.sum()
    i, j = np.indices(p.shape)
    mu = (i * p).sum()
    var = ((i - mu) ** 2 * p).sum()
    nz = p[p > 0]
    return [
        float(((i - j) ** 2 * p).sum()),
        float(((i - mu) * (j - mu) * p).sum() / var) if var > 0 else 1.0,
        float((p * p).sum()),
        float((p / (1 + np.abs(i - j))).sum()),
        float(-(nz * np.log2(nz)).sum()),
    ]


def region_features(image: np.ndarray, label: np.ndarray | None, names: list[str]) -> list[float]:
    """Per label value: volume fraction, mean intensity (and lesion count), NaN without labels."""
    out: list[float] = []
    for c, name in enumerate(names, start=1):
        lesion = _is_lesion(name)
        if label is None:
            out += [np.nan] * (3 if lesion else 2)
            continue
        region = label == c
        n = int(region.sum())
        out += [n / label.size, float(image[region].mean()) if n else np.nan]
        if lesion:
            from scipy import ndimage

            out.append(float(ndimage.label(region)[1]))
    return out


def radiomic_features(
    image: np.ndarray, label: np.ndarray | None, label_names: dict[str, int] | None = None, n_labels: int = 0
) -> tuple[list[str], np.ndarray]:
    """(names, values) of one volume's attributes (see the module docstring)."""
    import torch

    names = attribute_names(label_names, n_labels)
    image = np.asarray(image, dtype=np.float32)
    mask = image > FOREGROUND
    feats = first_order(image[mask]) + shape_features(mask)
    small, small_mask = image, mask
    if image.size > LARGE:
        small = torch.nn.functional.avg_pool3d(torch.from_numpy(image)[None, None], 2)[0, 0].numpy()
        small_mask = small > FOREGROUND
    feats += glcm_features(small, small_mask)
    by_value = {v: k for k, v in (label_names or {}).items()}
    feats += region_features(image, label, [by_value.get(c, f"label_{c}") for c in range(1, n_labels + 1)])
    return names, np.asarray(feats, dtype=np.float64)
