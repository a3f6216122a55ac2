"""Scores of imputations and of synthetic stays: MAE/RMSE/CRPS on held-out values, simple baselines
(mean, LOCF, linear), stay features, a logistic-regression mortality model and its AUROC."""

from __future__ import annotations

import numpy as np
import torch

QUANTILES = np.arange(0.05, 0.96, 0.05)  # CSDI's CRPS: quantile losses at 0.05, 0.10, …, 0.95


def mae(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    return float(np.abs(pred - truth)[mask].mean())


def rmse(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    return float(np.sqrt(((pred - truth) ** 2)[mask].mean()))


def crps(draws: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """Normalised CRPS as CSDI reports it: Σ over quantiles of the quantile loss of the draws' quantile
    at the masked cells, divided by Σ|truth| and the number of quantiles. `draws` (N, K, T, V); a
    point estimate (K = 1) gives the normalised absolute error."""
    t = truth[mask]
    qs = np.quantile(draws.transpose(1, 0, 2, 3)[:, mask], QUANTILES, axis=0)  # (Q, cells)
    loss = [2 * np.abs((t - q) * ((t <= q) - p)).sum() for q, p in zip(qs, QUANTILES)]
    return float(np.sum(loss) / len(QUANTILES) / np.abs(t).sum())


def locf(values: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """Last observation carried forward over time (N, T, V); before the first one the next, `fill`
    (per variable) where a stay has none."""
    out = values.copy()
    n, t_len, v = out.shape
    for k in range(1, t_len):
        out[:, k] = np.where(np.isnan(out[:, k]), out[:, k - 1], out[:, k])
    for k in range(t_len - 2, -1, -1):  # leading gaps: next observation carried backward
        out[:, k] = np.where(np.isnan(out[:, k]), out[:, k + 1], out[:, k])
    return np.where(np.isnan(out), np.broadcast_to(fill, out.shape), out)


def linear(values: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """Linear interpolation over time (N, T, V); nearest value at the ends, `fill` where none."""
    from ldmtool.series.model import linear_fill

    m = ~np.isnan(values)
    x = torch.from_numpy(np.nan_to_num(values - fill)).double()
    out = linear_fill(x, torch.from_numpy(m)).numpy() + fill
    return np.where(m.any(1, keepdims=True), out, np.broadcast_to(fill, out.shape))


def stay_features(values: np.ndarray, static: np.ndarray) -> np.ndarray:
    """(N, 5V + S) features of stays: per variable mean, min, max, last observed value and fraction of
    steps observed (NaN where a variable has none), then the descriptors."""
    import warnings

    obs = ~np.isnan(values)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean, lo, hi = np.nanmean(values, 1), np.nanmin(values, 1), np.nanmax(values, 1)
    idx = np.where(obs, np.arange(values.shape[1])[None, :, None], -1).max(1)  # last observed step
    last = np.take_along_axis(values, np.maximum(idx, 0)[:, None], 1)[:, 0]
    last = np.where(idx >= 0, last, np.nan)
    return np.concatenate([mean, lo, hi, last, obs.mean(1), static], 1)


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-2, seed: int = 0):
    """A standardised L2 logistic regression (torch L-BFGS); NaN features become the mean.
    Returns a function features → probability."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mu, sd = np.nanmean(x, 0), np.nanstd(x, 0)
    mu, sd = np.nan_to_num(mu), np.where(np.nan_to_num(sd) > 1e-9, np.nan_to_num(sd), 1.0)
    prep = lambda a: torch.from_numpy(np.nan_to_num((a - mu) / sd)).double()
    xt, yt = prep(x), torch.from_numpy(y.astype(float))
    torch.manual_seed(seed)
    w = torch.zeros(xt.shape[1] + 1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        logits = xt @ w[:-1] + w[-1]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, yt) + l2 * w[:-1].pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    wd = w.detach()
    return lambda a: torch.sigmoid(prep(a) @ wd[:-1] + wd[-1]).numpy()


def auroc(scores: np.ndarray, y: np.ndarray) -> float:
    """Area under the ROC curve (Mann–Whitney, ties counted half); NaN with one class only."""
    y = np.asarray(y).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if not n_pos or not n_neg:
        return float("nan")
    values, inverse, counts = np.unique(np.asarray(scores), return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2)[inverse]  # average ranks, 1-based
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def cv_auroc(x: np.ndarray, y: np.ndarray, folds: int = 5, seed: int = 0) -> float:
    """AUROC of the logistic regression, pooled over stratified `folds`-fold cross-validation."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(y), int)
    for cls in (0, 1):
        idx = rng.permutation(np.flatnonzero(y == cls))
        fold[idx] = np.arange(len(idx)) % folds
    scores = np.empty(len(y))
    for f in range(folds):
        test = fold == f
        scores[test] = fit_logistic(x[~test], y[~test])(x[test])
    return auroc(scores, y)
