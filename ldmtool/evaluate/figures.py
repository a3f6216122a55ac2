"""PNG figures of the report (matplotlib, Agg backend; written atomically)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    from ldmtool.io.atomic import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def montage_png(real, synthetic, path: Path, n: int = 6) -> Path:
    """Axial and coronal mid-slices: real volumes (top) above synthetic ones (bottom)."""
    from PIL import Image

    from ldmtool.io.atomic import atomic_path
    from ldmtool.pipelines.montage import montage

    def grid(vs):
        vols = [vs.read(i) for i in range(min(n, len(vs)))]
        return montage(vols, lesion=None, scale=3)

    a, b = grid(real), grid(synthetic)
    width = max(a.shape[1], b.shape[1])
    pad = lambda g: np.pad(g, ((0, 0), (0, width - g.shape[1]), (0, 0)))  # noqa: E731
    sep = np.full((8, width, 3), 255, np.uint8)
    img = np.concatenate([pad(a), sep, pad(b)], 0)
    with atomic_path(path) as tmp:
        Image.fromarray(img).save(tmp, format="PNG")
    return Path(path)


def _mid_views(vol: np.ndarray) -> np.ndarray:
    """Axial | coronal mid-slices of a volume; a 2D image (I, J, 1) alone."""
    i, j, k = vol.shape
    ax = vol[:, :, k // 2].T[::-1]
    if k == 1:
        return ax
    co = vol[:, j // 2, :].T[::-1]
    h = max(ax.shape[0], co.shape[0])
    ax = np.pad(ax, ((0, h - ax.shape[0]), (0, 0)))
    co = np.pad(co, ((0, h - co.shape[0]), (0, 0)))
    return np.concatenate([ax, np.ones((h, 1)), co], 1)


def pair_png(synthetic: np.ndarray, train: np.ndarray, path: Path, title: str) -> Path:
    """A synthetic volume beside its closest training volume (axial | coronal mid-slices)."""
    plt = _plt()
    # constrained layout keeps the figure title clear of the panel titles (square 2D images too)
    fig, axes = plt.subplots(1, 2, figsize=(7, 3), layout="constrained")
    kind = "image" if synthetic.ndim == 2 or synthetic.shape[-1] == 1 else "volume"
    for ax, vol, name in zip(axes, (synthetic, train), ("synthetic", f"nearest training {kind}")):
        ax.imshow(_mid_views(vol), cmap="gray", vmin=0, vmax=1)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def ssim_histogram_png(syn: np.ndarray, heldout: np.ndarray | None, threshold: float, path: Path) -> Path:
    """Histogram of each volume's max SSIM to the training set: synthetic vs held-out real."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3))
    lo = float(min(syn.min(), heldout.min() if heldout is not None else 1.0, threshold)) - 0.02
    bins = np.linspace(lo, 1.0, 30)
    ax.hist(syn, bins=bins, alpha=0.6, label="synthetic → train")
    if heldout is not None:
        ax.hist(heldout, bins=bins, alpha=0.6, label="held-out real → train")
    ax.axvline(threshold, color="red", linestyle="--", label=f"flag threshold {threshold:g}")
    ax.set_xlabel("highest SSIM to any training volume")
    ax.set_ylabel("volumes")
    ax.legend(fontsize=8)
    return _save(fig, path)


def precision_recall_png(per_view: dict, overall: tuple[float, float], path: Path) -> Path:
    """Precision and recall bars, overall and per view."""
    plt = _plt()
    names = ["all views"] + list(per_view)
    p = [overall[0]] + [per_view[v]["precision"] for v in per_view]
    r = [overall[1]] + [per_view[v]["recall"] for v in per_view]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.bar(x - 0.2, p, 0.4, label="precision (fidelity)")
    ax.bar(x + 0.2, r, 0.4, label="recall (diversity)")
    ax.set_xticks(x, names)
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    return _save(fig, path)


def utility_png(
    clean: dict[str, float], perturbed: dict[str, dict[str, float]] | None, metric: str, path: Path
) -> Path:
    """Bars per training source: clean score and, when present, scores under each perturbation."""
    plt = _plt()
    sources = list(clean)
    conds = ["clean"] + (sorted({p for v in (perturbed or {}).values() for p in v}) if perturbed else [])
    x = np.arange(len(sources))
    w = 0.8 / len(conds)
    fig, ax = plt.subplots(figsize=(6, 3))
    for i, c in enumerate(conds):
        vals = [clean[s] if c == "clean" else perturbed[s].get(c, np.nan) for s in sources]
        ax.bar(x - 0.4 + w * (i + 0.5), vals, w, label=c)
    ax.set_xticks(x, [f"trained on {s}" for s in sources])
    ax.set_ylabel(f"{metric} on real test")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    return _save(fig, path)


def utility_curve_png(
    sizes: list[int], curves: dict[str, tuple[list[float], list[float]]], metric: str, path: Path
) -> Path:
    """Score vs real training size N (log axis), one line per training condition {name: (means, stds)};
    error bars are the std over repeats. Lines are nudged sideways a little so the bars do not overlap."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    nudge = np.linspace(-0.03, 0.03, len(curves)) if len(curves) > 1 else [0.0]
    for shift, (name, (mean, std)) in zip(nudge, curves.items()):
        x = np.asarray(sizes, dtype=float) * (1 + shift)
        ax.errorbar(x, mean, yerr=std, marker="o", markersize=4, capsize=3, label=name)
    ax.set_xscale("log")
    ax.set_xticks(sizes, [str(n) for n in sizes])
    ax.minorticks_off()
    ax.set_xlabel("real training cases N")
    ax.set_ylabel(f"{metric} on real test")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    return _save(fig, path)
