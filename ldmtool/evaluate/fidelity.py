"""Fidelity and diversity in a feature space: improved precision/recall, FID, MMD, SSIM diversity."""

from __future__ import annotations

import numpy as np
import torch


def _distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.cdist(a.double(), b.double())


def knn_radii(feats: np.ndarray, k: int = 3) -> np.ndarray:
    """Distance of each point to its k-th nearest neighbour in the same set (itself excluded)."""
    x = torch.from_numpy(np.asarray(feats))
    d = _distances(x, x)
    k_eff = min(k, len(x) - 1)
    if k_eff < 1:
        return np.zeros(len(x))
    # column 0 of the sorted row is the point itself (distance 0)
    return torch.sort(d, dim=1).values[:, k_eff].numpy()


def coverage_fraction(centres: np.ndarray, radii: np.ndarray, queries: np.ndarray) -> float:
    """Share of `queries` inside at least one ball (centre, radius): the manifold estimate of
    Kynkäänniemi et al. 2019 (written here: MONAI and PyTorch have no improved precision/recall)."""
    d = _distances(torch.from_numpy(np.asarray(queries)), torch.from_numpy(np.asarray(centres)))
    inside = d <= torch.from_numpy(np.asarray(radii))[None] * (1 + 1e-9)
    return float(inside.any(dim=1).double().mean())


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Improved precision (fidelity: fake inside the real manifold) and recall (diversity: real
    inside the fake manifold) with k-nearest-neighbour balls."""
    precision = coverage_fraction(real, knn_radii(real, k), fake)
    recall = coverage_fraction(fake, knn_radii(fake, k), real)
    return precision, recall


def fid(real: np.ndarray, fake: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets.

    |μr − μf|² + Tr Σr + Tr Σf − 2 Tr (Σr Σf)^½, the quantity of MONAI's FIDMetric. The trace of
    the matrix square root is computed from the samples: with centred data Xr (n×F), Xf (m×F),
    the eigenvalues of Σr Σf are the squared singular values of Xr Xfᵀ / √((n−1)(m−1)), so
    Tr (Σr Σf)^½ is the sum of those singular values. This is exact and costs O(n·m·F) instead of
    the O(F³) `sqrtm` of an F×F matrix (F = 1280 here); tests check it against scipy's sqrtm.
    With more samples than features (n·m > F²) the F×F route is cheaper: the eigenvalues of
    Σr Σf are those of the symmetric Σr^½ Σf Σr^½ (`_trace_sqrt_product`). MONAI's FIDMetric itself
    is not called: it passes `disp=False` to scipy's sqrtm, which scipy ≥ 1.18 no longer takes.
    """
    r = torch.from_numpy(np.asarray(real)).double()
    f = torch.from_numpy(np.asarray(fake)).double()
    if len(r) < 2 or len(f) < 2:
        return float("nan")
    mu_r, mu_f = r.mean(0), f.mean(0)
    xr, xf = r - mu_r, f - mu_f
    tr_r = (xr * xr).sum() / (len(r) - 1)
    tr_f = (xf * xf).sum() / (len(f) - 1)
    if len(r) * len(f) > r.shape[1] ** 2:
        root = _trace_sqrt_product(xr.T @ xr / (len(r) - 1), xf.T @ xf / (len(f) - 1))
    else:
        root = (torch.linalg.svdvals(xr @ xf.T) / np.sqrt((len(r) - 1) * (len(f) - 1))).sum()
    value = (mu_r - mu_f).square().sum() + tr_r + tr_f - 2 * root
    return max(0.0, float(value))


def _trace_sqrt_product(sigma_r: torch.Tensor, sigma_f: torch.Tensor) -> torch.Tensor:
    """Tr (Σr Σf)^½ of two covariance matrices: Σr Σf is similar to the symmetric positive
    semi-definite Σr^½ Σf Σr^½, whose eigenvalues (clipped at 0 against round-off) have real roots."""
    w, v = torch.linalg.eigh(sigma_r)
    half = (v * w.clamp(min=0).sqrt()) @ v.T
    return torch.linalg.eigvalsh(half @ sigma_f @ half).clamp(min=0).sqrt().sum()


def mmd(real: np.ndarray, fake: np.ndarray, seed: int = 0) -> float:
    """Linear-kernel MMD between feature sets (MONAI's MMDMetric), on equal-size random subsets."""
    from monai.metrics import MMDMetric

    n = min(len(real), len(fake))
    if n < 2:
        return float("nan")
    rng = np.random.default_rng(seed)
    r = torch.from_numpy(np.asarray(real)[rng.choice(len(real), n, replace=False)]).double()
    f = torch.from_numpy(np.asarray(fake)[rng.choice(len(fake), n, replace=False)]).double()
    return float(MMDMetric()(r[:, None], f[:, None]))


def _take(images, idx: np.ndarray) -> np.ndarray:
    """images[idx] of an array, or the cases read from a streamed `VolumeSet`."""
    return images.stack(idx) if hasattr(images, "stack") else np.asarray(images)[idx]


def _volume_shape(images) -> tuple[int, ...]:
    """(I, J, K) of the volumes of an array (N, I, J, K) or of a `VolumeSet` (whose `shape` is
    already a volume's)."""
    return tuple(images.shape) if hasattr(images, "stack") else tuple(np.asarray(images).shape[1:])


def _pair_plan(n: int, pairs: int, seed: int, max_volumes: int) -> list[tuple[int, int]]:
    """`pairs` random pairs of different volumes among at most `max_volumes` of `n` drawn at
    random, so each volume is read (and filtered) once however large the set."""
    rng = np.random.default_rng(seed)
    pool = np.sort(rng.choice(n, min(n, max(2, int(max_volumes))), replace=False))
    a = rng.integers(0, len(pool), pairs)
    b = (a + rng.integers(1, len(pool), pairs)) % len(pool)
    return [(int(pool[i]), int(pool[j])) for i, j in zip(a, b)]


def _per_volume(images, make):
    """index → make(volume), each volume read and prepared once."""
    store: dict[int, object] = {}

    def get(i: int):
        if i not in store:
            store[i] = make(_take(images, [i])[0])
        return store[i]

    return get


@torch.inference_mode()
def pairwise_ssim(
    images, pairs: int = 50, seed: int = 0, device: torch.device | None = None, max_volumes: int = 12
) -> float:
    """Mean 3D SSIM (MONAI's SSIMMetric definition) between random pairs of different volumes of
    one set (lower = more diverse), the pairs drawn among at most `max_volumes` volumes (each read
    and filtered once); `images` an array (N, I, J, K) or a `VolumeSet`."""
    from ldmtool.evaluate.nnsearch import gaussian_taps, ssim_pair, ssim_stats
    from ldmtool.evaluate.privacy import ssim_window

    n = len(images)
    if n < 2:
        return float("nan")
    device = device or torch.device("cpu")
    taps = gaussian_taps(ssim_window(_volume_shape(images)))
    stats = _per_volume(images, lambda v: ssim_stats(v, taps, device))
    vals = [ssim_pair(stats(i), stats(j), taps) for i, j in _pair_plan(n, pairs, seed, max_volumes)]
    return float(np.mean(vals))


MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003, MONAI's default


def ms_ssim_setting(shape: tuple[int, ...]) -> tuple[int, int] | None:
    """(scales, window) for 3D MS-SSIM on volumes of `shape`: the most scales (5 down to 2), then
    the largest odd window ≤ 11, that fit the smallest axis (of those larger than one: 2D images
    (I, J, 1) get 2D MS-SSIM); None when even 2 scales do not fit."""
    from ldmtool.evaluate.nnsearch import in_plane

    small = min(in_plane(shape))
    for n in (5, 4, 3, 2):
        div = max(max(1, n - 1) ** 2, 2 ** (n - 1))
        for k in range(11, 2, -2):
            if small // div > k - 1:
                return n, k
    return None


def _ms_scales(x: torch.Tensor, taps: list[float], n: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per MS-SSIM scale of one volume (I, J, K): the (pooled) volume, its filtered mean and variance."""
    from ldmtool.evaluate.nnsearch import gaussian_filter_valid, pool_kernel

    x = x[None].float()
    kernel = pool_kernel(x.shape[1:], 2)
    out = []
    for s in range(n):
        mu = gaussian_filter_valid(x, taps)
        out.append((x, mu, gaussian_filter_valid(x * x, taps).sub_(mu * mu)))
        if s < n - 1:
            x = torch.nn.functional.avg_pool3d(x[None], kernel)[0]
    return out


def _ms_ssim_scales(xs, ys, taps: list[float], weights: tuple[float, ...]) -> float:
    """MS-SSIM from two volumes' `_ms_scales`: one filtered product per scale."""
    from ldmtool.evaluate.nnsearch import C1, C2, gaussian_filter_valid

    parts = []
    for s, ((x, mx, sxx), (y, my, syy)) in enumerate(zip(xs, ys)):
        sxy = gaussian_filter_valid(x * y, taps) - mx * my
        cs = (2 * sxy + C2) / (sxx + syy + C2)
        if s == len(weights) - 1:
            parts.append(torch.relu((((2 * mx * my + C1) / (mx * mx + my * my + C1)) * cs).mean()))
        else:
            parts.append(torch.relu(cs.mean()))
    w = torch.tensor(weights, dtype=torch.float32, device=parts[0].device)
    return float(torch.prod(torch.stack(parts) ** w))


@torch.inference_mode()
def ms_ssim_pair(x: torch.Tensor, y: torch.Tensor, win: int, weights: tuple[float, ...]) -> float:
    """3D MS-SSIM of two volumes (I, J, K) as MONAI's MultiScaleSSIMMetric defines it (Gaussian
    σ 1.5, k1 0.01, k2 0.03, data range 1; mean contrast-sensitivity per scale, mean SSIM at the
    last, average-pooled by 2 between scales), with the separable shift-and-add filter."""
    from ldmtool.evaluate.nnsearch import gaussian_taps

    taps = gaussian_taps(win)
    return _ms_ssim_scales(_ms_scales(x, taps, len(weights)), _ms_scales(y, taps, len(weights)), taps, weights)


@torch.inference_mode()
def pairwise_ms_ssim(
    images, pairs: int = 50, seed: int = 0, device: torch.device | None = None, max_volumes: int = 12
) -> dict:
    """Mean 3D MS-SSIM (MONAI's MultiScaleSSIMMetric definition, `ms_ssim_pair`) between random
    pairs of different volumes of one set, drawn among at most `max_volumes` volumes (each read
    and filtered once); small volumes use fewer scales and a smaller window (recorded with the value)."""
    from ldmtool.evaluate.nnsearch import gaussian_taps

    setting = ms_ssim_setting(_volume_shape(images))
    if len(images) < 2 or setting is None:
        shape = list(_volume_shape(images))
        what = f"images of {shape[0]}×{shape[1]}" if shape[2:] == [1] else f"volumes of shape {shape}"
        reason = "fewer than 2 volumes" if len(images) < 2 else f"{what} are too small for MS-SSIM"
        return {"value": None, "reason": reason}
    n, k = setting
    w = np.asarray(MS_SSIM_WEIGHTS[:n])
    weights = tuple((w / w.sum()).tolist())
    device = device or torch.device("cpu")
    taps = gaussian_taps(k)
    scales = _per_volume(images, lambda v: _ms_scales(torch.as_tensor(v).to(device), taps, n))
    plan = _pair_plan(len(images), pairs, seed, max_volumes)
    vals = [_ms_ssim_scales(scales(i), scales(j), taps, weights) for i, j in plan]
    return {"value": float(np.mean(vals)), "scales": n, "window": k, "pairs": pairs, "volumes": len({*sum(plan, ())})}
